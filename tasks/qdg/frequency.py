"""The paper's frequency claim where the answer is known: cluster sizes of frequency-sampled sparse parity.

With `model.sampling = "frequency"` the learned subtasks' samples are drawn from the task's own distribution
(subtask i with probability ~ i^-(alpha+1), restricted to the learned ones) until the rarest has
`model.min_per_subtask` (tasks.qdg.parity.frequency_counts). The true rank-size exponent of the sizes is then
known: alpha + 1 when the learned subtasks are the most frequent ones (ranks 1..m); `true_exponent` here is minus
the OLS slope of log p on log rank over the learned subtasks' own ranks, which equals alpha + 1 exactly in that
case and says what a gap in the learned ranks does otherwise.

For each (regime, representation) the estimators run on that run's affinity and clustering at the true k, and on
the true subtask labels themselves (`true_labels`: the estimator alone, given perfect clusters):
- `merged_finite_zipf`: the calibrated headline estimator (tasks.qdg.size_exponent: over-cluster at
  `OVER_CLUSTER x` the true k, merge, finite-Zipf fit with its Neyman-belt interval);
- `rank_slope` and `powerlaw_mle`: the per-k estimators at the true k (tasks.stats.cluster_sizes);
- `true_labels`: the finite-Zipf fit of the true subtask counts (the ceiling any clustering can reach).
Each row says whether its interval covers the true exponent.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from schemas.qdg import SpectralOptions
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.qdg.clustering import read_affinity
from tasks.qdg.size_exponent import size_exponent
from tasks.stats import rank_frequency_slope
from tasks.stats.cluster_sizes import finite_zipf_exponent, mle_exponent, rank_slope_exponent, ranked_sizes

OVER_CLUSTER = 4  # the over-clustering of the merged estimator, in multiples of the true k (fixed, not tuned)


def true_exponent(probs: np.ndarray, subtasks: np.ndarray) -> float:
    """Minus the OLS slope of log p_i on log(rank of i among `subtasks`, by frequency): the rank-size exponent the
    sampled sizes have in expectation."""
    p = np.sort(np.asarray(probs, dtype=np.float64)[np.asarray(subtasks)])[::-1]
    return float(-rank_frequency_slope(p / p.sum()).slope)


def frequency_rows(affinity, truth: np.ndarray, labels_at_k: np.ndarray, *, k_true: int, spectral: SpectralOptions,
                   seed: int, level: float) -> list[dict]:
    """The estimators' rows for one run (module docstring): estimator, measured, ci_lo, ci_hi, k."""
    fits = [size_exponent(affinity, n_clusters=[OVER_CLUSTER * k_true], spectral=spectral, seed=seed, level=level),
            rank_slope_exponent(ranked_sizes(labels_at_k), k_true, level=level),
            mle_exponent(ranked_sizes(labels_at_k), k_true, level=level)]
    oracle = finite_zipf_exponent(ranked_sizes(truth), seed=seed, level=level)
    oracle.estimator = "true_labels"
    rows = []
    for f in [*fits, oracle]:
        rows.append({"estimator": f.estimator, "measured": float(f.exponent), "ci_lo": float(f.ci[0]),
                     "ci_hi": float(f.ci[1]), "k": int(f.k), "note": f.note})
    return rows


def frequency_table(st: Store, samples: ArtifactRef, affinity: ArtifactRef, labels: ArtifactRef, *, regime: str,
                    representation: str, spectral: SpectralOptions, seed: int, level: float) -> pd.DataFrame:
    group = st.open_zarr(samples)
    task = np.asarray(group["task"][...], dtype=np.int64)
    subtasks = np.asarray(group.attrs["subtasks"], dtype=np.int64)
    spec_probs = np.asarray(group.attrs["probs"], dtype=np.float64)
    a, rows = read_affinity(st, affinity)
    lab = st.read_table(labels).set_index("row").loc[rows, "label"].to_numpy()
    truth = task[rows]
    e = true_exponent(spec_probs, subtasks)
    out = pd.DataFrame(frequency_rows(a, truth, lab, k_true=len(subtasks), spectral=spectral, seed=seed,
                                      level=level))
    out.insert(0, "representation", representation)
    out.insert(0, "regime", regime)
    out["true_exponent"] = e
    out["covers"] = [bool(lo <= e <= hi) if np.isfinite(lo) and np.isfinite(hi) else False
                     for lo, hi in zip(out.ci_lo, out.ci_hi)]
    out["n"] = int(len(rows))
    out["level"] = float(level)
    return out.astype({"k": "int64", "n": "int64"})


@quanta_task(name="qdg-frequency")
def frequency_exponents(samples: ArtifactRef, affinity: ArtifactRef, labels: ArtifactRef, *, regime: str,
                        representation: str, spectral: SpectralOptions, seed: int, level: float,
                        store: str) -> ArtifactRef:
    """`qdg.frequency`: every size-exponent estimator on one frequency-sampled run (its affinity and its clustering
    at the true k, first seed) against the true exponent."""
    st = Store(store)
    table = frequency_table(st, samples, affinity, labels, regime=regime, representation=representation,
                            spectral=spectral, seed=seed, level=level)
    return st.write_table("qdg.frequency", table, inputs=[samples, affinity, labels],
                          params={"regime": regime, "representation": representation, "seed": seed, "level": level,
                                  "over_cluster": OVER_CLUSTER, "spectral": spectral.model_dump(mode="json")})


def frequency_results(tables: list[pd.DataFrame]) -> dict:
    """`results.frequency`: {true_exponent, n, runs: {"regime/representation": {estimator: {measured, ci,
    covers}}}}."""
    if not tables:
        return {}
    df = pd.concat(tables, ignore_index=True)

    def num(x):
        return float(x) if np.isfinite(x) else None

    runs: dict = {}
    for r in df.itertuples():
        runs.setdefault(f"{r.regime}/{r.representation}", {})[r.estimator] = {
            "measured": num(r.measured), "ci": [num(r.ci_lo), num(r.ci_hi)], "covers": bool(r.covers),
            "k": int(r.k)}
    return {"true_exponent": float(df.true_exponent.iloc[0]), "n": int(df.n.iloc[0]), "runs": runs}
