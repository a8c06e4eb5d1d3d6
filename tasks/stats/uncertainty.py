"""Uncertainty of a Huber power-law fit (see `powerlaw`): the nonparametric bootstrap over data points and, for
large n, the asymptotic (sandwich) covariance of the M-estimator.

Which is used (``ci="auto"``): below ``ASYMPTOTIC_MIN_POINTS`` rows the bootstrap with *expanded percentile*
intervals: each refit's deviation from the full-data estimate (internal, log-coefficient scale) is scaled by
sqrt(n / (n - p)) before percentiles are taken. The pairs bootstrap's spread estimates the HC0 sandwich variance,
which is biased low by (n - p) / n; the factor is HC1's degrees-of-freedom correction (MacKinnon & White 1985), in
the spirit of Hesterberg's expanded percentile interval (2015). It matters at the sizes the studies fit (1.41 at
n = 6 with 3 parameters, 1.07 at n = 23, 1.01 at n = 200). Measured at n = 6-7 points (planted E + A x^-a, 5% noise,
200 replicates of 200 resamples): plain percentile 91%, BCa 86-87%, a studentised bootstrap (least-squares pivot)
77-83%, expanded percentile 96.5-97.5% coverage of a nominal 95% (see `tests/stats/test_coverage.py`). From
``ASYMPTOTIC_MIN_POINTS`` rows on, the sandwich: every refit would cost a pass over all rows (a bootstrap would take
minutes) and the normal approximation is good. ``"percentile"`` and ``"bca"`` stay available on request.

The bootstrap loop is written here rather than with ``scipy.stats.bootstrap``, which cannot do what this needs:
resamples that cannot identify the law (fewer distinct x than parameters) are counted as failed and left out (scipy
gives a NaN interval as soon as one replicate is NaN); every refit is warm-started from the full-data optimum; the
deviations are expanded on the internal scale; and the replicates are joint samples of all parameters, so any
function of them (``PowerLawFit.derived``, theory checks) gets an interval from the same resamples. The interval
formulas (percentile, BCa) are in `intervals`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats

from tasks.stats.huber import LogSumExpLaw, minimise
from tasks.stats.intervals import bca_ci, percentile_ci, sample_se

ASYMPTOTIC_MIN_POINTS = 20_000
NORMAL_DRAWS = 4000  # draws from the asymptotic normal, for intervals of derived values
_CACHE_MAX_POINTS = 32  # tiny data: identical resamples recur, so refits are cached by their multiset of rows

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def resolve_ci_method(ci: str, n_points: int) -> str:
    """"auto" -> "expanded" (n < ASYMPTOTIC_MIN_POINTS) or "asymptotic"; any other method as given."""
    if ci != "auto":
        return ci
    return "expanded" if n_points < ASYMPTOTIC_MIN_POINTS else "asymptotic"


def expansion(n_points: int, n_params: int) -> float:
    """sqrt(n / (n - p)): the HC1 degrees-of-freedom factor applied to bootstrap deviations ("expanded")."""
    return math.sqrt(n_points / (n_points - n_params)) if n_points > n_params else math.nan


class Identification:
    """Whether a subset of rows can identify the law: at least ``n_params`` distinct design points (x, or (N, D)
    pairs), and for a 2-D law at least 2 distinct values of each variable."""

    def __init__(self, logx: np.ndarray, n_params: int):
        self.n_params = n_params
        self.point_id = np.unique(logx, axis=0, return_inverse=True)[1].reshape(-1)
        self.column_ids = ([np.unique(logx[:, k], return_inverse=True)[1].reshape(-1) for k in range(logx.shape[1])]
                           if logx.shape[1] > 1 else [])

    def __call__(self, rows: np.ndarray) -> bool:
        if np.unique(self.point_id[rows]).size < self.n_params:
            return False
        return all(np.unique(ids[rows]).size >= 2 for ids in self.column_ids)


@dataclass
class Replicates:
    """Natural-unit parameter vectors of refits: ``samples`` (n_ok, p) of the bootstrap (expanded about the estimate
    when asked), ``failed`` resamples left out (not identified, or the refit did not converge); ``jackknife`` (n, p)
    leave-one-out refits (NaN rows where the refit failed), or None."""

    samples: np.ndarray
    failed: int
    jackknife: np.ndarray | None = None


def _refit(law: LogSumExpLaw, rows: np.ndarray, theta_hat: np.ndarray, bounds) -> np.ndarray | None:
    """Internal theta of the refit on ``rows``, warm-started at ``theta_hat``; None if it did not converge."""
    law.set_rows(rows)
    try:
        theta, f, conv = minimise(law, theta_hat, bounds)
    finally:
        law.set_rows(None)
    return theta if conv and math.isfinite(f) else None


def bootstrap(law: LogSumExpLaw, theta_hat: np.ndarray, bounds, identified: Identification, n_resamples: int,
              seed: int | None, progress: Progress | None = None, expand: float = 1.0) -> Replicates:
    """Nonparametric bootstrap over rows: ``n_resamples`` resamples (numpy ``default_rng(seed)``, one
    ``integers(0, n, n)`` draw each, so the stream is that of earlier versions), each refit warm-started from
    ``theta_hat``; resamples that are not identified are counted as failed without a refit. Each refit's deviation
    from ``theta_hat`` is multiplied by ``expand`` on the internal scale (log E, log-coefficients, exponents; 1 = the
    plain bootstrap) before mapping to natural units."""
    n = len(law.ly_all)
    rng = np.random.default_rng(seed)
    cache: dict[bytes, np.ndarray | None] = {}
    samples, failed = [], 0
    for b in range(int(n_resamples)):
        idx = rng.integers(0, n, size=n)
        if not identified(idx):
            failed += 1
        else:
            key = np.sort(idx).tobytes() if n <= _CACHE_MAX_POINTS else None
            theta = cache[key] if key in cache else _refit(law, idx, theta_hat, bounds)
            if key is not None:
                cache[key] = theta
            if theta is None:
                failed += 1
            else:
                samples.append(law.to_natural(theta_hat + expand * (theta - theta_hat)))
        if progress is not None:
            progress("bootstrap", b + 1, int(n_resamples))
    return Replicates(np.array(samples) if samples else np.empty((0, law.npar)), failed)


def jackknife(law: LogSumExpLaw, theta_hat: np.ndarray, bounds, identified: Identification) -> np.ndarray:
    """Leave-one-out refits, shape (n, p), natural units; NaN rows where the rest is not identified or no
    convergence."""
    n = len(law.ly_all)
    out = np.full((n, law.npar), np.nan)
    for i in range(n):
        rows = np.delete(np.arange(n), i)
        theta = _refit(law, rows, theta_hat, bounds) if identified(rows) else None
        if theta is not None:
            out[i] = law.to_natural(theta)
    return out


def bootstrap_intervals(reps: Replicates, estimate: np.ndarray, method: str, level: float
                        ) -> tuple[list[list[float]], list[float]]:
    """Per parameter column: the interval ("bca" with the jackknife, else percentile of the (expanded) samples) and
    the samples' SE."""
    cis, ses = [], []
    for j in range(len(estimate)):
        col = reps.samples[:, j] if reps.samples.size else np.empty(0)
        if method == "bca" and reps.jackknife is not None:
            cis.append(bca_ci(col, float(estimate[j]), reps.jackknife[:, j], level))
        else:
            cis.append(percentile_ci(col, level))
        ses.append(sample_se(col))
    return cis, ses


