"""Scaling-law fits with uncertainties: the numerical core every study of the project uses.

Plain functions over numpy arrays (no Prefect; of the project only `schemas.jsonable` and the other modules of
`tasks.stats`), so each is testable alone.

Laws
----
1-D:  L(x)    = E + A * x**-a                   (``offset=False`` fixes E = 0)
2-D:  L(N, D) = E + A / N**a + B / D**b         (the Chinchilla form)

Method (Hoffmann et al. 2022, Approach 3, as replicated by Besiroglu et al. 2024): every
coefficient is fitted in log space (E = exp(e), A = exp(a0), B = exp(b0)); the predicted
log-loss is the logsumexp of the log terms; the objective is the Huber loss (``huber_delta``,
default 1e-3) of ``log L_pred - log L_obs``, **summed** over points (a mean makes the objective
tiny and L-BFGS stops early); minimised with L-BFGS-B (analytic gradient, tight tolerances)
from a grid of initialisations (screened, the best few run to convergence), the best one kept.

Uncertainty (``ci``, see `uncertainty`): below 20,000 points the nonparametric bootstrap over
points with expanded percentile intervals (refits' deviations scaled by sqrt(n/(n-p)), the
small-sample correction that brings coverage to nominal at the studies' 6-7 points); from
20,000 points the asymptotic sandwich covariance of the M-estimator. Bootstrap refits are
warm-started from the full-data optimum; resamples with fewer distinct x than the law has
parameters are counted as failed and left out. Every parameter gets an interval and a standard error and, through
:meth:`PowerLawFit.derived`, so does any function of the parameters. ``warnings`` flag data a
decreasing power law does not describe (rising or trendless loss, a parameter at its bound);
constant loss is refused.

Conventions: exponents are reported positive for decreasing laws (``a`` in ``A x^-a``); OLS
slopes keep their sign (a Zipf rank-frequency slope is negative). ``level`` is the two-sided
confidence level of every interval (default 0.95). Rows in error messages are 0-based indices
into the arrays passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from schemas.jsonable import jsonable
from tasks.stats.diagnostics import diagnose
from tasks.stats.huber import EXP_BOUNDS, LogSumExpLaw, multistart, single_threaded_blas
from tasks.stats.inputs import FitError, as_1d, check_level, same_length
from tasks.stats.intervals import bca_ci, percentile_ci, sample_se
from tasks.stats.uncertainty import (Asymptotic, Identification, Progress, asymptotic, bootstrap, bootstrap_intervals,
                                     expansion, jackknife, resolve_ci_method)


@dataclass
class DerivedValue:
    """A function of fitted parameters with its uncertainty.

    ``value``: the function at the full-data fit; ``ci``: interval [lo, hi] at ``level`` by the
    fit's ``ci_method`` (percentile over the (expanded) bootstrap refits or BCa; percentile over
    draws from the asymptotic normal); ``se``: the samples' standard deviation; ``samples``: shape (m,), one
    value per bootstrap refit or normal draw (empty without uncertainty).
    """

    value: float
    ci: list[float]
    se: float
    level: float
    samples: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self, exclude={"samples"})


@dataclass
class PowerLawFit:
    """Result of :func:`fit_power_law` (``law="1d"``) or :func:`fit_chinchilla` (``law="2d"``).

    Attributes
    ----------
    params : {name: value}; names ``E``, ``A``, ``a`` (and ``B``, ``b`` for 2-D), natural units
        (E and A, B in the units of y; exponents dimensionless).
    ci : {name: [lo, hi]} interval at ``level`` by ``ci_method`` ([nan, nan] without
        uncertainty, ``n_bootstrap=0``; [0, 0] for E when ``offset=False``).
    se : {name: value} bootstrap (or asymptotic, delta-method) standard error (0 for a fixed E).
    n_points : number of data points used.
    method : ``"huber-lbfgs-bootstrap"``, ``"huber-lbfgs-sandwich"`` or ``"huber-lbfgs"`` (no CIs).
    ci_method : ``"expanded"``, ``"percentile"``, ``"bca"``, ``"asymptotic"`` or ``"none"``.
    converged : whether the best full-data L-BFGS run converged.
    loss : summed Huber loss of log residuals at the optimum.
    law : ``"1d"`` or ``"2d"``.
    bootstrap_samples : array (m, n_params), columns in ``param_names`` order: one row per
        successful bootstrap refit (``"expanded"``: its deviation from the estimate scaled by
        sqrt(n/(n-p)) on the internal scale), or (``"asymptotic"``) per draw from the asymptotic
        normal. Not serialised by :meth:`to_dict`.
    jackknife_samples : array (n_points, n_params) of leave-one-out refits (NaN rows where one
        failed), for BCa intervals of derived values; None otherwise.
    warnings : {code: message}; codes ``not-decreasing``, ``no-trend``, ``at-bound`` (see
        `diagnostics`), ``few-quadratic``, ``no-interval`` (asymptotic intervals not to be trusted).
    """

    params: dict[str, float]
    ci: dict[str, list[float]]
    se: dict[str, float]
    n_points: int
    method: str
    converged: bool
    loss: float
    law: str
    offset: bool = True
    level: float = 0.95
    huber_delta: float = 1e-3
    n_bootstrap: int = 0
    n_bootstrap_failed: int = 0
    seed: int | None = None
    param_names: tuple[str, ...] = ()
    bootstrap_samples: np.ndarray = field(repr=False, default_factory=lambda: np.empty((0, 0)))
    ci_method: str = "none"
    warnings: dict[str, str] = field(default_factory=dict)
    jackknife_samples: np.ndarray | None = field(repr=False, default=None)

    def predict(self, x: Any, d: Any = None) -> np.ndarray:
        """Predicted loss. 1-D: ``predict(x)``; 2-D: ``predict(n, d)`` (broadcasting arrays)."""
        p = self.params
        x = np.asarray(x, dtype=float)
        if self.law == "1d":
            return p["E"] + p["A"] * x ** (-p["a"])
        if d is None:
            raise FitError("a 2-D law needs both N and D: predict(n, d)")
        d = np.asarray(d, dtype=float)
        return p["E"] + p["A"] * x ** (-p["a"]) + p["B"] * d ** (-p["b"])

    def derived(self, fn: Callable[[dict[str, float]], float], level: float | None = None) -> DerivedValue:
        """Value and CI/SE of ``fn(params)`` from the same joint samples as the parameters' own intervals, e.g.
        ``fit.derived(lambda p: p["a"]/(p["a"]+1))``. ``fn`` receives a dict of floats with the keys of ``params``.
        """
        level = self.level if level is None else check_level(level)
        value = float(fn(dict(self.params)))
        if self.bootstrap_samples.size == 0:
            return DerivedValue(value, [math.nan, math.nan], math.nan, level, np.empty(0))
        vals = self._apply(fn, self.bootstrap_samples)
        if self.ci_method == "bca" and self.jackknife_samples is not None:
            ci = bca_ci(vals, value, self._apply(fn, self.jackknife_samples), level)
        else:
            ci = percentile_ci(vals, level)
        return DerivedValue(value, ci, sample_se(vals), level, vals)

    def _apply(self, fn: Callable[[dict[str, float]], float], rows: np.ndarray) -> np.ndarray:
        return np.array([fn(dict(zip(self.param_names, map(float, row)))) if np.all(np.isfinite(row)) else math.nan
                         for row in rows], dtype=float)

    def samples_of(self, name: str) -> np.ndarray:
        """Bootstrap samples of one parameter, shape (n_ok,) (empty without bootstrap)."""
        if self.bootstrap_samples.size == 0:
            return np.empty(0)
        return self.bootstrap_samples[:, self.param_names.index(name)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (floats, lists; NaN -> None); parameter names and resamples left out."""
        return jsonable(self, exclude={"param_names", "bootstrap_samples", "jackknife_samples"})


