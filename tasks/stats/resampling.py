"""Intervals for a log-log slope whose points are means over groups (documents): resample the groups, and
optionally the x values (models) too.

The paper's alpha_N is the slope of ln(mean loss) on ln N over a suite of models, each mean over the same tokens.
Two things vary in that experiment: which documents were scored and which models stand for their sizes. Resampling
documents (whole documents, since tokens of one document are not independent) measures the first; resampling
the models as well (the bootstrap over points of the fit) adds the second.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.stats.inputs import FitError
from tasks.stats.intervals import percentile_ci


@dataclass(frozen=True)
class ResampledSlope:
    slope: float                # the slope on the data as given
    ci: tuple[float, float]     # percentile interval of the resampled slopes
    n_resamples: int            # resamples that gave a slope (a model resample needs >= 3 distinct x)
    n_groups: int
    n_points: int


def _slope(lx: np.ndarray, ly: np.ndarray) -> float:
    lx = lx - lx.mean()
    return float((lx * (ly - ly.mean())).sum() / (lx ** 2).sum())


def resampled_loglog_slope(sums: np.ndarray, counts: np.ndarray, x: np.ndarray, *, n_resamples: int,
                           resample_points: bool, level: float = 0.95, seed: int = 0) -> ResampledSlope:
    """Slope of ln(mean y) on ln x, where mean y at point j is sums[:, j].sum() / counts.sum().

    sums: (groups, points) per-group sums of y (e.g. a document's summed token losses under each model);
    counts: (groups,) items per group (the document's scored tokens); x: (points,) > 0, distinct.
    Each resample draws the groups with replacement (and, with `resample_points`, the points as well, keeping
    draws with >= 3 distinct x). Raises FitError with fewer than 3 points or 2 groups."""
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if sums.ndim != 2 or sums.shape != (len(counts), len(x)):
        raise FitError(f"sums must be (groups, points) = ({len(counts)}, {len(x)}), got {sums.shape}")
    if len(x) < 3 or len(np.unique(x)) < 3:
        raise FitError(f"a slope with an interval needs >= 3 distinct x (got {len(np.unique(x))})")
    if len(counts) < 2:
        raise FitError(f"resampling groups needs >= 2 groups (got {len(counts)})")
    if (x <= 0).any() or not np.isfinite(sums).all():
        raise FitError("x must be > 0 and every sum finite")
    lx = np.log(x)
    slope = _slope(lx, np.log(sums.sum(axis=0) / counts.sum()))
    rng = np.random.default_rng(seed)
    slopes = []
    for _ in range(n_resamples):
        g = rng.integers(0, len(counts), len(counts))
        n = counts[g].sum()
        if n <= 0:
            continue
        means = sums[g].sum(axis=0) / n
        pts = rng.integers(0, len(x), len(x)) if resample_points else np.arange(len(x))
        if len(np.unique(pts)) < 3 or (means[pts] <= 0).any():
            continue
        slopes.append(_slope(lx[pts], np.log(means[pts])))
    if not slopes:
        raise FitError("no resample gave a slope")
    lo, hi = percentile_ci(np.asarray(slopes), level)
    return ResampledSlope(slope=slope, ci=(float(lo), float(hi)), n_resamples=len(slopes),
                          n_groups=int(len(counts)), n_points=int(len(x)))