def _log_scale_map(law: LogSumExpLaw) -> np.ndarray:
    """Linear map theta -> q = [log E]? + [log A_k, s_k]: log A_k = c_k + s_k * ref_k (shape (p, p))."""
    o = 1 if law.offset else 0
    L = np.eye(law.npar)
    for k in range(law.K):
        L[o + 2 * k, o + 2 * k + 1] = law.ref[k]
    return L


@dataclass
class Asymptotic:
    """Sandwich covariance of theta (p, p) (NaN if the Hessian is not positive definite), the residuals in the
    Huber quadratic zone it rests on, intervals and SEs per natural parameter, and draws from the normal (natural
    units, (NORMAL_DRAWS, p)) for derived values."""

    cov: np.ndarray
    n_quadratic: int
    ci: list[list[float]]
    se: list[float]
    draws: np.ndarray


def asymptotic(law: LogSumExpLaw, theta_hat: np.ndarray, level: float, seed: int | None) -> Asymptotic:
    """Huber's sandwich H^-1 B H^-1 * n/(n-p) at the full-data optimum (see ``LogSumExpLaw.sandwich``); intervals
    are normal on the log scale for E and A (so they stay positive) and on the linear scale for exponents."""
    n, p = len(law.ly_all), law.npar
    H, B, n_quad = law.sandwich(theta_hat)
    nan = [[math.nan, math.nan]] * p, [math.nan] * p, np.empty((0, p))
    try:
        np.linalg.cholesky(H)
        Hinv = np.linalg.inv(H)
    except np.linalg.LinAlgError:
        return Asymptotic(np.full((p, p), np.nan), n_quad, *nan)
    cov = Hinv @ B @ Hinv * (n / max(n - p, 1))
    L = _log_scale_map(law)
    q, cov_q = L @ theta_hat, L @ cov @ L.T
    se_q = np.sqrt(np.clip(np.diag(cov_q), 0.0, None))
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    o = 1 if law.offset else 0
    is_log = np.array([j < o or (j - o) % 2 == 0 for j in range(p)])  # E and A_k on the log scale
    lo, hi = q - z * se_q, q + z * se_q
    value = np.where(is_log, np.exp(np.minimum(q, 700.0)), q)
    ci = [[float(np.exp(min(lo[j], 700.0))), float(np.exp(min(hi[j], 700.0)))] if is_log[j]
          else [float(lo[j]), float(hi[j])] for j in range(p)]
    se = [float(value[j] * se_q[j]) if is_log[j] else float(se_q[j]) for j in range(p)]  # delta method
    rng = np.random.default_rng(seed)
    dq = rng.multivariate_normal(q, cov_q, size=NORMAL_DRAWS, method="eigh")
    draws = np.where(is_log[None, :], np.exp(np.minimum(dq, 700.0)), dq)
    return Asymptotic(cov, n_quad, ci, se, draws)
