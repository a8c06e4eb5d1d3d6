"""Interval helpers over bootstrap samples: percentile CIs and standard errors (non-finite samples ignored)."""
from __future__ import annotations

import math

import numpy as np


def percentile_ci(samples: np.ndarray, level: float) -> list[float]:
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return [math.nan, math.nan]
    q = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [q, 1.0 - q])
    return [float(lo), float(hi)]


def sample_se(samples: np.ndarray) -> float:
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    return float(np.std(samples, ddof=1)) if samples.size >= 2 else math.nan
