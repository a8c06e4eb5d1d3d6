"""Benchmark: the QDG similarity C = G G^T on Dask from Zarr to Zarr vs numpy's in-memory GEMM on the same G.

G: n x dim float32 unit rows, stored as `qdg.gradient_block`s of 256 rows (what the gradients stage writes).
- numpy: `g @ g.T` on G already in memory (BLAS syrk: numpy computes one triangle), best of `repeats`;
- Dask+Zarr: the stage's computation (`tasks.qdg.similarity.write_similarity`): G read from the blocks' Zarr arrays,
  the upper-triangle block products on a running LocalCluster (n_workers x 1 thread, each worker's BLAS on one
  thread), clipped, diagonal set, written into an n x n Zarr array; best of `repeats`.
ratio = numpy seconds / Dask+Zarr seconds = the achieved GFLOP/s ratio (both do the same nominal 2 n^2 dim FLOPs;
goal >= 0.7). Details also give the whole stage (opening and validating the blocks, the memory check, validating,
hashing and publishing C) and the LocalCluster start, which the headline leaves out.
Run: `python -m benchmarks.bench_qdg_similarity` (set QUANTA_BENCH_SIM_N / QUANTA_BENCH_SIM_DIM for other sizes).
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np

GOAL = ">= 0.7 (Dask+Zarr GFLOP/s / in-memory numpy GEMM GFLOP/s)"


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n, dim), dtype=np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return g


def write_blocks(store, g: np.ndarray, block_rows: int = 256) -> list:
    refs = []
    for start in range(0, g.shape[0], block_rows):
        block = g[start:start + block_rows]
        m = block.shape[0]
        refs.append(store.write_zarr(
            "qdg.gradient_block",
            {"g": block, "row": np.arange(start, start + m, dtype=np.int64), "norm": np.ones(m, np.float32),
             "loss": np.zeros(m, np.float32)},
            {"model": "bench", "dim": g.shape[1], "projection": "none"}))
    return refs


def run(n: int | None = None, dim: int | None = None, chunk_rows: int = 2048, n_workers: int | None = None,
        repeats: int = 3) -> dict:
    from distributed import Client, LocalCluster

    from schemas.qdg import SimilarityConfig
    from storage import Store
    from tasks.qdg.similarity import gradient_matrix, similarity_matrix_to_store, write_similarity

    n = n or int(os.environ.get("QUANTA_BENCH_SIM_N", 8192))
    dim = dim or int(os.environ.get("QUANTA_BENCH_SIM_DIM", 4096))
    n_workers = n_workers or os.cpu_count() or 1
    g = unit_rows(n, dim)
    flops = 2.0 * n * n * dim
    with tempfile.TemporaryDirectory(prefix="bench-qdg-sim-") as tmp:
        store = Store(tmp)
        refs = write_blocks(store, g)
        t0 = time.perf_counter()
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
            start_s = time.perf_counter() - t0
            cfg = SimilarityConfig(dask_address=cluster.scheduler_address, chunk_rows=chunk_rows)
            lazy_g, _, _ = gradient_matrix(store, refs, chunk_rows)
            import zarr

            out = zarr.create_array(zarr.storage.LocalStore(os.path.join(tmp, "c.zarr")), shape=(n, n),
                                    chunks=(chunk_rows, chunk_rows), dtype="float32", compressors=None)
            g @ g.T  # warm-up both sides
            write_similarity(lazy_g, out, client)
            numpy_s, dask_s = [], []
            for _ in range(repeats):  # interleaved, so drifts in machine load hit both sides
                t = time.perf_counter()
                g @ g.T
                numpy_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                write_similarity(lazy_g, out, client)
                dask_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            similarity_matrix_to_store(store, refs, cfg)
            stage_s = time.perf_counter() - t
        c = out[:256, :256]
    np.testing.assert_allclose(c, np.clip(g[:256] @ g[:256].T, -1, 1), atol=1e-5)
    tn, td = min(numpy_s), min(dask_s)
    return {
        "name": "QDG similarity: Dask+Zarr vs in-memory numpy GEMM",
        "device": f"cpu ({n_workers} Dask workers x 1 thread)",
        "n": n, "dim": dim, "chunk_rows": chunk_rows,
        "numpy_gflops": flops / tn / 1e9, "dask_zarr_gflops": flops / td / 1e9,
        "numpy_s": tn, "dask_zarr_s": td, "stage_s": stage_s, "stage_gflops": flops / stage_s / 1e9,
        "cluster_start_s": start_s,
        "ratio": tn / td, "goal": GOAL,
    }


if __name__ == "__main__":
    r = run()
    print(f"{r['name']}: ratio {r['ratio']:.2f} ({r['dask_zarr_gflops']:.0f} vs {r['numpy_gflops']:.0f} GFLOP/s; "
          f"whole stage {r['stage_s']:.1f} s, cluster start {r['cluster_start_s']:.1f} s)")
