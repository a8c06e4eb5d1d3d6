"""Diagnostics of a power-law fit: warnings that its numbers should not be read as a confident scaling law."""
from __future__ import annotations

import numpy as np
from scipy import stats

from tasks.stats.huber import EXP_BOUNDS

TREND_MAX_ROWS = 20_000  # the Spearman trend test runs on a fixed random subsample of larger tables


def diagnose(logx: np.ndarray, y: np.ndarray, theta: np.ndarray, bounds, params: dict[str, float],
             names: tuple[str, ...], offset: bool) -> dict[str, str]:
    """Warnings that the numbers should not be read as a confident scaling law, by code:
    ``not-decreasing`` (y rises with x: Spearman rho >= 0, or a fitted exponent <= 0), ``no-trend`` (no significant
    decrease: one-sided Spearman p > 0.05; on TREND_MAX_ROWS random rows of larger tables), ``at-bound`` (an exponent
    at EXP_BOUNDS or E at its upper bound: the optimum is on the box, its interval is not meaningful)."""
    warn: dict[str, str] = {}
    yn = names[-1]
    exps = [k for k in ("a", "b") if k in params]
    rows = slice(None)
    if len(y) > TREND_MAX_ROWS:  # ranking a million rows costs seconds; the trend test needs far fewer
        rows = np.random.default_rng(0).choice(len(y), TREND_MAX_ROWS, replace=False)
    for k, xname in zip(range(logx.shape[1]), names[:-1]):
        res = stats.spearmanr(logx[rows, k], y[rows], alternative="less")
        rho, pval = float(res.statistic), float(res.pvalue)
        if not rho < 0:
            warn["not-decreasing"] = (f"{yn} does not decrease with {xname} (Spearman rho = {rho:+.2f}): a decreasing "
                                      "power law does not describe these data")
        elif pval > 0.05 and "no-trend" not in warn:
            warn["no-trend"] = (f"no significant decrease of {yn} with {xname} (Spearman rho = {rho:+.2f}, one-sided "
                                f"p = {pval:.2g}): the exponent is not determined by these data")
    negative = [f"{k} = {params[k]:.3g}" for k in exps if params[k] <= 0]
    if negative and "not-decreasing" not in warn:
        warn["not-decreasing"] = f"fitted exponent {', '.join(negative)} <= 0: {yn} does not fall as a power law"
    o = 1 if offset else 0
    at = [k for j, k in zip(range(o + 1, len(theta), 2), exps) if min(abs(theta[j] - b) for b in EXP_BOUNDS) < 1e-6]
    if offset and abs(theta[0] - bounds[0][1]) < 1e-6:
        at.append("E")
    if at:
        warn["at-bound"] = (f"{', '.join(at)} at the edge of its allowed range: the data do not determine it "
                            "(no curvature to fit); its interval is not meaningful")
    return warn
