"""Similarity stage: C = G G^T of the L2-normalised per-token gradients, on Dask, from Zarr to Zarr.

G (n x dim float32) is the gradient blocks' "g" arrays read with `dask.array.from_zarr` and concatenated in list
order, rechunked to `chunk_rows` rows (x `chunk_dim` dims, or whole rows). C is written block by block into an n x n
float32 Zarr array with `chunk_rows`-square chunks, aligned with the Dask blocks, inside the store's atomic writer;
values are clipped to [-1, 1] and the diagonal is exactly 1. A worker holds a few chunks at a time, so G may be larger
than any worker's memory (Dask spills what it keeps for later blocks to disk). Only the blocks on and above the
diagonal are multiplied (C is symmetric).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from schemas.errors import UserInputError
from schemas.qdg import SimilarityConfig
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.progress import run_logger
from tasks.qdg import gram
from tasks.qdg.dask_cluster import block_bytes, compute_blocks, dask_client


class GradientInputError(UserInputError):
    """The gradient blocks do not form one matrix G (no blocks, different dims, rows out of order)."""


def gradient_matrix(st: Store, blocks: Sequence[ArtifactRef], chunk_rows: int, chunk_dim: int | None = None):
    """G as a lazy Dask array over the blocks' Zarr arrays, each block validated on open.

    Returns (g, rows, dim): g (n, dim) float32 chunked (chunk_rows, chunk_dim or dim); rows (n,) int64, the selection
    row of each row of G (strictly increasing over the blocks in list order)."""
    import dask.array as da

    if not blocks:
        raise GradientInputError("no gradient blocks given")
    parts, rows, dims = [], [], []
    for ref in blocks:
        if ref.kind != "qdg.gradient_block":
            raise GradientInputError(f"{ref.short} is a {ref.kind}, not a qdg.gradient_block")
        group = st.open_zarr(ref)
        g = group["g"]
        parts.append(da.from_zarr(g))
        rows.append(np.asarray(group["row"][...], dtype=np.int64))
        dims.append(int(g.shape[1]))
    if len(set(dims)) != 1:
        i = next(i for i, d in enumerate(dims) if d != dims[0])
        raise GradientInputError(f"gradient block {blocks[i].short} has dim {dims[i]}, block {blocks[0].short} has "
                                 f"{dims[0]}: every block must come from the same gradients")
    row = np.concatenate(rows)
    if row.size > 1 and (np.diff(row) <= 0).any():
        i = int(np.flatnonzero(np.diff(row) <= 0)[0])
        raise GradientInputError(f"selection rows must increase over the blocks in list order (row {row[i]} is "
                                 f"followed by {row[i + 1]}): pass the blocks in selection order, each once")
    dim = dims[0]
    g = da.concatenate(parts, axis=0).rechunk((min(chunk_rows, row.size), min(chunk_dim or dim, dim)))
    return g, row, dim


def write_similarity(g, out, client, name: str = "similarity") -> None:
    """Compute C = G G^T (clipped, diagonal 1) and write it into the (n, n) Zarr array `out` whose chunks are G's
    row chunks squared; progress is logged per finished block."""
    c = gram.gram_blocks(g).map_blocks(gram.finish_similarity_block, dtype=np.float32)
    nb = c.numblocks
    written = c.map_blocks(gram.write_block, out, chunks=((1,) * nb[0], (1,) * nb[1]), dtype=np.int8)
    # only the blocks on and above the diagonal are multiplied; each write still counts as one block
    compute_blocks(client, written.to_delayed().ravel().tolist(), name)


def similarity_matrix_to_store(st: Store, blocks: Sequence[ArtifactRef], cfg: SimilarityConfig) -> ArtifactRef:
    """The similarity stage without Prefect: read the blocks, compute C on Dask, publish `qdg.similarity`."""
    g, rows, dim = gradient_matrix(st, blocks, cfg.chunk_rows, cfg.chunk_dim)
    n, r = int(rows.size), int(g.chunks[0][0])
    log = run_logger()
    log.info("similarity: n = %d tokens, dim = %d, %d x %d blocks of %d rows", n, dim, g.numblocks[0],
             g.numblocks[0], r)
    attrs = {"n": n, "dim": dim, "chunk_rows": r}
    params = {"similarity": cfg.model_dump(mode="json")}
    with dask_client(cfg, st, block_bytes(r, int(g.chunks[1][0]))) as client:
        with st.zarr_writer("qdg.similarity", attrs=attrs, inputs=list(blocks), params=params) as writer:
            out = writer.group.create_array("c", shape=(n, n), chunks=(r, r), dtype="float32",
                                            compressors=None)  # cosines of noisy gradients barely compress
            writer.group.create_array("row", shape=(n,), dtype="int64", chunks=(max(1, n),))[...] = rows
            write_similarity(g, out, client)
    return writer.ref


@quanta_task(name="qdg-similarity")
def similarity_matrix(gradient_blocks: list[ArtifactRef], *, cfg: SimilarityConfig, store: str) -> ArtifactRef:
    """C = G G^T of the gradient blocks (concatenated in list order) -> `qdg.similarity` (n x n float32 Zarr)."""
    return similarity_matrix_to_store(Store(store), gradient_blocks, cfg)
