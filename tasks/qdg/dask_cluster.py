"""The Dask client of the QDG stages (similarity, kNN affinity): which cluster, whether it can reach the store, and
whether one block fits a worker's memory.

- `SimilarityConfig.dask_address` (or $QUANTA_DASK_ADDRESS): an existing scheduler (the way past one machine);
- inside a Dask worker (a flow run with `--dask-address`): the cluster the task already runs on;
- otherwise a `LocalCluster` for the task: worker processes on 127.0.0.1, dashboard on 127.0.0.1 (a free port,
  logged), `n_workers` x `threads_per_worker`, `memory_limit` per worker.

A store that lives in this process's memory (an fsspec `memory://` URL) cannot be reached by worker processes: it
gets a LocalCluster of threads in this process, and an existing scheduler is refused with a message saying a shared
store is needed. Other fsspec URLs (s3://, gcs://, ...) are opened by the workers themselves.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

from schemas.errors import UserInputError
from schemas.qdg import SimilarityConfig
from storage import Store
from tasks.progress import Progress, run_logger

# a worker process's own resident memory before it holds any block (Python, numpy, zarr, dask, distributed), on
# top of which its blocks must fit under Dask's pause threshold (80% of memory_limit)
WORKER_BASELINE_BYTES = 128 << 20
PAUSE_FRACTION = 0.8
ENV_ADDRESS = "QUANTA_DASK_ADDRESS"
# a LocalCluster's worker processes (x threads) per CPU core: beyond this, processes only compete for the cores and
# each costs a Python process's memory
WORKERS_PER_CPU = 2


class DaskMemoryError(UserInputError):
    """A worker's memory limit is too small for one block of the computation."""


class DaskMachineError(UserInputError):
    """A LocalCluster larger than this machine (its cores, its memory)."""


def scheduler_address(cfg: SimilarityConfig) -> str | None:
    """The configured scheduler: `cfg.dask_address`, else $QUANTA_DASK_ADDRESS; None or 'local' = a LocalCluster."""
    address = cfg.dask_address or os.environ.get(ENV_ADDRESS) or None
    return None if address == "local" else address


def workers_can_reach(st: Store) -> bool:
    """False for a store held in this process's memory (fsspec memory://), which other processes cannot open."""
    protocols = st.fs.protocol if isinstance(st.fs.protocol, (tuple, list)) else (st.fs.protocol,)
    return "memory" not in protocols


def _current_worker():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


