"""Similarity stage: C = G G^T on Dask from the gradient blocks' Zarr arrays into a validated n x n Zarr artifact."""
from __future__ import annotations

import logging
import os
import uuid

import numpy as np
import pytest

from planted_gradients import local_scheduler, peak_rss_bytes, planted_gradients, write_gradient_blocks
from schemas import ArtifactValidationError
from schemas.qdg import SIMILARITY, SimilarityConfig
from storage import Store
from tasks.qdg.dask_cluster import DaskMemoryError, block_bytes, check_worker_memory
from tasks.qdg.similarity import GradientInputError, gradient_matrix, similarity_matrix_to_store


@pytest.fixture(scope="module")
def scheduler():
    """One LocalCluster for the module's tests (each call would otherwise start its own)."""
    with local_scheduler() as cluster:
        yield cluster.scheduler_address


def _similarity(store, refs, address, **kw):
    cfg = SimilarityConfig(dask_address=address, **kw)
    ref = similarity_matrix_to_store(store, refs, cfg)
    arrays, attrs = store.read_zarr(ref)  # validated on read (range, symmetry, diagonal)
    return ref, arrays, attrs


def test_similarity_equals_numpy_gram_symmetric_with_unit_diagonal(store, scheduler, caplog):
    g, _ = planted_gradients([70, 60, 50, 47], dim=96, noise=1.0, seed=1)
    refs = write_gradient_blocks(store, g, block_rows=100, first_row=5)  # 3 blocks, the last one shorter
    with caplog.at_level(logging.INFO, logger="quanta"):
        ref, arrays, attrs = _similarity(store, refs, scheduler, chunk_rows=64)  # 4 x 4 blocks, uneven last
    c = arrays["c"]
    expected = g.astype(np.float64) @ g.T.astype(np.float64)
    assert c.dtype == np.float32 and c.shape == (227, 227)
    np.testing.assert_allclose(c, expected, atol=2e-6)
    assert np.array_equal(c, c.T)
    assert (np.diagonal(c) == 1.0).all() and np.abs(c).max() <= 1.0
    assert arrays["row"].tolist() == list(range(5, 232))
    assert attrs["n"] == 227 and attrs["dim"] == 96
    grp = store.open_zarr(ref)
    assert grp["c"].chunks == (64, 64)  # Zarr chunks aligned with the Dask blocks
    assert any("similarity: 16/16 blocks" in r.getMessage() for r in caplog.records)


def test_gram_of_dim_chunked_gradients_equals_rows_only(store, scheduler):
    g, _ = planted_gradients([40, 40, 41], dim=200, seed=2)
    refs = write_gradient_blocks(store, g, block_rows=50)
    ref_rows, a, _ = _similarity(store, refs, scheduler, chunk_rows=32)
    ref_dims, b, _ = _similarity(store, refs, scheduler, chunk_rows=32, chunk_dim=64)  # dim in 4 chunks, summed
    np.testing.assert_allclose(a["c"], b["c"], atol=2e-6)
    assert np.array_equal(b["c"], b["c"].T) and (np.diagonal(b["c"]) == 1).all()


@pytest.mark.parametrize("chunk_dim", [None, 8], ids=["rows-only", "dim-chunked"])
def test_similarity_is_reproducible_bit_for_bit(store, scheduler, chunk_dim):
    """Blocks move between two worker processes; how a chunk arrives (a view, a copy, at an unaligned address) changes
    from run to run and must not change a bit of C (before the kernels canonicalised their operands this failed
    5 runs in 6 here)."""
    g, _ = planted_gradients([30, 30], dim=32, seed=3)
    refs = write_gradient_blocks(store, g, block_rows=25)
    runs = [_similarity(store, refs, scheduler, chunk_rows=16, chunk_dim=chunk_dim)[0] for _ in range(4)]
    assert all(r == runs[0] for r in runs), [r.content_hash[:8] for r in runs]  # same content hash, same address