# ------------------------------------------------------------------------------------------ the fit, stage by stage
CI_METHODS = ("auto", "expanded", "percentile", "bca", "asymptotic")
MIN_QUADRATIC_PER_PARAM = 20  # residuals within huber_delta per parameter below which asymptotic CIs are flagged


def _bounds(law: LogSumExpLaw, logy: np.ndarray) -> list[tuple[float | None, float | None]]:
    """Box bounds of theta: log E from ~1e-13 * min(y) to ~7 * max(y); coefficients free; exponents EXP_BOUNDS."""
    bounds: list[tuple[float | None, float | None]] = []
    if law.offset:
        bounds.append((float(logy.min()) - 30.0, float(logy.max()) + 2.0))
    for _ in range(law.K):
        bounds += [(None, None), EXP_BOUNDS]
    return bounds


@dataclass
class _Uncertainty:
    """Intervals and SEs per free parameter (internal order of ``LogSumExpLaw.to_natural``), joint samples (m, p),
    jackknife rows (n, p) or None, failed resamples."""

    method: str
    ci: list[list[float]]
    se: list[float]
    samples: np.ndarray
    jackknife: np.ndarray | None = None
    failed: int = 0
    warnings: dict[str, str] = field(default_factory=dict)

    def with_fixed_e(self) -> "_Uncertainty":
        """The same with E = 0 prepended as a fixed parameter (interval [0, 0], SE 0), for a law without offset."""
        def col0(rows):
            return None if rows is None else np.column_stack([np.zeros(len(rows)), rows])
        return _Uncertainty(self.method, [[0.0, 0.0], *self.ci], [0.0, *self.se], col0(self.samples),
                            col0(self.jackknife), self.failed, self.warnings)


