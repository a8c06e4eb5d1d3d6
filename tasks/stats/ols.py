"""The paper's fitting method: ordinary least squares on log-log data, with t-intervals on the slope."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from schemas.jsonable import jsonable
from tasks.stats.inputs import FitError, as_1d, check_level, same_length


@dataclass
class LogLogFit:
    """Ordinary least squares of log(y - offset) on log(x): log y = intercept + slope * log x.

    ``slope`` keeps its sign (a decreasing law has a negative slope; its exponent is ``-slope``).
    ``ci``/``se``: the slope's two-sided t-interval at ``level`` and standard error (dof =
    n_points - 2); ``intercept_ci``/``intercept_se`` likewise (natural log units). ``r2`` in
    log space. ``xmin``/``xmax``: the x window used (inclusive; None = unbounded).
    """

    slope: float
    intercept: float
    ci: list[float]
    se: float
    intercept_ci: list[float]
    intercept_se: float
    r2: float
    n_points: int
    level: float = 0.95
    xmin: float | None = None
    xmax: float | None = None
    offset: float = 0.0
    method: str = "ols-loglog"

    @property
    def exponent(self) -> float:
        """``-slope``: the exponent a of y ∝ x^-a."""
        return -self.slope

    def predict(self, x: Any) -> np.ndarray:
        """offset + exp(intercept) * x**slope."""
        return self.offset + np.exp(self.intercept) * np.asarray(x, dtype=float) ** self.slope

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self)


def ols_loglog(lx: np.ndarray, ly: np.ndarray, level: float) -> tuple[float, float, float, float, float, list, list]:
    """OLS of ly on lx (scipy.stats.linregress): slope, intercept, their standard errors, R^2 and the t-intervals
    of slope and intercept at `level` (dof n - 2)."""
    r = stats.linregress(lx, ly)
    slope, intercept = float(r.slope), float(r.intercept)
    se, se_i = float(r.stderr), float(r.intercept_stderr)
    r2 = float(r.rvalue) ** 2 if np.isfinite(r.rvalue) else 1.0
    t = float(stats.t.ppf(0.5 + level / 2.0, len(lx) - 2))
    return slope, intercept, se, se_i, r2, [slope - t * se, slope + t * se], [intercept - t * se_i, intercept + t * se_i]


def fit_loglog_ols(
    x: Any,
    y: Any,
    xmin: float | None = None,
    xmax: float | None = None,
    *,
    offset: float = 0.0,
    level: float = 0.95,
    names: tuple[str, str] = ("x", "y"),
) -> LogLogFit:
    """The paper's method: OLS of log(y - offset) on log(x) over ``xmin <= x <= xmax``.

    Parameters
    ----------
    x, y : array-like, shape (n,); x > 0 and y - offset > 0 inside the window, all finite.
    xmin, xmax : inclusive x window (None = unbounded).
    offset : a known E subtracted from y before logging (default 0).
    level : confidence level of the t-interval on the slope (default 0.95).

    Returns
    -------
    LogLogFit (slope, intercept, ci, se, r2, n_points, ...). Needs >= 3 distinct x in the window.
    """
    level = check_level(level)
    xn, yn = names
    x = as_1d(x, xn)
    y = as_1d(y, yn, positive=False)
    same_length(**{xn: x, yn: y})
    if xmin is not None and xmax is not None and xmin > xmax:
        raise FitError(f"xmin ({xmin}) must be <= xmax ({xmax})")
    keep = np.ones(len(x), dtype=bool)
    if xmin is not None:
        keep &= x >= xmin
    if xmax is not None:
        keep &= x <= xmax
    rows = np.flatnonzero(keep)
    yo = y[rows] - float(offset)
    bad = np.flatnonzero(yo <= 0)
    if bad.size:
        i = int(rows[bad[0]])
        what = f"{yn} - offset ({offset})" if offset else yn
        raise FitError(f"{what} contains non-positive value {y[i] - offset} at row {i}")
    xs = x[rows]
    k = len(np.unique(xs))
    if k < 3:
        raise FitError(
            f"too few points for a log-log OLS fit: need at least 3 distinct {xn} values in "
            f"[{xmin}, {xmax}], got {k}"
        )
    slope, icpt, se, se_i, r2, ci, ci_i = ols_loglog(np.log(xs), np.log(yo), level)
    return LogLogFit(slope, icpt, ci, se, ci_i, se_i, r2, len(rows), level,
                     None if xmin is None else float(xmin), None if xmax is None else float(xmax), float(offset))