def _unaligned(a: np.ndarray, offset: int = 1) -> np.ndarray:
    """A C-ordered copy of `a` at an address `offset` bytes past a 64-byte boundary (not a multiple of its items)."""
    buf = np.empty(a.nbytes + 128, dtype=np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def test_block_products_do_not_depend_on_the_operands_layout():
    """What a worker receives: unaligned, F-ordered or strided views of the same values. Each product goes through
    one canonical BLAS call, so its bits are those of the aligned C-ordered operands."""
    from tasks.qdg import gram

    g, _ = planted_gradients([40, 40], dim=48, seed=7)
    a, b = np.ascontiguousarray(g[:16]), np.ascontiguousarray(g[32:48])
    want, want_diag = gram.block_product(a, b), gram.row_gram(a)
    wide = np.zeros((16, 96), dtype=np.float32)
    wide[:, ::2] = b
    layouts = {"unaligned": (_unaligned(a), _unaligned(b, 5)), "fortran": (np.asfortranarray(a), np.asfortranarray(b)),
               "strided": (a, wide[:, ::2])}
    for name, (x, y) in layouts.items():
        assert np.array_equal(gram.block_product(x, y), want), name
        assert np.array_equal(gram.row_gram(x), want_diag), name
    assert gram.canonical(_unaligned(a)).flags.aligned and gram.canonical(np.asfortranarray(a)).flags.c_contiguous


def test_dask_workers_run_blas_on_one_thread(scheduler):
    """BLAS sums in another order on another number of threads; the similarity's bits are fixed because Dask's
    worker processes run it on one thread, whatever this process's OMP/OpenBLAS settings."""
    from distributed import Client

    def blas_threads():
        from threadpoolctl import threadpool_info

        return sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})

    with Client(scheduler) as client:
        assert set(map(tuple, client.run(blas_threads).values())) == {(1,)}


def test_inside_a_dask_worker_it_uses_the_cluster_it_runs_on(store, scheduler):
    """A flow run on Dask (`--dask-address`) runs the task in a worker: the similarity goes to that cluster."""
    from distributed import Client

    g, _ = planted_gradients([20, 20], dim=16, seed=6)
    refs = write_gradient_blocks(store, g, block_rows=20)
    cfg = SimilarityConfig(chunk_rows=16)
    here = similarity_matrix_to_store(store, refs, cfg.model_copy(update={"dask_address": scheduler}))
    with Client(scheduler) as client:
        remote = client.submit(lambda: similarity_matrix_to_store(Store(store.url), refs, cfg)).result()
    assert remote == here


