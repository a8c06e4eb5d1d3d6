"""Clustering stage: spectral clustering of the tokens for one (k, seed), and the stability across seeds.

The input is an affinity source: the dense `qdg.similarity` (C, turned into A = 1 - arccos(C)/pi here) or the sparse
`qdg.knn_affinity` (already A). scikit-learn's `SpectralClustering(affinity="precomputed")` does the rest, seeded;
eigen_solver 'auto' is a randomized embedding (scikit-learn's `randomized_svd`, see
`randomized_spectral_embedding`) on a dense affinity and AMG (pyamg) on a sparse one; 'arpack' is the paper's. Labels are renumbered by cluster
size (label 0 = the largest cluster; ties: the cluster holding the earlier row first), which changes nothing an
adjusted Rand index sees and makes tables readable.

Each (k, seed) is its own cached task that depends only on the affinity, k, seed and `SpectralOptions`, so adding a
cluster count or a seed computes only the new clusterings.
"""
from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from schemas.qdg import SpectralOptions
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.progress import run_logger

AFFINITY_KINDS = ("qdg.similarity", "qdg.knn_affinity")


def affinity_from_cosine(c, out: np.ndarray | None = None, block_rows: int = 1024) -> np.ndarray:
    """A = 1 - arccos(clip(c, -1, 1)) / pi, elementwise, in [0, 1] (1 = same direction, 1/2 = orthogonal).

    c: any shape (cosines); returns float64 of the same shape (into `out` when given). 2-D inputs go through row
    blocks of `block_rows`, computed in float32, so the temporaries stay small next to an n x n matrix."""
    c = c if hasattr(c, "shape") and hasattr(c, "ndim") else np.asarray(c)  # a Zarr array is read by row blocks
    out = np.empty(c.shape, dtype=np.float64) if out is None else out
    if c.ndim < 2:
        out[...] = 1.0 - np.arccos(np.clip(np.asarray(c[...], dtype=np.float64), -1.0, 1.0)) / np.pi
        return out
    for i in range(0, c.shape[0], block_rows):
        block = np.clip(np.asarray(c[i:i + block_rows], dtype=np.float32), -1.0, 1.0)
        out[i:i + block_rows] = 1.0 - np.arccos(block, out=block) / np.float32(np.pi)
    return out


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0.. by cluster size, descending; ties: the cluster whose first row comes first."""
    labels = np.asarray(labels)
    uniq, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    new = np.empty(len(uniq), dtype=np.int64)
    new[order] = np.arange(len(uniq))
    return new[np.searchsorted(uniq, labels)]


def resolve_eigen_solver(solver: str, affinity) -> str:
    """'auto' -> 'amg' for a sparse affinity (pyamg-preconditioned LOBPCG), 'randomized' for a dense one."""
    if solver != "auto":
        return solver
    return "amg" if sp.issparse(affinity) else "randomized"


def check_k(k: int, n: int) -> None:
    if not 2 <= k < n:
        raise ValueError(f"clustering.n_clusters: k = {k} must be >= 2 and < the number of tokens ({n})")


def randomized_spectral_embedding(affinity: np.ndarray, n_components: int, random_state) -> np.ndarray:
    """scikit-learn's spectral embedding (normalised Laplacian, first eigenvector kept, u = D^-1/2 x, signs fixed)
    with the top eigenvectors of D^-1/2 A D^-1/2 from scikit-learn's `randomized_svd` (power iterations: BLAS-3
    products of the dense matrix with n_components + oversampling vectors) instead of shift-invert ARPACK, whose
    one-vector solves are memory-bound. Exact up to the subspace iteration's error: A = 1 - arccos(C)/pi is a
    positive semi-definite kernel (the arc-cosine kernel of degree 0), so its singular vectors are its eigenvectors.

    affinity: dense (n, n) float32/float64, normalised in place. Returns (n, n_components)."""
    from sklearn.utils.extmath import randomized_svd

    dd = np.sqrt(affinity.sum(axis=1, dtype=np.float64)).astype(affinity.dtype)
    affinity /= dd[:, None]
    affinity /= dd[None, :]
    u, _, _ = randomized_svd(affinity, n_components, n_oversamples=max(10, n_components // 4),
                             random_state=random_state)
    maps = (u / dd[:, None]).T
    signs = np.sign(maps[np.arange(maps.shape[0]), np.argmax(np.abs(maps), axis=1)])
    return (maps * signs[:, None]).T


def assign_labels(maps: np.ndarray, k: int, method: str, random_state, n_init: int) -> np.ndarray:
    """Labels from a spectral embedding (n, k), as `SpectralClustering` assigns them."""
    from sklearn.cluster import k_means
    from sklearn.cluster._spectral import cluster_qr, discretize  # SpectralClustering's own assignment steps

    if method == "kmeans":
        return k_means(maps, k, random_state=random_state, n_init=n_init)[1]
    if method == "cluster_qr":
        return cluster_qr(maps)
    return discretize(maps, random_state=random_state)


def spectral_labels(affinity, k: int, seed: int, options: SpectralOptions = SpectralOptions()) -> np.ndarray:
    """Spectral clustering of a precomputed affinity (dense (n, n) array or sparse matrix, symmetric, >= 0) into k
    clusters, seeded: (n,) int64 labels, canonical (0 = largest). eigen_solver arpack/lobpcg/amg: scikit-learn's
    `SpectralClustering(affinity="precomputed")`; randomized (dense only): the same embedding and label assignment
    with `randomized_spectral_embedding` (a dense affinity is normalised in place). Warnings (a disconnected kNN
    graph, a solver fallback) go to the run log."""
    from sklearn.cluster import SpectralClustering
    from sklearn.utils import check_random_state

    check_k(k, affinity.shape[0])
    solver = resolve_eigen_solver(options.eigen_solver, affinity)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if solver == "randomized":
            if sp.issparse(affinity):
                raise ValueError("eigen_solver 'randomized' is for the dense affinity; use amg or lobpcg on the kNN "
                                 "affinity")
            random_state = check_random_state(seed)
            maps = randomized_spectral_embedding(affinity, k, random_state)
            labels = assign_labels(maps, k, options.assign_labels, random_state, options.n_init)
        else:
            model = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed, eigen_solver=solver,
                                       assign_labels=options.assign_labels, n_init=options.n_init)
            labels = model.fit_predict(affinity)
    log = run_logger()
    for w in {str(w.message) for w in caught if issubclass(w.category, (UserWarning, RuntimeWarning))}:
        log.warning("spectral clustering (k = %d, seed = %d): %s", k, seed, w)
    return canonical_labels(labels)


def read_affinity(st: Store, ref: ArtifactRef):
    """(affinity, rows): a dense float32 (n, n) A from a `qdg.similarity`, or the sparse CSR A of a
    `qdg.knn_affinity`; rows (n,) int64 = selection rows. Validated on read."""
    if ref.kind not in AFFINITY_KINDS:
        raise ValueError(f"{ref.short} is a {ref.kind}: clustering needs one of {AFFINITY_KINDS}")
    group = st.open_zarr(ref)
    rows = np.asarray(group["row"][...], dtype=np.int64)
    if ref.kind == "qdg.similarity":
        return affinity_from_cosine(group["c"], np.empty(group["c"].shape, dtype=np.float32)), rows
    n = rows.size
    indices, indptr = np.asarray(group["indices"][...]), np.asarray(group["indptr"][...])
    if indptr[-1] < np.iinfo(np.int32).max:  # scikit-learn's dense fallback of the spectral embedding (n < 5 k + 1)
        indices, indptr = indices.astype(np.int32), indptr.astype(np.int32)  # refuses int64 indices
    a = sp.csr_array((group["data"][...], indices, indptr), shape=(n, n))
    return a, rows


def affinity_size(st: Store, ref: ArtifactRef) -> int:
    """n of an affinity source, from its attrs (cheap: no validation pass)."""
    return int(st.open_zarr(ref, validate=False, verify_hash=False).attrs["n"])


def labels_table(rows: np.ndarray, labels: np.ndarray, k: int, seed: int) -> pd.DataFrame:
    n = len(rows)
    return pd.DataFrame({"row": np.asarray(rows, dtype=np.int64), "label": np.asarray(labels, dtype=np.int64),
                         "k": np.full(n, k, dtype=np.int64), "seed": np.full(n, seed, dtype=np.int64)})


def cluster_labels_to_store(st: Store, affinity: ArtifactRef, k: int, seed: int,
                            options: SpectralOptions) -> ArtifactRef:
    """One clustering without Prefect: k is checked against n before the affinity is read."""
    check_k(k, affinity_size(st, affinity))
    a, rows = read_affinity(st, affinity)
    labels = spectral_labels(a, k, seed, options)
    run_logger().info("clustering k = %d, seed = %d: %d non-empty clusters, largest %d of %d tokens", k, seed,
                      len(np.unique(labels)), int(np.bincount(labels).max()), len(labels))
    return st.write_table("qdg.labels", labels_table(rows, labels, k, seed), inputs=[affinity],
                             params={"k": k, "seed": seed, "spectral": options.model_dump(mode="json")})


@quanta_task(name="qdg-cluster", task_run_name="qdg-cluster-k{k}-s{seed}")
def cluster_labels(affinity: ArtifactRef, *, k: int, seed: int, spectral: SpectralOptions, store: str) -> ArtifactRef:
    """Spectral clustering into k clusters with one seed -> `qdg.labels`. `affinity`: the dense `qdg.similarity` or
    the sparse `qdg.knn_affinity` (see `ClusteringConfig.method_for`); `spectral`: `ClusteringConfig.spectral()`."""
    return cluster_labels_to_store(Store(store), affinity, k, seed, spectral)


# ------------------------------------------------------------------------------------------------- stability
def labels_ari(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Adjusted Rand index between two labellings of the same tokens (tables with `row` and `label`, any order;
    e.g. two seeds, full vs projected gradients, clusters vs true subtasks). 1 = identical partitions, ~0 = chance."""
    from sklearn.metrics import adjusted_rand_score

    ra, rb = np.sort(a["row"].to_numpy()), np.sort(b["row"].to_numpy())
    if not np.array_equal(ra, rb):
        only = np.setdiff1d(ra, rb)
        only = only if only.size else np.setdiff1d(rb, ra)
        raise ValueError(f"the two labellings cover different tokens ({len(ra)} vs {len(rb)} rows; e.g. row "
                         f"{only[0] if only.size else '?'} is in one only)")
    la = a.set_index("row")["label"].loc[ra].to_numpy()
    lb = b.set_index("row")["label"].loc[ra].to_numpy()
    return float(adjusted_rand_score(la, lb))


