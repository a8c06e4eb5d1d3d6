"""Graph community detection without k: Leiden (Traag, Waltman & van Eck 2019, `leidenalg` on an `igraph` graph) on the
sparse kNN affinity, for when the number of quanta is unknown (language models), beside spectral clustering at a
fixed k.

The partition maximises the RB-configuration (generalised modularity) quality of the weighted, undirected kNN graph
(self-loops dropped: every token is its own neighbour, which says nothing about communities) at `leiden_resolution`
(1 = plain modularity), iterated until no move improves it, seeded. Labels are canonical (0 = the largest
community), as spectral clustering's; the `qdg.labels` table's `k` is the number of communities found (at least
2: a one-community partition is stored as k = 2 with one label used).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from schemas.qdg_transform import GraphOptions
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.progress import run_logger
from tasks.qdg.clustering import canonical_labels, labels_table, read_affinity


def leiden_labels(affinity, seed: int, resolution: float = 1.0) -> np.ndarray:
    """Leiden communities of a symmetric sparse affinity (n, n): (n,) int64 canonical labels."""
    import igraph
    import leidenalg

    if not sp.issparse(affinity):
        raise ValueError("Leiden partitions the sparse kNN affinity (affinities = ['knn']), not a dense matrix")
    upper = sp.triu(sp.csr_array(affinity), k=1).tocoo()
    g = igraph.Graph(n=affinity.shape[0], edges=np.column_stack([upper.row, upper.col]).tolist(), directed=False)
    g.es["weight"] = upper.data.astype(np.float64).tolist()
    part = leidenalg.find_partition(g, leidenalg.RBConfigurationVertexPartition, weights="weight",
                                    resolution_parameter=float(resolution), n_iterations=-1, seed=int(seed))
    return canonical_labels(np.asarray(part.membership, dtype=np.int64))


def community_labels_to_store(st: Store, affinity: ArtifactRef, seed: int, graph: GraphOptions) -> ArtifactRef:
    a, rows = read_affinity(st, affinity)
    labels = leiden_labels(a, seed, graph.leiden_resolution)
    found = int(labels.max()) + 1
    run_logger().info("leiden (resolution %g, seed %d): %d communities, largest %d of %d tokens",
                      graph.leiden_resolution, seed, found, int(np.bincount(labels).max()), len(labels))
    return st.write_table("qdg.labels", labels_table(rows, labels, max(2, found), seed), inputs=[affinity],
                          params={"method": "leiden", "seed": seed, "found": found,
                                  "leiden_resolution": graph.leiden_resolution})


@quanta_task(name="qdg-leiden", task_run_name="qdg-leiden-s{seed}")
def community_labels(affinity: ArtifactRef, *, seed: int, graph: GraphOptions, store: str) -> ArtifactRef:
    """Leiden communities of a `qdg.knn_affinity` -> `qdg.labels` (k = the number found)."""
    return community_labels_to_store(Store(store), affinity, seed, graph)
