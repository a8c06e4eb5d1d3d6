"""Zipf stage: are the cluster sizes Zipf-distributed, with the exponent the quantization model predicts?

For each cluster count k: the cluster sizes ranked, the paper's rank-frequency slope (OLS of log size on log rank
over the rank window, `tasks.stats.rank_frequency_slope`, t-interval) and the discrete power-law MLE exponent of
the size distribution (`tasks.stats.fit_discrete_powerlaw`). The envelope over k (the paper's figure: for each rank,
the largest normalised size size/n over the cluster counts) gets its own slope. The quantization model predicts
frequencies ~ rank^-(alpha_N + 1), i.e. a slope of -(alpha_N + 1), with alpha_N from the lm-losses study's fit.

Slope vs MLE exponent: sizes s_r ~ r^-a (rank-frequency slope -a) mean that the number of clusters of size >= x goes
as x^(-1/a), so P(size = x) ~ x^-(1 + 1/a): the MLE exponent is 1 + 1/a, and a slope of -1/(exponent - 1) is what an
MLE exponent implies (`slope_from_mle`).

`consistent` (yes/no/n/a), the rule: the slope's confidence interval (OLS t-interval at `level`) overlaps the
interval of -(alpha_N + 1) (alpha_N's interval from `lm.fits` mapped through a -> -(a + 1)); when alpha_N has no
interval, -(alpha_N + 1) must lie inside the slope's interval; n/a without a slope or without alpha_N. It is
`tasks.stats.scaling_theory_checks(zipf_slope=..., alpha_n=...)`'s "zipf_slope vs -(alpha_N+1)" check.

The headline (scope 'headline'): the calibrated estimator's exponent e from a `qdg.size_exponent` artifact
(`tasks.qdg.size_exponent`: over-cluster, merge, finite-K Zipf fit; calibrated in the qdg-calibration study), stored
as the slope -e with the interval [-hi, -lo] and checked against -(alpha_N + 1) by the same rule; k = the clusters it
chose, the estimator's name in `note`. The envelope row stays: it is the paper's statistic (≈ -1 on noise, see
docs/qdg.md).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from schemas.qdg import ZipfConfig
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.stats import FitError, fit_discrete_powerlaw, rank_frequency_slope, scaling_theory_checks
from tasks.stats.cluster_sizes import size_envelope  # lives in tasks.stats now; still importable from here

NAN = math.nan


def cluster_sizes(labels: np.ndarray, k: int) -> np.ndarray:
    """Sizes of clusters 0..k-1 sorted descending (empty clusters as 0): (k,) int64."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must be in [0, {k}) for k = {k} (got {labels.min()}..{labels.max()})")
    return np.sort(np.bincount(labels, minlength=k))[::-1].astype(np.int64)


def alpha_n_from_fits(fits: pd.DataFrame | None) -> tuple[float, list[float] | None] | None:
    """(alpha_N, [lo, hi] or None) from an `lm.fits` table (row quantity == 'alpha_N'); None when absent or NaN."""
    if fits is None:
        return None
    row = fits[fits["quantity"] == "alpha_N"]
    if row.empty or not np.isfinite(row["value"].iloc[0]):
        return None
    lo, hi = float(row["ci_lo"].iloc[0]), float(row["ci_hi"].iloc[0])
    return float(row["value"].iloc[0]), ([lo, hi] if np.isfinite(lo) and np.isfinite(hi) else None)


def _window(n_ranks: int, cfg: ZipfConfig) -> tuple[int, int]:
    return cfg.rank_min, min(n_ranks, cfg.rank_max) if cfg.rank_max is not None else n_ranks


def zipf_row(counts: np.ndarray, scope: str, k: int, n_tokens: int, alpha_n, cfg: ZipfConfig,
             mle: bool = True) -> dict:
    """One row of the `qdg.zipf` table for ranked sizes (or envelope values) `counts` (see the module docstring)."""
    counts = np.asarray(counts, dtype=np.float64)
    nonempty = int((counts > 0).sum())
    lo, hi = _window(nonempty, cfg)
    row = {"scope": scope, "k": k, "n_tokens": n_tokens, "n_nonempty": nonempty, "rank_min": lo, "rank_max": hi,
           "slope": NAN, "slope_ci_lo": NAN, "slope_ci_hi": NAN, "slope_r2": NAN, "exponent_mle": NAN,
           "exponent_mle_ci_lo": NAN, "exponent_mle_ci_hi": NAN, "mle_xmin": NAN, "slope_from_mle": NAN,
           "alpha_N": NAN, "predicted_slope": NAN, "predicted_ci_lo": NAN, "predicted_ci_hi": NAN,
           "consistent": "n/a", "level": cfg.level, "note": ""}
    notes = []
    fit = None
    try:
        fit = rank_frequency_slope(counts, lo, hi, level=cfg.level)
        row.update(slope=fit.slope, slope_ci_lo=fit.ci[0], slope_ci_hi=fit.ci[1], slope_r2=fit.r2)
    except FitError as e:
        notes.append(f"slope: {e}")
    if mle:
        try:
            ml = fit_discrete_powerlaw(counts[counts > 0], cfg.mle_xmin, n_bootstrap=cfg.bootstrap, level=cfg.level)
            row.update(exponent_mle=ml.alpha, exponent_mle_ci_lo=ml.ci[0], exponent_mle_ci_hi=ml.ci[1],
                       mle_xmin=ml.xmin, slope_from_mle=-1.0 / (ml.alpha - 1.0) if ml.alpha > 1 else NAN)
        except FitError as e:
            notes.append(f"mle: {e}")
    predict(row, notes, alpha_n, fit, cfg.level)
    return row


