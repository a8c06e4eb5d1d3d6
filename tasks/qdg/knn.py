"""The scalable clustering input: a sparse k-nearest-neighbour affinity built blockwise on Dask.

Row blocks of G against all of G (only the blocks on and above the diagonal are multiplied), keeping each row's
`neighbors` largest cosines per block and merging them, so the n x n similarity is never held anywhere. The kept
cosines become affinities A = 1 - arccos(C)/pi (the dense path's), and the graph is symmetrised as a union: i and j
are linked when either is among the other's nearest, with their (symmetric) affinity. Every token is its own
nearest neighbour (affinity 1), as on the dense diagonal. `weighting = "binary"` sets every edge to 1 instead (the
0/1 graph of who is whose neighbour: sign-free rows have C >= 0, so their angular affinities all lie in [0.5, 1] and
carry little beyond the graph itself).

For a dense `qdg.similarity` already computed (small n, e.g. the known-quanta benchmark) `knn_from_similarity` takes
each row's nearest from it, row block by row block, without a second pass over the gradients; both paths give the
same graph (tests/qdg/test_clustering.py checks them against a brute-force one).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from schemas.qdg import SimilarityConfig
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.progress import run_logger
from tasks.qdg import gram
from tasks.qdg.clustering import affinity_from_cosine
from tasks.qdg.dask_cluster import block_bytes, compute_blocks, dask_client
from tasks.qdg.similarity import gradient_matrix


def nearest_neighbours(g, neighbors: int, client) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `neighbors` most similar rows of G (itself first): (cosines (n, k) float32, columns (n, k) int64),
    each row sorted by cosine, descending. g: a (n, dim) Dask array with row chunks."""
    k = min(neighbors, g.shape[0])
    cand = gram.knn_candidates(g, k)
    parts = compute_blocks(client, cand.to_delayed().ravel().tolist(), "knn-affinity", unit="row block")
    merged = np.concatenate(parts, axis=0)
    return merged["c"], merged["j"]


def knn_graph(cosines: np.ndarray, columns: np.ndarray, weighting: str = "angular") -> sp.csr_array:
    """The symmetric sparse affinity from each row's nearest neighbours: A[i, j] = 1 - arccos(c_ij)/pi (or 1, for
    weighting 'binary') where j is among i's neighbours or i among j's (union), float32 CSR with sorted indices;
    cosines/columns: (n, k)."""
    if weighting not in ("angular", "binary"):
        raise ValueError(f"clustering.knn_weighting must be 'angular' or 'binary' (got {weighting!r})")
    n, k = cosines.shape
    keep = columns >= 0
    rows = np.repeat(np.arange(n), k)[keep.ravel()]
    weights = (affinity_from_cosine(cosines[keep]) if weighting == "angular"
               else np.ones(int(keep.sum()))).astype(np.float32)
    a = sp.csr_array((weights, (rows, columns[keep])), shape=(n, n))
    a = a.maximum(a.T).tocsr()
    a.sort_indices()
    return a


def top_k_rows(c: np.ndarray, k: int, first_row: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k largest cosines of a block of rows c (m, n) of C, the row's own column first (cosine 1 by
    construction; ties between equal cosines broken by column index): (cosines (m, k), columns (m, k) int64)."""
    m, n = c.shape
    c = np.array(c, dtype=np.float32)
    own = first_row + np.arange(m)
    c[np.arange(m), own] = np.inf  # itself first, whatever rounding left on the diagonal
    part = np.argpartition(-c, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (m, 1))
    vals = np.take_along_axis(c, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    cols = np.take_along_axis(part, order, axis=1).astype(np.int64)
    vals = np.take_along_axis(vals, order, axis=1)
    vals[:, 0] = 1.0
    return vals, cols


def write_knn_affinity(st: Store, a: sp.csr_array, rows: np.ndarray, dim: int, neighbors: int, weighting: str,
                       inputs: list[ArtifactRef], params: dict) -> ArtifactRef:
    arrays = {"indptr": a.indptr.astype(np.int64), "indices": a.indices.astype(np.int64),
              "data": a.data.astype(np.float32), "row": np.asarray(rows, dtype=np.int64)}
    attrs = {"n": int(len(rows)), "dim": int(dim), "neighbors": neighbors, "symmetrised": "union",
             "weighting": weighting}
    return st.write_zarr("qdg.knn_affinity", arrays, attrs, inputs=inputs,
                         params={"knn_neighbors": neighbors, "knn_weighting": weighting, **params})


def knn_affinity_to_store(st: Store, blocks: Sequence[ArtifactRef], neighbors: int,
                          cfg: SimilarityConfig, weighting: str = "angular") -> ArtifactRef:
    """The kNN affinity stage without Prefect: read the blocks, find neighbours on Dask, publish
    `qdg.knn_affinity`."""
    g, rows, dim = gradient_matrix(st, blocks, cfg.chunk_rows, cfg.chunk_dim)
    n, r = int(rows.size), int(g.chunks[0][0])
    if neighbors > n:
        raise ValueError(f"clustering.knn_neighbors = {neighbors} must be <= the number of tokens ({n})")
    run_logger().info("knn affinity: n = %d tokens, dim = %d, %d neighbours, %d row blocks", n, dim, neighbors,
                      g.numblocks[0])
    with dask_client(cfg, st, block_bytes(r, int(g.chunks[1][0]))) as client:
        cosines, columns = nearest_neighbours(g, neighbors, client)
    a = knn_graph(cosines, columns, weighting)
    return write_knn_affinity(st, a, rows, dim, neighbors, weighting, list(blocks),
                              {"similarity": cfg.model_dump(mode="json")})


@quanta_task(name="qdg-knn-affinity")
def knn_affinity(gradient_blocks: list[ArtifactRef], *, neighbors: int, cfg: SimilarityConfig,
                 weighting: str = "angular", store: str) -> ArtifactRef:
    """Sparse kNN affinity of the gradient blocks (concatenated in list order) -> `qdg.knn_affinity` (CSR Zarr).
    Takes `neighbors` and `weighting` alone, not the clustering config, so changing the cluster counts keeps it
    `Cached`."""
    return knn_affinity_to_store(Store(store), gradient_blocks, neighbors, cfg, weighting)


def knn_from_similarity_to_store(st: Store, similarity: ArtifactRef, neighbors: int, weighting: str,
                                 block_rows: int = 1024) -> ArtifactRef:
    """The kNN affinity from a dense `qdg.similarity` (read by row blocks), without Prefect."""
    group = st.open_zarr(similarity)
    c, rows = group["c"], np.asarray(group["row"][...], dtype=np.int64)
    n = int(rows.size)
    if not 1 <= neighbors <= n:
        raise ValueError(f"clustering.knn_neighbors = {neighbors} must be between 1 and the number of rows ({n})")
    parts = [top_k_rows(np.asarray(c[i:i + block_rows]), neighbors, i) for i in range(0, n, block_rows)]
    a = knn_graph(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), weighting)
    return write_knn_affinity(st, a, rows, int(group.attrs.get("dim", 0)), neighbors, weighting, [similarity], {})


@quanta_task(name="qdg-knn-from-similarity")
def knn_from_similarity(similarity: ArtifactRef, *, neighbors: int, weighting: str, store: str) -> ArtifactRef:
    """`qdg.knn_affinity` (each row's `neighbors` nearest, itself included, symmetrised as a union; edges weighted
    by `weighting`) from an already computed dense `qdg.similarity`."""
    return knn_from_similarity_to_store(Store(store), similarity, neighbors, weighting)