def stability_table(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """`qdg.stability`: the ARI of every pair of seeds, for each k, from `qdg.labels` tables."""
    by_k: dict[int, dict[int, pd.DataFrame]] = {}
    for df in tables:
        k, seed = int(df["k"].iloc[0]), int(df["seed"].iloc[0])
        if seed in by_k.setdefault(k, {}):
            raise ValueError(f"two clusterings with k = {k} and seed = {seed}")
        by_k[k][seed] = df
    rows = []
    for k in sorted(by_k):
        for sa, sb in itertools.combinations(sorted(by_k[k]), 2):
            rows.append({"k": k, "seed_a": sa, "seed_b": sb, "ari": labels_ari(by_k[k][sa], by_k[k][sb]),
                         "n_tokens": len(by_k[k][sa])})
    return pd.DataFrame(rows, columns=["k", "seed_a", "seed_b", "ari", "n_tokens"]).astype(
        {"k": "int64", "seed_a": "int64", "seed_b": "int64", "ari": "float64", "n_tokens": "int64"})


@quanta_task(name="qdg-stability")
def clustering_stability(labels: list[ArtifactRef], *, store: str) -> ArtifactRef:
    """`qdg.stability` (ARI between seeds, per k) from the `qdg.labels` of every (k, seed)."""
    st = Store(store)
    return st.write_table("qdg.stability", stability_table([st.read_table(ref) for ref in labels]),
                          inputs=list(labels))


@quanta_task(name="qdg-projection-ari")
def projection_agreement(full: list[ArtifactRef], projected: list[ArtifactRef], *, projection_dims: int,
                         store: str) -> ArtifactRef:
    """`qdg.projection_ari`: for each k, the ARI between the clustering of the gradients as configured (`full`) and
    of the same tokens' JL-projected gradients (`projected`), same k and seed (lists in the same k order)."""
    st = Store(store)
    rows = []
    for a_ref, b_ref in zip(full, projected, strict=True):
        a, b = st.read_table(a_ref), st.read_table(b_ref)
        if int(a["k"].iloc[0]) != int(b["k"].iloc[0]):
            raise ValueError(f"clusterings of k = {int(a['k'].iloc[0])} and {int(b['k'].iloc[0])} paired")
        rows.append({"k": int(a["k"].iloc[0]), "seed": int(a["seed"].iloc[0]), "projection_dims": projection_dims,
                     "ari": labels_ari(a, b), "n_tokens": len(a)})
    return st.write_table("qdg.projection_ari", pd.DataFrame(rows).astype({"k": "int64", "seed": "int64",
                          "projection_dims": "int64", "n_tokens": "int64"}), inputs=[*full, *projected],
                          params={"projection_dims": projection_dims})