def _bootstrap_uncertainty(law: LogSumExpLaw, logx: np.ndarray, bounds, theta: np.ndarray, method: str,
                           n_bootstrap: int, level: float, seed: int | None, progress: Progress | None
                           ) -> _Uncertainty:
    """Bootstrap refits (expanded by sqrt(n/(n-p)) for "expanded"; with the jackknife for "bca") and their
    intervals."""
    identified = Identification(logx, law.npar)
    expand = expansion(len(law.ly_all), law.npar) if method == "expanded" else 1.0
    reps = bootstrap(law, theta, bounds, identified, n_bootstrap, seed, progress, expand)
    if method == "bca":
        reps.jackknife = jackknife(law, theta, bounds, identified)
    cis, ses = bootstrap_intervals(reps, law.to_natural(theta), method, level)
    return _Uncertainty(method, cis, ses, reps.samples, reps.jackknife, reps.failed)


def _asymptotic_warnings(asy: Asymptotic, n_params: int) -> dict[str, str]:
    """The sandwich's Hessian rests on the residuals inside the Huber quadratic zone: too few, or a Hessian that is
    not positive definite, and its intervals are not to be trusted."""
    if not np.all(np.isfinite(asy.cov)):
        return {"no-interval": "the Hessian at the optimum is not positive definite: no asymptotic intervals"}
    if asy.n_quadratic < MIN_QUADRATIC_PER_PARAM * n_params:
        return {"few-quadratic": f"only {asy.n_quadratic} residuals lie within huber_delta, on which the asymptotic "
                                 "intervals rest: widen --huber-delta or use the bootstrap (ci='expanded')"}
    return {}


def _uncertainty(law: LogSumExpLaw, logx: np.ndarray, bounds, theta: np.ndarray, n_bootstrap: int, ci: str,
                 level: float, seed: int | None, progress: Progress | None) -> _Uncertainty:
    """Uncertainty of every parameter in output order (E first, fixed at 0 without offset) by the method ``ci``
    resolves to for these data; NaN intervals when ``n_bootstrap`` is 0."""
    p = law.npar
    if n_bootstrap <= 0:
        out = _Uncertainty("none", [[math.nan, math.nan]] * p, [math.nan] * p, np.empty((0, p)))
    else:
        method = resolve_ci_method(ci, len(law.ly_all))
        if method == "asymptotic":
            asy = asymptotic(law, theta, level, seed)
            out = _Uncertainty(method, asy.ci, asy.se, asy.draws, warnings=_asymptotic_warnings(asy, p))
        else:
            out = _bootstrap_uncertainty(law, logx, bounds, theta, method, n_bootstrap, level, seed, progress)
    return out if law.offset else out.with_fixed_e()


