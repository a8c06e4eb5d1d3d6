"""QDG's headline size exponent: the calibrated estimator (`merged_finite_zipf`), in memory and as a cached task.

Why not the paper's envelope: the envelope of clusterings at log-spaced k is ≈ 1/rank by construction (a k-way split
of near-equal parts puts 1/k at every rank <= k), and a clustering into a fixed k also distorts the sizes: k below the
number of clusters merges the small ones into junk clusters, k above it splits the large ones (docs/qdg.md,
"Calibrating the size exponent").

The designed estimator, `size_exponent(affinity, ...)`:
1. over-cluster: spectral clustering (the clustering stage's `spectral_labels`, same options) at the largest k of
   the k list, so that pieces are small and rarely mix quanta;
2. merge the pieces (`merge_pieces`): average linkage on the mean affinity between pieces, merging pieces a and b
   while their mean affinity exceeds the background (the mean off-diagonal affinity) by more than half the smaller
   of the two pieces' own excess (their mean within-piece affinity above the background). The count of merged
   clusters is the k the data chose;
3. fit the merged clusters' ranked sizes as a finite multinomial Zipf sample (`tasks.stats.cluster_sizes.
   finite_zipf_exponent`: simulation-calibrated conditional rank MLE, Neyman-belt interval).

Deterministic given the seed (spectral clustering's and the simulation's); a few seconds at n = 3,000 and k = 160.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from schemas.qdg import SpectralOptions
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.qdg.clustering import read_affinity, spectral_labels
from tasks.stats.cluster_sizes import SizeExponent, finite_zipf_exponent, ranked_sizes

ESTIMATOR = "merged_finite_zipf"
MERGE_FRACTION = 0.5  # merge when the between-piece excess affinity passes half the within-piece excess (fixed)


def _piece_sums(affinity, labels: np.ndarray, k: int) -> np.ndarray:
    """(k, k) float64: the sum of A over (row in piece a, column in piece b), the diagonal's own entries left out."""
    n = len(labels)
    ind = sp.csr_array((np.ones(n), (np.arange(n), labels)), shape=(n, k))
    if sp.issparse(affinity):
        s = (ind.T @ (affinity @ ind)).toarray()
        diag = affinity.diagonal()
    else:
        s = ind.T @ (ind.T @ affinity).T
        s = np.asarray(s, dtype=np.float64)
        diag = np.diagonal(affinity)
    s = np.asarray(s, dtype=np.float64)
    s[np.arange(k), np.arange(k)] -= np.bincount(labels, weights=np.asarray(diag, dtype=np.float64), minlength=k)
    return s


def merge_pieces(affinity, labels: np.ndarray, fraction: float = MERGE_FRACTION) -> tuple[np.ndarray, float]:
    """Merge the clusters of `labels` whose mean mutual affinity is as high as their own (see the module docstring).

    affinity: dense (n, n) or sparse, symmetric; labels: (n,) ints 0..k-1. Returns (merged labels (n,) int64
    numbered 0.., the background affinity)."""
    labels = np.asarray(labels, dtype=np.int64)
    k = int(labels.max()) + 1
    s = _piece_sums(affinity, labels, k)
    size = np.bincount(labels, minlength=k).astype(np.float64)
    pairs = np.outer(size, size) - np.diag(size)
    off = ~np.eye(k, dtype=bool)
    background = float(s[off].sum() / pairs[off].sum()) if pairs[off].sum() > 0 else 0.0
    alive = np.ones(k, dtype=bool)
    owner = np.arange(k)
    while alive.sum() > 1:
        idx = np.flatnonzero(alive)
        pr = pairs[np.ix_(idx, idx)]
        mean = s[np.ix_(idx, idx)] / np.where(pr > 0, pr, 1.0)
        within = np.where(size[idx] >= 2, np.diag(mean), np.inf) - background
        between = mean - background
        denom = np.minimum(within[:, None], within[None, :])
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(denom > 0, between / denom, -np.inf)
        np.fill_diagonal(rel, -np.inf)
        i, j = np.unravel_index(int(np.argmax(rel)), rel.shape)
        if not rel[i, j] > fraction:
            break
        a, b = idx[i], idx[j]
        s[a, :] += s[b, :]
        s[:, a] += s[:, b]
        size[a] += size[b]
        pairs[a, :] = size[a] * size
        pairs[:, a] = pairs[a, :]
        pairs[a, a] = size[a] * (size[a] - 1)
        alive[b] = False
        owner[owner == b] = a
    _, merged = np.unique(owner[labels], return_inverse=True)
    return merged.astype(np.int64), background


