"""Estimators of the size exponent of clusters: sizes s_r ∝ r^-e (rank r = 1 the largest), e > 0.

Four estimators, each returning a `SizeExponent` (e, its interval, the estimator's name and its choices):

- `envelope_exponent`: the paper's statistic. For each rank, the largest normalised size over clusterings at several
  k (`size_envelope`), then minus the OLS slope of log envelope on log rank (t-interval).
- `rank_slope_exponent`: minus the OLS slope of log size on log rank of one clustering (one k).
- `mle_exponent`: the discrete power-law MLE (Clauset, Shalizi & Newman 2009, via `tasks.stats.zipf`) of the
  size *distribution* P(size = x) ∝ x^-alpha of one clustering, mapped to the rank exponent e = 1 / (alpha - 1).
- `finite_zipf_exponent` (the one designed here): the sizes are read as the sorted counts of a multinomial sample of
  n rows over K categories with p_i ∝ i^-e. The counts of ranked categories are order statistics, so the
  likelihood of the observed ranked counts with the categories' identities unknown has no closed form; instead the
  statistic T (the conditional rank MLE: ranks whose size is >= `min_size`, the sizes' split among them given their
  total, as if rank = category) is calibrated by simulation. For each e on a grid, `n_sim` multinomial samples
  (common random numbers across e, so T is monotone in e draw by draw) give T's distribution; the point estimate
  is the e whose simulated median T equals the observed T, the interval the Neyman belt {e : T_obs within T's
  central `level` range at e} (exact coverage when the model holds, up to Monte Carlo error).

Pure: numpy/scipy only.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas.jsonable import jsonable
from tasks.stats.inputs import FitError, check_level, counts_array
from tasks.stats.zipf import fit_discrete_powerlaw, rank_frequency_slope

NAN = math.nan


@dataclass
class SizeExponent:
    """A size exponent e (sizes ∝ rank^-e) with its interval.

    Attributes
    ----------
    estimator : str
        The estimator's name (``envelope``, ``rank_slope``, ``powerlaw_mle``, ``finite_zipf``, ...).
    exponent : float
        The point estimate of e (NaN when it could not be measured; see ``note``).
    ci : list of float
        ``[lo, hi]`` at ``level``.
    k : int
        The cluster count the estimate rests on (0 for the envelope, which uses several).
    n_ranks : int
        The ranks (or sizes) that entered the fit.
    level : float
    choices : dict
        What the estimator chose from the data (e.g. the chosen k, the rank window).
    note : str
    """

    estimator: str
    exponent: float
    ci: list[float]
    k: int
    n_ranks: int
    level: float = 0.95
    choices: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def covers(self, value: float) -> bool:
        """Whether ``value`` lies inside the interval (False when the interval is undefined)."""
        lo, hi = self.ci
        return bool(np.isfinite(lo) and np.isfinite(hi) and lo <= value <= hi)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self)


def failed(estimator: str, k: int, level: float, note: str) -> SizeExponent:
    """The `SizeExponent` of an estimator that could not measure (NaN exponent and interval, `note` says why)."""
    return SizeExponent(estimator, NAN, [NAN, NAN], k, 0, level, {}, note)


def ranked_sizes(labels: Any) -> np.ndarray:
    """Sizes of the non-empty clusters of a labelling (any integer labels), sorted descending: (k',) int64."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return np.sort(counts)[::-1].astype(np.int64)


def size_envelope(sizes_by_k: Mapping[int, np.ndarray], n_tokens: int) -> np.ndarray:
    """For each rank r = 1..max k, the largest normalised size sizes[r-1] / n_tokens over the cluster counts that
    have an r-th cluster: (max k,) float64, non-increasing (the upper envelope of the rank-frequency curves)."""
    longest = max(len(s) for s in sizes_by_k.values())
    env = np.zeros(longest)
    for sizes in sizes_by_k.values():
        s = np.sort(np.asarray(sizes, dtype=np.float64))[::-1] / n_tokens
        env[:len(s)] = np.maximum(env[:len(s)], s)
    return env


def envelope_exponent(sizes_by_k: Mapping[int, np.ndarray], n_tokens: int, *, level: float = 0.95) -> SizeExponent:
    """The paper's statistic: minus the OLS slope of the size envelope over the clusterings (t-interval).

    Parameters
    ----------
    sizes_by_k : mapping k -> sizes (any order) of the clustering into k clusters.
    n_tokens : int, the rows clustered.
    level : float, confidence level.
    """
    try:
        fit = rank_frequency_slope(size_envelope(sizes_by_k, n_tokens), level=level)
    except FitError as e:
        return failed("envelope", 0, level, str(e))
    return SizeExponent("envelope", -fit.slope, [-fit.ci[1], -fit.ci[0]], 0, fit.n_points, level,
                        {"ks": sorted(int(k) for k in sizes_by_k)})


def rank_slope_exponent(sizes: Any, k: int, *, level: float = 0.95) -> SizeExponent:
    """Minus the OLS slope of log size on log rank over the non-empty clusters of one clustering into k."""
    try:
        fit = rank_frequency_slope(sizes, level=level)
    except FitError as e:
        return failed("rank_slope", k, level, str(e))
    return SizeExponent("rank_slope", -fit.slope, [-fit.ci[1], -fit.ci[0]], k, fit.n_points, level)


def mle_exponent(sizes: Any, k: int, *, level: float = 0.95) -> SizeExponent:
    """The discrete power-law MLE (xmin = 1, asymptotic interval) of the sizes' distribution, as e = 1/(alpha - 1).

    A rank law s_r ∝ r^-e means P(size >= x) ∝ x^(-1/e), i.e. alpha = 1 + 1/e; the interval of alpha is mapped
    through (alpha <= 1 maps to an unbounded e)."""
    sizes = counts_array(sizes, "sizes")
    try:
        fit = fit_discrete_powerlaw(sizes[sizes > 0], 1, level=level)
    except FitError as e:
        return failed("powerlaw_mle", k, level, str(e))

    def to_e(alpha: float) -> float:
        return 1.0 / (alpha - 1.0) if alpha > 1.0 else math.inf

    return SizeExponent("powerlaw_mle", to_e(fit.alpha), [to_e(fit.ci[1]), to_e(fit.ci[0])], k, fit.n, level,
                        {"alpha": fit.alpha})


# --------------------------------------------------------------------------------- the finite-K Zipf estimator
E_GRID = np.round(np.arange(0.3, 4.0001, 0.02), 4)  # the planted e values the belt is built on
T_GRID = np.round(np.arange(0.0, 6.0001, 0.005), 4)  # where the conditional rank MLE is searched


def _log_norms(max_rank: int) -> np.ndarray:
    """(max_rank, len(T_GRID)): log sum_{j <= r} j^-t for r = 1..max_rank (row r - 1)."""
    logj = np.log(np.arange(1, max_rank + 1, dtype=np.float64))
    return np.log(np.cumsum(np.exp(-np.outer(logj, T_GRID)), axis=0))


def rank_mle(sorted_sizes: np.ndarray, min_size: int, log_norms: np.ndarray) -> np.ndarray:
    """The conditional rank MLE T of each row of ranked sizes (rows sorted descending): over the ranks with size
    >= `min_size` (r of them), the t maximising sum_i s_i log(i^-t / sum_{j<=r} j^-t). NaN where r < 3.

    sorted_sizes : (m, K) or (K,) counts, each row descending. Returns (m,) or a scalar array."""
    s = np.atleast_2d(np.asarray(sorted_sizes, dtype=np.float64))
    keep = s >= min_size
    r = keep.sum(axis=1)
    w = np.where(keep, s, 0.0)
    logi = np.log(np.arange(1, s.shape[1] + 1, dtype=np.float64))
    a = w @ logi
    total = w.sum(axis=1)
    out = np.full(s.shape[0], NAN)
    ok = r >= 3
    if ok.any():
        ll = -np.outer(a[ok], T_GRID) - total[ok, None] * log_norms[r[ok] - 1]
        best = np.argmax(ll, axis=1)
        inner = np.clip(best, 1, len(T_GRID) - 2)  # a parabola through the best grid point and its neighbours
        rows = np.arange(len(best))
        y0, y1, y2 = ll[rows, inner - 1], ll[rows, inner], ll[rows, inner + 1]
        den = y0 - 2 * y1 + y2
        shift = np.where((best == inner) & (den < 0), 0.5 * (y0 - y2) / np.where(den < 0, den, -1.0), 0.0)
        out[ok] = T_GRID[inner] + np.clip(shift, -1, 1) * (T_GRID[1] - T_GRID[0])
    return out


def zipf_belt(n: int, n_categories: int, min_size: int, *, n_sim: int = 200, seed: int = 0,
              level: float = 0.95) -> dict[str, np.ndarray]:
    """The simulated distribution of T (`rank_mle`) at each e of `E_GRID`: n rows over `n_categories` categories,
    p_i ∝ i^-e, `n_sim` samples with common random numbers (the same sorted uniforms for every e).

    Returns {"e": E_GRID, "median": (G,), "lo": (G,), "hi": (G,)} (T's quantiles (1 -+ level)/2, NaN-aware)."""
    rng = np.random.default_rng(seed)
    u = np.sort(rng.random((n_sim, n)), axis=1)
    logi = np.log(np.arange(1, n_categories + 1, dtype=np.float64))
    p = np.exp(-np.outer(E_GRID, logi))
    cdf = np.cumsum(p, axis=1) / p.sum(axis=1, keepdims=True)
    cdf[:, -1] = 1.0
    norms = _log_norms(n_categories)
    t = np.empty((len(E_GRID), n_sim))
    for j in range(n_sim):
        pos = np.searchsorted(u[j], cdf.ravel(), side="right").reshape(cdf.shape)
        counts = np.diff(pos, axis=1, prepend=0)
        t[:, j] = rank_mle(-np.sort(-counts, axis=1), min_size, norms)
    q = (1.0 - level) / 2.0
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, med, hi = np.nanquantile(t, [q, 0.5, 1.0 - q], axis=1)
    return {"e": E_GRID, "median": med, "lo": lo, "hi": hi}


def _crossing(curve: np.ndarray, value: float) -> float:
    """The e of E_GRID where a (non-decreasing in e, NaN where undefined) curve reaches `value`, interpolated
    linearly; -inf / +inf when the value lies below / above the whole curve."""
    ok = np.isfinite(curve)
    e, c = E_GRID[ok], np.maximum.accumulate(curve[ok])
    if e.size == 0:
        return NAN
    if value < c[0]:
        return -math.inf
    if value > c[-1]:
        return math.inf
    i = int(np.searchsorted(c, value, side="left"))
    if i == 0 or c[i] == c[i - 1]:
        return float(e[i])
    return float(e[i - 1] + (value - c[i - 1]) / (c[i] - c[i - 1]) * (e[i] - e[i - 1]))


def finite_zipf_exponent(sizes: Any, *, n_categories: int | None = None, min_size: int = 10, n_sim: int = 200,
                         seed: int = 0, level: float = 0.95, k: int | None = None) -> SizeExponent:
    """Fit e from ranked cluster sizes read as a finite multinomial Zipf sample (see the module docstring).

    Parameters
    ----------
    sizes : array-like of non-negative integers, the cluster sizes (any order; zeros ignored). n = their sum.
    n_categories : K of the simulated multinomial (default: the number of non-empty clusters).
    min_size : ranks with at least this many rows enter the statistic (default 10: fixed by design, before any
        calibration; smaller clusters are the ones clustering splits, merges and misses).
    n_sim : simulated samples per e of the grid (E_GRID: 0.3 .. 4.0 by 0.02).
    seed : the simulation's seed (the result is a deterministic function of the sizes and the seed).
    level : the interval's confidence level.
    k : the cluster count reported (default: the number of non-empty clusters).

    Returns
    -------
    SizeExponent ``finite_zipf``; choices: n_categories, min_size, the observed statistic ``t_obs``. The interval
    may be open (±inf) when the observed statistic is beyond the belt's range.
    """
    level = check_level(level)
    s = counts_array(sizes, "sizes")
    s = np.sort(s[s > 0])[::-1].astype(np.int64)
    kk = int(len(s)) if k is None else int(k)
    K = int(n_categories if n_categories is not None else len(s))
    if K < len(s):
        raise FitError(f"n_categories = {K} is below the {len(s)} non-empty clusters")
    t_obs = float(rank_mle(s[None, :], min_size, _log_norms(len(s)))[0])
    choices = {"n_categories": K, "min_size": int(min_size), "t_obs": t_obs, "n_sim": int(n_sim)}
    r = int((s >= min_size).sum())
    if not np.isfinite(t_obs):
        out = failed("finite_zipf", kk, level, f"fewer than 3 clusters of >= {min_size} rows ({r})")
        out.choices = choices
        return out
    belt = zipf_belt(int(s.sum()), K, min_size, n_sim=n_sim, seed=seed, level=level)
    est = _crossing(belt["median"], t_obs)
    lo, hi = _crossing(belt["hi"], t_obs), _crossing(belt["lo"], t_obs)
    note = "" if np.isfinite(est) else "the observed statistic is outside the simulated range of e (0.3 .. 4)"
    return SizeExponent("finite_zipf", est, [lo, hi], kk, r, level, choices, note)