def _fit_lse(
    logx: np.ndarray,
    y: np.ndarray,
    *,
    offset: bool,
    names: tuple[str, ...],
    law_name: str,
    huber_delta: float,
    n_bootstrap: int,
    level: float,
    seed: int | None,
    inits: list[np.ndarray],
    ci: str,
    var_names: tuple[str, ...],
    progress: Progress | None,
) -> PowerLawFit:
    """The fit, stage by stage: bounds, screened multistart, natural units, uncertainty, diagnostics."""
    with single_threaded_blas():
        logy = np.log(y)
        law = LogSumExpLaw(logx, logy, offset, huber_delta)
        bounds = _bounds(law, logy)
        best = multistart(law, inits, bounds, law_name, huber_delta, progress)
        natural = law.to_natural(best.theta)
        params = dict(zip(names, map(float, natural if offset else [0.0, *natural])))
        unc = _uncertainty(law, logx, bounds, best.theta, n_bootstrap, ci, level, seed, progress)
        warnings = {**diagnose(logx, y, best.theta, bounds, params, var_names, offset), **unc.warnings}
    kind = {"none": "huber-lbfgs", "asymptotic": "huber-lbfgs-sandwich"}.get(unc.method, "huber-lbfgs-bootstrap")
    return PowerLawFit(
        params=params,
        ci={k: [float(v) for v in c] for k, c in zip(names, unc.ci)},
        se={k: float(v) for k, v in zip(names, unc.se)},
        n_points=len(y),
        method=kind,
        converged=bool(best.converged),
        loss=float(best.f * huber_delta),
        law=law_name,
        offset=offset,
        level=level,
        huber_delta=float(huber_delta),
        n_bootstrap=int(n_bootstrap) if unc.method in ("expanded", "percentile", "bca") else 0,
        n_bootstrap_failed=unc.failed,
        seed=seed,
        param_names=tuple(names),
        bootstrap_samples=unc.samples,
        ci_method=unc.method,
        warnings=warnings,
        jackknife_samples=unc.jackknife,
    )


_E_FRACTIONS = (0.0, 0.3, 0.6, 0.8, 0.9, 0.97)


def _ols_exponent(lx: np.ndarray, ly: np.ndarray) -> tuple[float, float]:
    """Slope, intercept of ly = intercept + slope * lx (least squares)."""
    if np.ptp(lx) == 0:
        return 0.0, float(ly.mean())
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(slope), float(intercept)


def _check_fit_options(y: np.ndarray, yn: str, huber_delta: float, ci: str) -> None:
    """Refuse constant y (no law to fit: every exponent explains it equally) and bad options, before any work."""
    if huber_delta <= 0:
        raise FitError(f"huber_delta must be > 0; got {huber_delta}")
    if ci not in CI_METHODS:
        raise FitError(f"ci must be one of {', '.join(CI_METHODS)}; got {ci!r}")
    if np.all(y == y[0]):
        raise FitError(f"{yn} is constant (all {len(y)} values are {y[0]:g}): there is no scaling law to fit")


def fit_power_law(
    x: Any,
    y: Any,
    *,
    offset: bool = True,
    huber_delta: float = 1e-3,
    n_bootstrap: int = 200,
    level: float = 0.95,
    seed: int | None = 0,
    names: tuple[str, str] = ("x", "y"),
    ci: str = "auto",
    progress: Progress | None = None,
) -> PowerLawFit:
    """Fit L(x) = E + A * x**-a by Huber loss on log residuals, L-BFGS from a grid, with CIs.

    Parameters
    ----------
    x, y : array-like, shape (n,)
        Positive, finite. ``x`` e.g. parameters, tokens or steps; ``y`` the loss (any units;
        E and A come back in the units of y).
    offset : fit E >= 0 (default). ``False`` fixes E = 0 (reported as 0 with CI [0, 0]).
    huber_delta : Huber threshold on log residuals (default 1e-3, Hoffmann et al.).
    n_bootstrap : number of nonparametric bootstrap resamples of the points (default 200;
        0 skips uncertainty and gives NaN CIs; unused by the asymptotic method).
    level : two-sided confidence level of the CIs (default 0.95).
    seed : seed of the bootstrap resampling (and of the asymptotic normal's draws; default 0).
    names : names of (x, y) used in error messages and warnings (e.g. the CSV columns).
    ci : ``"auto"`` (default: expanded-percentile bootstrap below 20,000 points, asymptotic
        sandwich from there), ``"expanded"``, ``"percentile"``, ``"bca"`` or ``"asymptotic"``.
    progress : optional ``progress(stage, done, total)`` callback, called after every
        initialisation (stage ``"multistart"``) and bootstrap resample (``"bootstrap"``).

    Returns
    -------
    PowerLawFit with ``params`` {"E", "A", "a"}, ``law="1d"``; ``warnings`` when the data do
    not look like a decreasing power law.

    Raises
    ------
    FitError on non-finite or non-positive input, mismatched lengths, fewer than 4 distinct
    x values (3 with ``offset=False``), constant y, or when no initialisation converged.
    """
    level = check_level(level)
    xn, yn = names
    x = as_1d(x, xn)
    y = as_1d(y, yn)
    same_length(**{xn: x, yn: y})
    need = 4 if offset else 3
    n_distinct = len(np.unique(x))
    if n_distinct < need:
        raise FitError(
            f"too few points for the 1-D law {'with' if offset else 'without'} offset E: need at least "
            f"{need} distinct {xn} values, got {n_distinct} (n_points={len(x)})"
        )
    _check_fit_options(y, yn, huber_delta, ci)

    lx = np.log(x)
    ymin = float(y.min())
    inits = []
    for frac in (_E_FRACTIONS if offset else (0.0,)):
        E = frac * ymin
        resid = np.log(np.maximum(y - E, 1e-12 * ymin))
        slope, icpt = _ols_exponent(lx, resid)
        # the OLS guess, plus a spread of exponents with the coefficient matched at the centre
        cands = [-slope] + [0.05, 0.2, 0.5, 1.0, 2.0]
        for a0 in cands:
            a0 = float(np.clip(a0, 1e-3, 5.0))
            logA = float(np.mean(resid + a0 * lx))
            nat = [max(E, 1e-6 * ymin), math.exp(min(logA, 700.0)), a0] if offset else [math.exp(min(logA, 700.0)), a0]
            inits.append(np.array(nat))
    return _fit_lse(
        lx[:, None], y, offset=offset, names=("E", "A", "a"), law_name="1d", huber_delta=huber_delta,
        n_bootstrap=n_bootstrap, level=level, seed=seed, inits=inits, ci=ci, var_names=(xn, yn), progress=progress,
    )