def size_exponent(affinity, *, n_clusters: Sequence[int], spectral: SpectralOptions = SpectralOptions(),
                  seed: int = 0, labels: np.ndarray | None = None, level: float = 0.95, n_sim: int = 200,
                  min_size: int = 10) -> SizeExponent:
    """The headline size exponent e (sizes ∝ rank^-e) of a QDG affinity, with its interval (module docstring).

    Parameters
    ----------
    affinity : dense (n, n) float array or sparse matrix, as `tasks.qdg.clustering.read_affinity` returns (not
        modified: the dense one is copied before spectral clustering normalises it).
    n_clusters : the study's k list; the largest is the over-clustering.
    spectral, seed : the clustering stage's options and seed.
    labels : optional (n,) labels of that clustering (the pipeline's `qdg.labels` at max k, seed `seed`), to skip
        recomputing it.
    level, n_sim, min_size : of `finite_zipf_exponent`.

    Returns
    -------
    SizeExponent named ``merged_finite_zipf``; ``k`` = the merged clusters (the k the data chose); choices:
    k_over, k_chosen, background, and the fit's own.
    """
    k_over = int(max(n_clusters))
    if labels is None:
        a = affinity.copy() if not sp.issparse(affinity) else affinity
        labels = spectral_labels(a, k_over, seed, spectral)
        del a
    merged, background = merge_pieces(affinity, labels)
    sizes = ranked_sizes(merged)
    fit = finite_zipf_exponent(sizes, min_size=min_size, n_sim=n_sim, seed=seed, level=level)
    fit.estimator = ESTIMATOR
    fit.choices = {"k_over": k_over, "k_chosen": int(len(sizes)), "background": background, **fit.choices}
    return fit


def size_exponent_table(fit: SizeExponent, n_tokens: int) -> pd.DataFrame:
    """The one-row `qdg.size_exponent` table of a `SizeExponent`."""
    c = fit.choices
    return pd.DataFrame([{"estimator": fit.estimator, "exponent": float(fit.exponent), "ci_lo": float(fit.ci[0]),
                          "ci_hi": float(fit.ci[1]), "level": float(fit.level), "n_tokens": int(n_tokens),
                          "k_over": int(c.get("k_over", 0)), "k_chosen": int(c.get("k_chosen", fit.k)),
                          "n_ranks": int(fit.n_ranks), "min_size": int(c.get("min_size", 0)),
                          "n_sim": int(c.get("n_sim", 0)), "note": fit.note}])


@quanta_task(name="qdg-size-exponent")
def qdg_size_exponent(affinity: ArtifactRef, labels: ArtifactRef | None = None, *, k_over: int,
                      spectral: SpectralOptions, seed: int, store: str) -> ArtifactRef:
    """`qdg.size_exponent`: the calibrated headline exponent of an affinity (`qdg.similarity` or
    `qdg.knn_affinity`). `k_over`: the over-clustering's k (the study's largest cluster count: a task keyed on it
    alone stays `Cached` when a smaller k is added); `labels`: the `qdg.labels` at (k_over, seed), or None to
    cluster here."""
    st = Store(store)
    a, rows = read_affinity(st, affinity)
    lab = None
    inputs = [affinity]
    if labels is not None:
        df = st.read_table(labels)
        if int(df["k"].iloc[0]) != k_over or int(df["seed"].iloc[0]) != seed:
            raise ValueError(f"{labels.short}: labels of k = {int(df['k'].iloc[0])}, seed = {int(df['seed'].iloc[0])}"
                             f"; size_exponent needs k = {k_over}, seed = {seed}")
        lab = df.set_index("row")["label"].loc[rows].to_numpy()
        inputs.append(labels)
    fit = size_exponent(a, n_clusters=[k_over], spectral=spectral, seed=seed, labels=lab)
    return st.write_table("qdg.size_exponent", size_exponent_table(fit, len(rows)), inputs=inputs,
                          params={"k_over": k_over, "seed": seed, "spectral": spectral.model_dump(mode="json")})