def predict(row: dict, notes: list[str], alpha_n, slope, level: float) -> None:
    """Fill `row`'s prediction -(alpha_N + 1) and `consistent` for a measured slope (a LogLogFit or (value, (lo,
    hi)); None: no check), and its note."""
    if alpha_n is None:
        notes.append("no alpha_N (no lm.fits, or its fit has no value): no prediction")
    else:
        value, ci = alpha_n
        row.update(alpha_N=value, predicted_slope=-(value + 1.0))
        if ci is not None:
            row.update(predicted_ci_lo=-(ci[1] + 1.0), predicted_ci_hi=-(ci[0] + 1.0))
        if slope is not None:
            check = scaling_theory_checks(zipf_slope=slope, alpha_n=(value, ci) if ci else value, level=level)[0]
            row["consistent"] = "yes" if check.consistent else "no"
    row["note"] = "; ".join(notes)


def headline_row(headline: pd.DataFrame, n_tokens: int, alpha_n, cfg: ZipfConfig) -> dict:
    """The 'headline' row of the `qdg.zipf` table from a one-row `qdg.size_exponent` table (module docstring)."""
    h = headline.iloc[0]
    e, lo, hi = float(h["exponent"]), float(h["ci_lo"]), float(h["ci_hi"])
    row = zipf_row(np.zeros(0), "headline", int(h["k_chosen"]), n_tokens, None, cfg, mle=False)
    row.update(n_nonempty=int(h["k_chosen"]), rank_min=1, rank_max=int(h["n_ranks"]), slope=-e, slope_ci_lo=-hi,
               slope_ci_hi=-lo, level=float(h["level"]))
    notes = [f"estimator {h['estimator']} (calibrated: docs/qdg.md); fit over the {int(h['n_ranks'])} clusters of "
             f">= {int(h['min_size'])} rows of {int(h['k_chosen'])} (merged from k = {int(h['k_over'])})"]
    if str(h["note"]):
        notes.append(str(h["note"]))
    finite = np.isfinite(e) and np.isfinite(lo) and np.isfinite(hi)
    predict(row, notes, alpha_n, (-e, (-hi, -lo)) if finite else None, row["level"])
    return row


def zipf_table(sizes_by_k: Mapping[int, np.ndarray], n_tokens: int, alpha_n, cfg: ZipfConfig,
               headline: pd.DataFrame | None = None) -> pd.DataFrame:
    """The `qdg.zipf` table: one row per k (ascending), the envelope row (k = 0, no MLE: its values are maxima
    over k, not a sample of sizes) and, given a `qdg.size_exponent` table, the headline row."""
    rows = [zipf_row(sizes_by_k[k], "k", k, n_tokens, alpha_n, cfg) for k in sorted(sizes_by_k)]
    env = size_envelope(sizes_by_k, n_tokens)
    rows.append(zipf_row(env, "envelope", 0, n_tokens, alpha_n, cfg, mle=False))
    if headline is not None:
        rows.append(headline_row(headline, n_tokens, alpha_n, cfg))
    return pd.DataFrame(rows)


def headline_exponent(zipf: pd.DataFrame) -> dict | None:
    """The headline exponent of a `qdg.zipf` table, for results: {estimator, exponent, ci, k, slope, slope_ci,
    consistent, note}; None when the table has no headline row."""
    h = zipf[zipf["scope"] == "headline"]
    if h.empty:
        return None
    r = h.iloc[0]

    def f(x) -> float | None:
        return float(x) if np.isfinite(x) else None

    return {"estimator": str(r["note"]).split()[1] if str(r["note"]).startswith("estimator ") else None,
            "exponent": f(-r["slope"]), "ci": [f(-r["slope_ci_hi"]), f(-r["slope_ci_lo"])], "k": int(r["k"]),
            "slope": f(r["slope"]), "slope_ci": [f(r["slope_ci_lo"]), f(r["slope_ci_hi"])],
            "consistent": str(r["consistent"]), "note": str(r["note"])}


def sizes_from_labels(tables: Sequence[pd.DataFrame]) -> tuple[dict[int, np.ndarray], int]:
    """({k: ranked sizes}, n_tokens) from `qdg.labels` tables, one per k over the same tokens."""
    sizes: dict[int, np.ndarray] = {}
    n = None
    for df in tables:
        k = int(df["k"].iloc[0])
        if k in sizes:
            raise ValueError(f"two clusterings with k = {k}: pass one per cluster count (the first seed's)")
        if n is not None and len(df) != n:
            raise ValueError(f"the clustering with k = {k} has {len(df)} tokens, another has {n}: not the same "
                             "tokens")
        n = len(df)
        sizes[k] = cluster_sizes(df["label"].to_numpy(), k)
    if not sizes:
        raise ValueError("no clusterings given")
    return sizes, int(n)


@quanta_task(name="qdg-zipf")
def zipf_analysis(labels: list[ArtifactRef], lm_fits: ArtifactRef | None, headline: ArtifactRef | None = None, *,
                  cfg: ZipfConfig, store: str) -> ArtifactRef:
    """`qdg.zipf` from one `qdg.labels` per cluster count, the lm study's `lm.fits` (None: no prediction) and the
    calibrated headline exponent (`qdg.size_exponent`, None: no headline row)."""
    st = Store(store)
    sizes, n = sizes_from_labels([st.read_table(ref) for ref in labels])
    alpha_n = alpha_n_from_fits(st.read_table(lm_fits) if lm_fits is not None else None)
    table = zipf_table(sizes, n, alpha_n, cfg, st.read_table(headline) if headline is not None else None)
    inputs = list(labels) + [r for r in (lm_fits, headline) if r is not None]
    return st.write_table("qdg.zipf", table, inputs=inputs, params={"zipf": cfg.model_dump(mode="json")})