def fit_chinchilla(
    n: Any,
    d: Any,
    y: Any,
    *,
    offset: bool = True,
    huber_delta: float = 1e-3,
    n_bootstrap: int = 200,
    level: float = 0.95,
    seed: int | None = 0,
    names: tuple[str, str, str] = ("N", "D", "y"),
    ci: str = "auto",
    progress: Progress | None = None,
) -> PowerLawFit:
    """Fit L(N, D) = E + A / N**a + B / D**b (Hoffmann et al. Approach 3), with CIs.

    Parameters
    ----------
    n, d, y : array-like, shape (n_points,)
        Positive, finite: N (e.g. parameters), D (e.g. tokens or dataset size), the loss.
    offset, huber_delta, n_bootstrap, level, seed, ci, progress : as in :func:`fit_power_law`.
    names : names of (n, d, y) used in error messages and warnings.

    Returns
    -------
    PowerLawFit with ``params`` {"E", "A", "a", "B", "b"}, ``law="2d"``; ``predict(n, d)``.

    Raises
    ------
    FitError on bad input, fewer than 6 points or fewer than 2 distinct N or D values, constant
    y, or when no initialisation converged.
    """
    level = check_level(level)
    nn, dn, yn = names
    N = as_1d(n, nn)
    D = as_1d(d, dn)
    y = as_1d(y, yn)
    npts = same_length(**{nn: N, dn: D, yn: y})
    if npts < 6:
        raise FitError(f"too few points for the 2-D law: need at least 6 ({nn}, {dn}, {yn}) points, got {npts}")
    for arr, nm in ((N, nn), (D, dn)):
        k = len(np.unique(arr))
        if k < 2:
            raise FitError(f"too few points for the 2-D law: need at least 2 distinct {nm} values, got {k}")
    _check_fit_options(y, yn, huber_delta, ci)

    lN, lD = np.log(N), np.log(D)
    ymin = float(y.min())
    ygeo = float(np.exp(np.mean(np.log(y))))
    inits = []
    for frac in ((0.0, 0.5, 0.8, 0.95) if offset else (0.0,)):
        E = frac * ymin
        rest = max(ygeo - E, 1e-6 * ygeo)
        for a0 in (0.1, 0.3, 0.6, 1.2):
            for b0 in (0.1, 0.3, 0.6, 1.2):
                for share in (0.25, 0.5, 0.75):
                    # coefficients chosen so the two terms split `rest` at the geometric centre
                    logA = math.log(share * rest) + a0 * lN.mean()
                    logB = math.log((1 - share) * rest) + b0 * lD.mean()
                    nat = [math.exp(min(logA, 700.0)), a0, math.exp(min(logB, 700.0)), b0]
                    inits.append(np.array(([max(E, 1e-6 * ymin)] if offset else []) + nat))
    return _fit_lse(
        np.column_stack([lN, lD]), y, offset=offset, names=("E", "A", "a", "B", "b"), law_name="2d",
        huber_delta=huber_delta, n_bootstrap=n_bootstrap, level=level, seed=seed, inits=inits, ci=ci,
        var_names=(nn, dn, yn), progress=progress,
    )