def test_similarity_runs_under_a_worker_memory_limit_smaller_than_g(tmp_path):
    """G = 1,024 x 131,072 float32 = 512 MiB; each worker is limited to 400 MB, below G (Dask pauses a worker at 80%
    of its limit and kills it at 95%), with chunks of 64 rows x 8,192 dims (2 MiB). The workers' peak resident memory
    stays below G and none restarted. (A worker that has imported the storage and task modules holds ~180-250 MB
    before any chunk, so a limit near 240 MB left no room: CI once saw a worker killed there.)"""
    store = Store(str(tmp_path / "store"))
    n, dim = 1024, 131072
    g, _ = planted_gradients([n // 2, n // 2], dim=dim, seed=4)
    refs = write_gradient_blocks(store, g, block_rows=256)
    limit = "400MB"
    with local_scheduler(n_workers=2, memory_limit=limit) as cluster:
        from distributed import Client

        with Client(cluster) as client:
            pids = client.run(os.getpid)
            cfg = SimilarityConfig(dask_address=cluster.scheduler_address, chunk_rows=64, chunk_dim=8192,
                                   memory_limit=limit)
            ref = similarity_matrix_to_store(store, refs, cfg)
            peaks = client.run(peak_rss_bytes)
            assert client.run(os.getpid) == pids, "a worker was restarted (killed at its memory limit)"
    assert g.nbytes == 512 << 20
    assert max(peaks.values()) < g.nbytes, {w: p >> 20 for w, p in peaks.items()}
    c = store.open_zarr(ref)["c"]
    rows = np.r_[0:3, 500:503, 1021:1024]
    np.testing.assert_allclose(c.get_orthogonal_selection((rows, rows)),
                               g[rows].astype(np.float64) @ g[rows].T.astype(np.float64), atol=2e-6)


def test_a_memory_limit_too_small_for_one_block_fails_before_work(store):
    g, _ = planted_gradients([20, 20], dim=16)
    refs = write_gradient_blocks(store, g, block_rows=40)
    with pytest.raises(DaskMemoryError, match=r"similarity.memory_limit .* too small for one block"):
        similarity_matrix_to_store(store, refs, SimilarityConfig(memory_limit="100MB"))
    assert not (store.root and os.path.exists(os.path.join(store.root, "qdg.similarity")))
    # the estimate: chunks of 1,024 rows x 65,536 dims (256 MiB) do not fit a 1 GB worker; 128 rows do, on one thread
    with pytest.raises(DaskMemoryError):
        check_worker_memory(block_bytes(1024, 65536), 1, 10**9)
    check_worker_memory(block_bytes(128, 65536), 1, 10**9)
    with pytest.raises(DaskMemoryError):
        check_worker_memory(block_bytes(128, 65536), 8, 10**9)


def test_a_store_in_process_memory_runs_on_threads_and_refuses_a_remote_scheduler(scheduler):
    store = Store(f"memory://qdg-sim-{uuid.uuid4().hex}")
    g, _ = planted_gradients([25, 25], dim=24, seed=5)
    refs = write_gradient_blocks(store, g, block_rows=20)
    ref = similarity_matrix_to_store(store, refs, SimilarityConfig(chunk_rows=16))
    c = store.read_zarr(ref)[0]["c"]
    np.testing.assert_allclose(c, g.astype(np.float64) @ g.T, atol=2e-6)
    with pytest.raises(ValueError, match="cannot reach it: use a store they share"):
        similarity_matrix_to_store(store, refs, SimilarityConfig(dask_address=scheduler))


def test_gradient_blocks_that_do_not_form_one_matrix_are_refused(store):
    g, _ = planted_gradients([10, 10], dim=8)
    a = write_gradient_blocks(store, g, block_rows=10)
    with pytest.raises(GradientInputError, match="must increase over the blocks"):
        gradient_matrix(store, [a[1], a[0]], 16)
    other = write_gradient_blocks(store, planted_gradients([10], dim=12)[0], block_rows=10, first_row=20)
    with pytest.raises(GradientInputError, match="has dim 12"):
        gradient_matrix(store, a + other, 16)
    with pytest.raises(GradientInputError, match="no gradient blocks"):
        gradient_matrix(store, [], 16)


@pytest.mark.parametrize("change, problem", [
    (lambda c: c.__setitem__((0, 1), c[0, 1] + 1e-3), "must be symmetric"),
    (lambda c: c.__setitem__((3, 3), 0.999), "diagonal must be exactly 1"),
    (lambda c: c.__setitem__((2, 5), 1.01), "must be <= 1.0"),
])
def test_the_similarity_schema_names_what_is_wrong(change, problem):
    g, _ = planted_gradients([6, 6], dim=8)
    c = np.clip(g @ g.T, -1, 1)
    c = np.triu(c) + np.triu(c, 1).T
    np.fill_diagonal(c, 1.0)
    arrays = {"c": c.astype(np.float32), "row": np.arange(12, dtype=np.int64)}
    SIMILARITY.schema.validate("qdg.similarity", arrays, {"n": 12, "dim": 8})
    change(arrays["c"])
    with pytest.raises(ArtifactValidationError, match=problem) as err:
        SIMILARITY.schema.validate("qdg.similarity", arrays, {"n": 12, "dim": 8})
    assert "c" in str(err.value)
