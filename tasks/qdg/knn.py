"""The scalable clustering input: a sparse k-nearest-neighbour affinity built blockwise on Dask.

Row blocks of G against all of G (only the blocks on and above the diagonal are multiplied), keeping each row's
`neighbors` largest cosines per block and merging them, so the n x n similarity is never held anywhere. The kept
cosines become affinities A = 1 - arccos(C)/pi (the dense path's), and the graph is symmetrised as a union: i and j
are linked when either is among the other's nearest, with their (symmetric) affinity. Every token is its own
nearest neighbour (affinity 1), as on the dense diagonal.
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


def knn_graph(cosines: np.ndarray, columns: np.ndarray) -> sp.csr_array:
    """The symmetric sparse affinity from each row's nearest neighbours: A[i, j] = 1 - arccos(c_ij)/pi where j is
    among i's neighbours or i among j's (union), float32 CSR with sorted indices; cosines/columns: (n, k)."""
    n, k = cosines.shape
    keep = columns >= 0
    rows = np.repeat(np.arange(n), k)[keep.ravel()]
    a = sp.csr_array((affinity_from_cosine(cosines[keep]).astype(np.float32), (rows, columns[keep])), shape=(n, n))
    a = a.maximum(a.T).tocsr()
    a.sort_indices()
    return a


def knn_affinity_to_store(st: Store, blocks: Sequence[ArtifactRef], neighbors: int,
                          cfg: SimilarityConfig) -> ArtifactRef:
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
    a = knn_graph(cosines, columns)
    arrays = {"indptr": a.indptr.astype(np.int64), "indices": a.indices.astype(np.int64),
              "data": a.data.astype(np.float32), "row": rows}
    attrs = {"n": n, "dim": dim, "neighbors": neighbors, "symmetrised": "union"}
    return st.write_zarr("qdg.knn_affinity", arrays, attrs, inputs=list(blocks),
                            params={"knn_neighbors": neighbors, "similarity": cfg.model_dump(mode="json")})


@quanta_task(name="qdg-knn-affinity")
def knn_affinity(gradient_blocks: list[ArtifactRef], *, neighbors: int, cfg: SimilarityConfig,
                 store: str) -> ArtifactRef:
    """Sparse kNN affinity of the gradient blocks (concatenated in list order) -> `qdg.knn_affinity` (CSR Zarr).
    Takes `neighbors` alone, not the clustering config, so changing the cluster counts keeps it `Cached`."""
    return knn_affinity_to_store(Store(store), gradient_blocks, neighbors, cfg)
