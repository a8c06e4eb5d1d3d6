"""Interval helpers: percentile and BCa intervals over bootstrap samples, standard errors, and the MOVER interval of
a difference of two independent estimates. Non-finite samples are ignored everywhere."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats


def _finite(samples) -> np.ndarray:
    samples = np.asarray(samples, dtype=float).reshape(-1)
    return samples[np.isfinite(samples)]


def percentile_ci(samples: np.ndarray, level: float) -> list[float]:
    """[lo, hi]: the (1-level)/2 and (1+level)/2 quantiles of the samples ([nan, nan] with fewer than 2)."""
    samples = _finite(samples)
    if samples.size < 2:
        return [math.nan, math.nan]
    q = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [q, 1.0 - q])
    return [float(lo), float(hi)]


def bca_ci(samples: np.ndarray, estimate: float, jackknife: np.ndarray, level: float) -> list[float]:
    """Bias-corrected and accelerated bootstrap interval (Efron 1987; DiCiccio & Efron 1996, eq. 2.3-2.6).

    samples : bootstrap replicates of the statistic, shape (B,); estimate : the statistic on the full data;
    jackknife : the statistic on each leave-one-out sample, shape (n,) (gives the acceleration). Falls back to the
    percentile interval when the bias correction is undefined (every replicate on one side of the estimate) or the
    jackknife has fewer than 3 finite values.
    """
    samples = _finite(samples)
    jack = _finite(jackknife)
    if samples.size < 2:
        return [math.nan, math.nan]
    below = (np.sum(samples < estimate) + 0.5 * np.sum(samples == estimate)) / samples.size
    if not (0.0 < below < 1.0) or jack.size < 3:
        return percentile_ci(samples, level)
    z0 = stats.norm.ppf(below)
    dev = jack.mean() - jack
    denom = 6.0 * np.sum(dev**2) ** 1.5
    accel = float(np.sum(dev**3) / denom) if denom > 0 else 0.0
    z = stats.norm.ppf([(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    q = stats.norm.cdf(z0 + (z0 + z) / (1.0 - accel * (z0 + z)))
    lo, hi = np.quantile(samples, q)
    return [float(lo), float(hi)]


def sample_se(samples: np.ndarray) -> float:
    samples = _finite(samples)
    return float(np.std(samples, ddof=1)) if samples.size >= 2 else math.nan


def mover_difference_ci(a: float, a_ci, b: float, b_ci) -> list[float]:
    """Interval of a - b for independent estimates a and b from their own intervals at one level: the MOVER
    ("method of variance estimates recovery", Zou & Donner 2008; Newcombe 2013), which keeps each interval's
    asymmetry and reduces to d +- z*sqrt(se_a^2 + se_b^2) for symmetric normal intervals."""
    (la, ua), (lb, ub) = sorted(a_ci), sorted(b_ci)
    d = a - b
    return [d - math.hypot(a - la, ub - b), d + math.hypot(ua - a, b - lb)]
