"""Gradient blocks with planted cluster structure, written to a store as `qdg.gradient_block` artifacts (what the
gradients stage produces), for the similarity, clustering and Zipf tests and benchmarks."""
from __future__ import annotations

import numpy as np

from storage import ArtifactRef, Store


def planted_gradients(sizes, dim: int, noise: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows around one random direction per cluster: (g (n, dim) float32, truth (n,) int64), rows shuffled.
    `sizes`: rows per cluster. Same-cluster cosines are ~1/(1 + noise^2), others ~0."""
    rng = np.random.default_rng(seed)
    sizes = np.asarray(sizes, dtype=np.int64)
    centers = rng.standard_normal((len(sizes), dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    truth = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    g = centers[truth] + noise * rng.standard_normal((truth.size, dim)) / np.sqrt(dim)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return g.astype(np.float32), truth


def write_gradient_blocks(store: Store, g: np.ndarray, block_rows: int, first_row: int = 0,
                          chunk_rows: int | None = None) -> list[ArtifactRef]:
    """Write G as consecutive `qdg.gradient_block`s of `block_rows` rows (selection rows first_row, first_row + 1,
    ...)."""
    refs = []
    for start in range(0, g.shape[0], block_rows):
        block = np.ascontiguousarray(g[start:start + block_rows])
        n = block.shape[0]
        arrays = {"g": block, "row": np.arange(first_row + start, first_row + start + n, dtype=np.int64),
                  "norm": np.ones(n, dtype=np.float32), "loss": np.full(n, 0.01, dtype=np.float32)}
        chunks = {"g": (chunk_rows, block.shape[1])} if chunk_rows else None
        refs.append(store.write_zarr("qdg.gradient_block", arrays, {"model": "planted", "dim": int(block.shape[1]),
                                                                     "projection": "none"}, chunks=chunks))
    return refs


def local_scheduler(n_workers: int = 2, memory_limit: str | None = None):
    """A LocalCluster of worker processes on 127.0.0.1 (a context manager), for tests that share one cluster through
    `SimilarityConfig.dask_address` instead of starting one per call."""
    from distributed import LocalCluster

    kw = {} if memory_limit is None else {"memory_limit": memory_limit}
    return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                        dashboard_address="127.0.0.1:0", **kw)


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM), in bytes (run on Dask workers with `Client.run`)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
