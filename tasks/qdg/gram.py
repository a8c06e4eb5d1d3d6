"""Blockwise Gram matrices of the gradients G (n x dim) on Dask, and the kernels Dask workers run on their blocks.

Workers import this module to run the kernels, so it imports numpy and dask only (a worker's memory is its
baseline plus its blocks; the store, pandas and Prefect stay in the client process).

Same inputs, same bits: every product runs on `canonical` operands, so C depends on G, the chunking (chunk_rows,
chunk_dim: config, hence in the cache key) and the BLAS build and its thread count alone, not on which worker ran a
block or how its chunks arrived. Dask's worker processes run BLAS on one thread (distributed's pre-spawn
environment sets OPENBLAS_NUM_THREADS=1 whatever the parent's), so a run's BLAS thread count is fixed too.

C = G G^T is symmetric: only the blocks on and above the diagonal are multiplied; a block below is the transpose of
its mirror (exact symmetry, about half the FLOPs: what numpy's `G @ G.T` gets from BLAS syrk).
"""
from __future__ import annotations

import numpy as np
import dask.array as da

# a kNN candidate: cosine and global column index
CANDIDATE = np.dtype([("c", "<f4"), ("j", "<i8")])


def canonical(block: np.ndarray) -> np.ndarray:
    """The block as a C-ordered, aligned array (a copy only when it is not one already).

    The layout a chunk reaches a kernel in depends on the run: a view or a copy, transposed or not, and a chunk sent
    between workers can arrive at an address that is not a multiple of its item size (seen here: float32 rows at
    addresses 19 and 51 mod 64, varying from run to run with the message's framing). numpy hands only aligned,
    BLAS-compatible operands to BLAS and multiplies the others with its own loop, which sums in another order (an
    F-ordered operand changed 195 of 256 float32 entries of a 16 x 16 block; a misaligned one, ~1 in 3). So every
    product goes through this first."""
    return np.require(block, requirements=("C_CONTIGUOUS", "ALIGNED"))


def row_gram(block: np.ndarray) -> np.ndarray:
    """block @ block.T of one row chunk, canonical (numpy dispatches `a @ a.T` of one aligned C-ordered array to
    BLAS syrk: half the FLOPs)."""
    a = canonical(block)
    return a @ a.T


def block_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b.T of two row chunks, always through the same BLAS call (both `canonical`, b transposed by the call)."""
    return canonical(a) @ canonical(b).T


def partial_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`block_product` of one dim chunk of two row chunks, as (rows_a, rows_b, 1) for the sum over dim chunks."""
    return block_product(a, b)[:, :, None]


def pair_product(gi: da.Array, gj: da.Array) -> da.Array:
    """gi @ gj.T of two row blocks of G (each one row chunk) as one lazy block, the same bits whatever the run.

    dim in one chunk: one `block_product`. dim in chunks: one product per dim chunk, summed in float64 in chunk
    order by one task (a fixed order; rounded to float32 once, by `finish_similarity_block`)."""
    ri, rj = gi.shape[0], gj.shape[0]
    if gi.numblocks[1] == 1:
        return da.map_blocks(block_product, gi, gj, chunks=((ri,), (rj,)), dtype=gi.dtype)
    parts = da.blockwise(partial_product, "ijk", gi, "ik", gj, "jk", adjust_chunks={"k": 1}, dtype=gi.dtype)
    return parts.sum(axis=2, dtype=np.float64, split_every={2: parts.numblocks[2]})