@contextlib.contextmanager
def dask_client(cfg: SimilarityConfig, st: Store, task_bytes: int = 0) -> Iterator:
    """Yield a `distributed.Client` for one computation over `store` (see the module docstring for which).

    `task_bytes`: the peak memory of one block task (`block_bytes`); a worker memory limit too small for it fails
    here, before a LocalCluster starts (or, on an existing cluster, against its workers' actual limits)."""
    from distributed import Client, LocalCluster, worker_client

    address = scheduler_address(cfg)
    log = run_logger()
    local = address is None and workers_can_reach(st) and _current_worker() is None
    if address is None and _current_worker() is None:
        check_local_cluster(cfg)
    if local:
        check_worker_memory(task_bytes, cfg.threads_per_worker, int(cfg.memory_limit))
    if not workers_can_reach(st):
        if address is not None:
            raise ValueError(f"the store {st.url} lives in this process's memory; the Dask workers at {address} "
                             "cannot reach it: use a store they share (a shared path or an s3:// / gcs:// URL), or no "
                             "dask_address")
        log.info("store %s is in this process's memory: Dask runs on threads in this process", st.url)
        threads = cfg.n_workers * cfg.threads_per_worker
        with LocalCluster(n_workers=1, threads_per_worker=threads, processes=False, dashboard_address="127.0.0.1:0",
                          silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            yield client
        return
    if address is not None:
        with Client(address) as client:
            log.info("Dask: scheduler %s (%d workers)", address, len(client.scheduler_info()["workers"]))
            check_client_memory(client, task_bytes)
            yield client
        return
    if not local:
        with worker_client() as client:
            log.info("Dask: the cluster this task runs on (%s)", client.scheduler.address)
            yield client
        return
    with quiet_distributed(), LocalCluster(n_workers=cfg.n_workers, threads_per_worker=cfg.threads_per_worker,
                                           processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                           memory_limit=int(cfg.memory_limit), silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        log.info("Dask: LocalCluster of %d x %d threads, %s per worker, dashboard %s", cfg.n_workers,
                 cfg.threads_per_worker, cfg.memory_limit.human_readable(decimal=True), client.dashboard_link)
        yield client


@contextlib.contextmanager
def quiet_distributed(level: int = logging.WARNING):
    """The in-process scheduler and nannies log every connection at INFO (dask's own logging config), which buries a
    run's log: only warnings and errors while a LocalCluster of ours runs."""
    logger = logging.getLogger("distributed")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def check_local_cluster(cfg: SimilarityConfig, section: str = "similarity") -> None:
    """Fail before any work when the LocalCluster `cfg` asks for does not fit this machine: more worker threads than
    WORKERS_PER_CPU per core, or workers whose memory limits add up to more than its memory. Nothing to check when
    the computation goes to an existing scheduler (`dask_address`)."""
    import psutil

    if scheduler_address(cfg) is not None:
        return
    cpus = os.cpu_count() or 1
    threads = cfg.n_workers * cfg.threads_per_worker
    if threads > WORKERS_PER_CPU * cpus:
        raise DaskMachineError(
            f"{section}.n_workers x {section}.threads_per_worker = {cfg.n_workers} x {cfg.threads_per_worker} is more "
            f"than this machine's {cpus} CPU cores can run (at most {WORKERS_PER_CPU * cpus} worker threads): lower "
            f"{section}.n_workers, or give a {section}.dask_address")
    total = psutil.virtual_memory().total
    need, limit = cfg.n_workers * int(cfg.memory_limit), cfg.memory_limit.human_readable(decimal=True)
    if need > total:
        raise DaskMachineError(
            f"{section}.n_workers x {section}.memory_limit = {cfg.n_workers} x {limit} ({need / 1e9:.1f} GB) is more "
            f"than this machine's memory ({total / 1e9:.1f} GB): at most {total // int(cfg.memory_limit)} worker(s) "
            f"of {limit} fit; lower {section}.n_workers or {section}.memory_limit")


def block_bytes(chunk_rows: int, chunk_cols: int, itemsize: int = 4) -> int:
    """Peak memory of one block task, in bytes (an estimate): the two row chunks of G it multiplies (chunk_rows x
    chunk_cols) and one more being assembled from Zarr chunks (x3), plus the chunk_rows^2 product, its clipped copy
    and a top-k selection's indices (x5 at 8 bytes)."""
    return 3 * chunk_rows * chunk_cols * itemsize + 5 * chunk_rows * chunk_rows * max(itemsize, 8)


def check_worker_memory(need_per_task: int, threads: int, memory_limit: int | None) -> None:
    """Fail before any work when `threads` concurrent block tasks plus a worker's baseline would pass Dask's pause
    threshold (80% of `memory_limit`; None or 0 = no limit)."""
    if not memory_limit or not need_per_task:
        return
    need = WORKER_BASELINE_BYTES + threads * need_per_task
    if need > PAUSE_FRACTION * memory_limit:
        raise DaskMemoryError(
            f"similarity.memory_limit ({memory_limit / 2**20:.0f} MiB per worker) is too small for one block: "
            f"{threads} task(s) of ~{need_per_task / 2**20:.0f} MiB each plus ~{WORKER_BASELINE_BYTES >> 20} MiB of "
            f"worker baseline need {need / 2**20:.0f} MiB, over Dask's pause threshold "
            f"({PAUSE_FRACTION:.0%} of the limit); lower similarity.chunk_rows (or set chunk_dim), or raise "
            "similarity.memory_limit")


def check_client_memory(client, need_per_task: int) -> None:
    """`check_worker_memory` against the workers an existing cluster has (their own limits and threads)."""
    for w in client.scheduler_info(n_workers=-1)["workers"].values():
        check_worker_memory(need_per_task, int(w.get("nthreads", 1)), w.get("memory_limit") or None)


def compute_blocks(client, blocks: Sequence, name: str, unit: str = "block") -> list:
    """Compute Dask collections (one per block) as one graph, logging progress as blocks finish; their results in
    order."""
    from distributed import as_completed

    futures = client.compute(list(blocks))
    progress = Progress(name, total=len(futures), unit=unit)
    for _ in as_completed(futures):
        progress.update(1)
    progress.close()
    return client.gather(futures)


__all__ = ["dask_client", "scheduler_address", "workers_can_reach", "block_bytes", "check_worker_memory",
           "check_client_memory", "check_local_cluster", "compute_blocks", "DaskMemoryError", "DaskMachineError"]
