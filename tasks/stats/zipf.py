"""Zipf statistics: rank-frequency slopes (the paper's cluster-size plot) and the discrete power-law MLE."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special, stats

from schemas.jsonable import jsonable
from tasks.stats.inputs import FitError, check_level, counts_array
from tasks.stats.intervals import percentile_ci, sample_se
from tasks.stats.ols import LogLogFit, ols_loglog


def rank_frequency_slope(
    counts: Any,
    rank_min: int = 1,
    rank_max: int | None = None,
    *,
    level: float = 0.95,
) -> LogLogFit:
    """Zipf plot slope: sort ``counts`` descending, OLS of log(count) on log(rank).

    Parameters
    ----------
    counts : array-like, shape (k,), non-negative (e.g. cluster sizes). Zero counts are
        ranked but cannot be logged, so they are left out of the window.
    rank_min, rank_max : inclusive rank window (ranks start at 1; rank_max None = last
        positive count).
    level : confidence level of the slope's t-interval.

    Returns
    -------
    LogLogFit with x = rank (``xmin``/``xmax`` = the rank window), method
    ``"ols-rank-frequency"``. For frequencies p_k ∝ k^-(α+1) the slope is ≈ -(α+1).
    """
    c = counts_array(counts)
    if rank_min < 1:
        raise FitError(f"rank_min must be >= 1; got {rank_min}")
    c_sorted = np.sort(c)[::-1]
    ranks = np.arange(1, len(c_sorted) + 1, dtype=float)
    pos = c_sorted > 0
    hi = int(pos.sum()) if rank_max is None else int(rank_max)
    if hi < rank_min:
        raise FitError(f"rank window [{rank_min}, {rank_max}] is empty ({int(pos.sum())} positive counts)")
    keep = pos & (ranks >= rank_min) & (ranks <= hi)
    if keep.sum() < 3:
        raise FitError(
            f"too few points for a rank-frequency fit: need at least 3 positive counts in ranks "
            f"[{rank_min}, {hi}], got {int(keep.sum())}"
        )
    slope, icpt, se, se_i, r2, ci, ci_i = ols_loglog(np.log(ranks[keep]), np.log(c_sorted[keep]), check_level(level))
    return LogLogFit(slope, icpt, ci, se, ci_i, se_i, r2, int(keep.sum()), level, float(rank_min), float(hi), 0.0,
                     "ols-rank-frequency")


@dataclass
class DiscretePowerLawFit:
    """Discrete power-law MLE (Clauset et al.) of P(x) ∝ x^-alpha for integer x >= xmin.

    ``alpha``: the exponent of the probability mass function; ``ci``: at ``level``, from the
    bootstrap percentiles (``n_bootstrap > 0``) or alpha ± z·se with the asymptotic se from the
    discrete Fisher information; ``se``; ``xmin`` (given or chosen by KS minimisation); ``n``: points
    >= xmin; ``n_total``: all positive points; ``ks_distance``: KS distance of the fit.
    Note: if counts follow a rank-frequency law count ∝ rank^-s, their value distribution has
    alpha = 1 + 1/s.
    """

    alpha: float
    ci: list[float]
    se: float
    xmin: float
    n: int
    n_total: int
    ks_distance: float
    level: float = 0.95
    method: str = "powerlaw-mle-discrete"

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self)


def _powerlaw_fit(data: np.ndarray, xmin: float | None):
    import powerlaw  # imported lazily: it is slowish to import and only this function needs it

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            fit = powerlaw.Fit(data, discrete=True, xmin=xmin, estimate_discrete=False, verbose=0)
            pl = fit.power_law
            return float(pl.alpha), float(pl.standard_err), float(pl.xmin), int(pl.n), float(pl.D)


def _discrete_powerlaw_se(alpha: float, xmin: float, n: int) -> float:
    """Asymptotic standard error of the discrete MLE from the exact Fisher information.

    The log-likelihood per point is -alpha*log(x) - log(zeta(alpha, xmin)), so the Fisher
    information is n * d^2/dalpha^2 log zeta(alpha, xmin) (the variance of log x under the
    fitted law). ``powerlaw``'s (alpha - 1)/sqrt(n) is the continuous approximation and
    underestimates the error by ~10% at xmin = 1.
    """
    h = 1e-4
    with np.errstate(all="ignore"):
        lz = [math.log(special.zeta(alpha + k * h, xmin)) for k in (-1, 0, 1)]
    d2 = (lz[0] - 2 * lz[1] + lz[2]) / h**2
    return 1.0 / math.sqrt(n * d2) if d2 > 0 and math.isfinite(d2) else math.nan


def fit_discrete_powerlaw(
    counts: Any,
    xmin: float | None = None,
    *,
    n_bootstrap: int = 0,
    level: float = 0.95,
    seed: int | None = 0,
) -> DiscretePowerLawFit:
    """Maximum-likelihood discrete power law (``powerlaw`` package, ``discrete=True``, exact MLE).

    Parameters
    ----------
    counts : array-like of non-negative integers, shape (k,) (e.g. cluster sizes); zeros are
        dropped (a power law needs x >= 1).
    xmin : lower cut-off; None lets ``powerlaw`` choose it by KS minimisation.
    n_bootstrap : 0 (default) uses the asymptotic standard error (exact discrete Fisher
        information) and a normal interval;
        > 0 resamples the points ``n_bootstrap`` times (xmin held at the fitted value) and
        uses percentile intervals.
    level, seed : confidence level and bootstrap seed.
    """
    level = check_level(level)
    c = counts_array(counts)
    nonint = np.flatnonzero(c != np.round(c))
    if nonint.size:
        i = int(nonint[0])
        raise FitError(f"counts must be integers for a discrete power law; got {c[i]} at row {i}")
    data = c[c > 0]
    if xmin is not None and xmin < 1:
        raise FitError(f"xmin must be >= 1 for a discrete power law; got {xmin}")
    tail = data if xmin is None else data[data >= xmin]
    if len(tail) < 3 or len(np.unique(tail)) < 2:
        raise FitError(
            f"too few points for a discrete power-law fit: need at least 3 positive counts with 2 distinct "
            f"values >= xmin={xmin}, got {len(tail)}"
        )
    alpha, se_approx, xm, n, ks = _powerlaw_fit(data, xmin)
    if not math.isfinite(alpha):
        raise FitError("discrete power-law fit failed: non-finite exponent")
    se = _discrete_powerlaw_se(alpha, xm, n)
    if not math.isfinite(se):
        se = se_approx
    if n_bootstrap > 0:
        # a loop, not scipy.stats.bootstrap: resamples with a single distinct value cannot be fitted and are left
        # out (scipy's interval turns NaN as soon as one replicate is NaN), and xmin stays at the full-data value
        rng = np.random.default_rng(seed)
        tail = data[data >= xm]
        boots = []
        for _ in range(int(n_bootstrap)):
            sample = tail[rng.integers(0, len(tail), size=len(tail))]
            if len(np.unique(sample)) < 2:
                continue
            boots.append(_powerlaw_fit(sample, xm)[0])
        boots = np.array(boots)
        ci, se_b = percentile_ci(boots, level), sample_se(boots)
        return DiscretePowerLawFit(alpha, ci, se_b, xm, n, len(data), ks, level, "powerlaw-mle-discrete-bootstrap")
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    return DiscretePowerLawFit(alpha, [alpha - z * se, alpha + z * se], se, xm, n, len(data), ks, level,
                               "powerlaw-mle-discrete")
