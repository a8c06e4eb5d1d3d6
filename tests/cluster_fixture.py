"""A real Dask cluster from the command-line tools: `dask scheduler` and `dask worker` processes on 127.0.0.1
(what a researcher starts by hand, or dask-jobqueue / the Dask Helm chart start on a cluster).

    from tests.cluster_fixture import dask_cli_cluster          # a context manager: yields tcp://127.0.0.1:PORT
    from tests.cluster_fixture import cli_cluster_address       # the same as a module-scoped pytest fixture

Workers import the project from this checkout (PYTHONPATH) and inherit this process's environment (the test
session's Prefect home and result storage: a shared filesystem, as a real cluster needs a shared store path or
an fsspec URL).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DASK = Path(sys.executable).with_name("dask")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dask scheduler exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"dask scheduler not listening on {port} after {timeout}s:\n{log.read_text()[-3000:]}")


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


@contextlib.contextmanager
def dask_cli_cluster(workdir: Path, n_workers: int = 2, nthreads: int = 1, timeout: float = 180) -> Iterator[str]:
    """Start `dask scheduler` and `n_workers` `dask worker` processes (each `nthreads` threads) on 127.0.0.1; yield
    the scheduler address once every worker has joined; stop them all (SIGTERM, then SIGKILL) on exit."""
    from distributed import Client

    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               OMP_NUM_THREADS=str(nthreads), MKL_NUM_THREADS=str(nthreads))
    procs: list[subprocess.Popen] = []
    try:
        log = workdir / "scheduler.log"
        with open(log, "wb") as out:
            procs.append(subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                           "--no-dashboard"], cwd=workdir, env=env, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        _wait_listening(port, procs[0], log, timeout)
        for i in range(n_workers):
            with open(workdir / f"worker-{i}.log", "wb") as out:
                procs.append(subprocess.Popen(
                    [str(DASK), "worker", address, "--name", f"quanta-test-{i}", "--nthreads", str(nthreads),
                     "--nworkers", "1", "--host", "127.0.0.1", "--no-dashboard", "--memory-limit", "0",
                     "--local-directory", str(workdir / f"worker-{i}"), "--death-timeout", "60"],
                    cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        with Client(address, timeout=timeout) as client:
            client.wait_for_workers(n_workers, timeout=timeout)
        yield address
    finally:
        _stop(procs[::-1])


@pytest.fixture(scope="module")
def cli_cluster_address(tmp_path_factory) -> Iterator[str]:
    """A module-scoped `dask_cli_cluster` with two single-threaded workers."""
    with dask_cli_cluster(tmp_path_factory.mktemp("dask-cli")) as address:
        yield address