def gram_blocks(g: da.Array) -> da.Array:
    """C = G G^T as a lazy (n, n) Dask array with square chunks aligned to G's row chunks.

    g: (n, dim) float32 with row chunks (r, ...) and any chunking of dim. Block (i, j) for i < j is one product of two
    row blocks (summed over dim chunks); (j, i) is its transpose; (i, i) a syrk when dim is one chunk. Every product
    goes through `block_product` (see the module docstring for what the bits depend on)."""
    bounds = np.cumsum((0,) + tuple(g.chunks[0]))
    rows = [g[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    nb = len(rows)
    upper: dict[tuple[int, int], da.Array] = {}
    for i, gi in enumerate(rows):
        if gi.numblocks[1] == 1:
            size = gi.shape[0]
            upper[i, i] = gi.map_blocks(row_gram, chunks=((size,), (size,)), dtype=g.dtype)
        else:
            upper[i, i] = pair_product(gi, gi)
        for j in range(i + 1, nb):
            upper[i, j] = pair_product(gi, rows[j])
    return da.block([[upper[i, j] if i <= j else upper[j, i].T for j in range(nb)] for i in range(nb)])


def _diagonal_span(block_info: dict) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of this block in the whole array."""
    (r0, r1), (c0, c1) = block_info[0]["array-location"]
    return r0, r1, c0, c1


def finish_similarity_block(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
    """Clip a block of C to [-1, 1]; on blocks that hold diagonal entries make the block exactly symmetric (upper
    triangle mirrored) and the diagonal exactly 1 (a unit row's self-similarity, whatever the float32 rounding)."""
    out = np.clip(block, -1.0, 1.0).astype(np.float32, copy=False)
    r0, r1, c0, c1 = _diagonal_span(block_info)
    if r0 == c0 and r1 == c1:
        out = np.triu(out) + np.triu(out, 1).T
        np.fill_diagonal(out, 1.0)
    return out


def write_block(block: np.ndarray, out, block_info: dict | None = None) -> np.ndarray:
    """Write one block of C into the Zarr array `out` at its place (blocks are aligned with `out`'s chunks, so no
    two tasks write one chunk); returns a (1, 1) marker so the client can count finished blocks."""
    r0, r1, c0, c1 = _diagonal_span(block_info)
    out[r0:r1, c0:c1] = block
    return np.ones((1, 1), dtype=np.int8)


def top_k_block(block: np.ndarray, k: int, block_info: dict | None = None) -> np.ndarray:
    """The `k` largest cosines of each row of one block of C, with their global column indices: (rows, k) of
    CANDIDATE (padded with c = -inf, j = -1 where the block has fewer than k columns). Values are clipped to
    [-1, 1] and a token's similarity to itself is exactly 1, as in the dense similarity."""
    r0, r1, c0, c1 = _diagonal_span(block_info)
    c = np.clip(block, -1.0, 1.0).astype(np.float32, copy=False)
    lo, hi = max(r0, c0), min(r1, c1)
    if lo < hi:
        c = c.copy()
        idx = np.arange(lo, hi)
        c[idx - r0, idx - c0] = 1.0
    out = np.empty((c.shape[0], k), dtype=CANDIDATE)
    out["c"], out["j"] = -np.inf, -1
    kk = min(k, c.shape[1])
    if kk:
        top = np.argpartition(-c, kk - 1, axis=1)[:, :kk]
        out["c"][:, :kk] = np.take_along_axis(c, top, axis=1)
        out["j"][:, :kk] = top + c0
    return out


def merge_top_k(cand: np.ndarray, k: int) -> np.ndarray:
    """The `k` best of each row's candidates (rows, m) -> (rows, k), sorted by cosine, descending (ties by index)."""
    order = np.lexsort((cand["j"], -cand["c"]), axis=1)[:, :k]
    return np.take_along_axis(cand, order, axis=1)


def knn_candidates(g: da.Array, k: int) -> da.Array:
    """Each row's k most similar rows of G (itself included), as a lazy (n, k) CANDIDATE Dask array chunked by G's
    row chunks: row blocks of G against all of G, block by block, keeping only the top k per row of each block and
    merging them, so the n x n matrix is never held (a block of C lives until its two top-k selections ran)."""
    c = gram_blocks(g)
    per_block = c.map_blocks(top_k_block, k, chunks=(c.chunks[0], (k,) * c.numblocks[1]), dtype=CANDIDATE)
    return per_block.rechunk({1: -1}).map_blocks(merge_top_k, k, chunks=(c.chunks[0], (k,)), dtype=CANDIDATE)
