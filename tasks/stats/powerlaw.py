"""Scaling-law fits with uncertainties: the numerical core every study of the project uses.

Plain functions over numpy arrays (no Prefect, no project imports), so each is testable alone.

Laws
----
1-D:  L(x)    = E + A * x**-a                   (``offset=False`` fixes E = 0)
2-D:  L(N, D) = E + A / N**a + B / D**b         (the Chinchilla form)

Method (Hoffmann et al. 2022, Approach 3, as replicated by Besiroglu et al. 2024): every
coefficient is fitted in log space (E = exp(e), A = exp(a0), B = exp(b0)); the predicted
log-loss is the logsumexp of the log terms; the objective is the Huber loss (``huber_delta``,
default 1e-3) of ``log L_pred - log L_obs``, **summed** over points (a mean makes the objective
tiny and L-BFGS stops early); minimised with L-BFGS-B (analytic gradient, tight tolerances)
from a grid of initialisations, the best one kept. Uncertainty: nonparametric bootstrap over
data points (each refit warm-started from the full-data optimum), percentile confidence
intervals and bootstrap standard errors for every parameter and, through
:meth:`PowerLawFit.derived`, for any function of the parameters.

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
from tasks.stats.huber import EXP_BOUNDS, LogSumExpLaw, minimise, single_threaded_blas
from tasks.stats.inputs import FitError, as_1d, check_level, same_length
from tasks.stats.intervals import percentile_ci, sample_se


@dataclass
class DerivedValue:
    """A function of fitted parameters with its bootstrap uncertainty.

    ``value``: the function at the full-data fit; ``ci``: percentile interval [lo, hi] of the
    bootstrap distribution at ``level``; ``se``: its standard deviation; ``samples``: shape
    (n_ok,), one value per successful bootstrap refit (empty without bootstrap).
    """

    value: float
    ci: list[float]
    se: float
    level: float
    samples: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"value": self.value, "ci": self.ci, "se": self.se, "level": self.level})


@dataclass
class PowerLawFit:
    """Result of :func:`fit_power_law` (``law="1d"``) or :func:`fit_chinchilla` (``law="2d"``).

    Attributes
    ----------
    params : {name: value}; names ``E``, ``A``, ``a`` (and ``B``, ``b`` for 2-D), natural units
        (E and A, B in the units of y; exponents dimensionless).
    ci : {name: [lo, hi]} bootstrap percentile interval at ``level`` ([nan, nan] without
        bootstrap; [0, 0] for E when ``offset=False``).
    se : {name: value} bootstrap standard error (0 for a fixed E).
    n_points : number of data points used.
    method : e.g. ``"huber-lbfgs-bootstrap"``.
    converged : whether the best full-data L-BFGS run converged.
    loss : summed Huber loss of log residuals at the optimum.
    law : ``"1d"`` or ``"2d"``.
    bootstrap_samples : array (n_ok, n_params), columns in ``param_names`` order, one row per
        successful bootstrap refit. Not serialised by :meth:`to_dict`.
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
        """Value and bootstrap CI/SE of ``fn(params)``, e.g. ``fit.derived(lambda p: p["a"]/(p["a"]+1))``.

        ``fn`` receives a dict of floats with the keys of ``params``.
        """
        level = self.level if level is None else check_level(level)
        value = float(fn(dict(self.params)))
        samples = self.bootstrap_samples
        if samples.size == 0:
            return DerivedValue(value, [math.nan, math.nan], math.nan, level, np.empty(0))
        vals = np.array([fn(dict(zip(self.param_names, map(float, row)))) for row in samples], dtype=float)
        return DerivedValue(value, percentile_ci(vals, level), sample_se(vals), level, vals)

    def samples_of(self, name: str) -> np.ndarray:
        """Bootstrap samples of one parameter, shape (n_ok,) (empty without bootstrap)."""
        if self.bootstrap_samples.size == 0:
            return np.empty(0)
        return self.bootstrap_samples[:, self.param_names.index(name)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (floats, lists; NaN -> None); bootstrap samples left out."""
        return jsonable({
            "params": self.params,
            "ci": self.ci,
            "se": self.se,
            "n_points": int(self.n_points),
            "method": self.method,
            "converged": bool(self.converged),
            "loss": self.loss,
            "law": self.law,
            "offset": bool(self.offset),
            "level": float(self.level),
            "huber_delta": float(self.huber_delta),
            "n_bootstrap": int(self.n_bootstrap),
            "n_bootstrap_failed": int(self.n_bootstrap_failed),
            "seed": self.seed,
        })



def _fit_lse(*args: Any, **kwargs: Any) -> PowerLawFit:
    with single_threaded_blas():
        return _fit_lse_body(*args, **kwargs)


def _fit_lse_body(
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
) -> PowerLawFit:
    n = len(y)
    logy = np.log(y)
    law = LogSumExpLaw(logx, logy, offset, huber_delta)
    ly_min, ly_max = float(logy.min()), float(logy.max())
    bounds = []
    if offset:
        bounds.append((ly_min - 30.0, ly_max + 2.0))  # E from ~1e-13 * min(y) to ~7 * max(y)
    for _ in range(law.K):
        bounds += [(None, None), EXP_BOUNDS]

    best_theta, best_f, any_conv, best_conv = None, math.inf, False, False
    for nat0 in inits:
        theta0 = law.from_natural(nat0)
        theta0 = np.array([np.clip(t, b[0] if b[0] is not None else -np.inf, b[1] if b[1] is not None else np.inf)
                           for t, b in zip(theta0, bounds)])
        theta, f, conv = minimise(law, theta0, bounds)
        any_conv |= conv
        # prefer converged runs; among them the lowest objective
        if (conv and not best_conv) or ((conv == best_conv) and f < best_f):
            best_theta, best_f, best_conv = theta, f, conv
    if best_theta is None or not math.isfinite(best_f):
        raise FitError(f"{law_name} fit failed: the objective was non-finite from every initialisation")
    if not any_conv:
        raise FitError(
            f"{law_name} fit did not converge: no initialisation out of {len(inits)} converged "
            f"(best Huber loss {best_f * huber_delta:.3g})"
        )

    nat = law.to_natural(best_theta)
    loss = best_f * huber_delta
    # parameter names in output order
    all_names = list(names)
    if not offset:
        full = np.concatenate([[0.0], nat])
    else:
        full = nat
    params = {k: float(v) for k, v in zip(all_names, full)}

    # bootstrap, warm-started from the full-data optimum
    rng = np.random.default_rng(seed)
    samples, failed = [], 0
    for _ in range(int(n_bootstrap)):
        idx = rng.integers(0, n, size=n)
        law.set_rows(idx)
        theta, f, conv = minimise(law, best_theta, bounds)
        if not (conv and math.isfinite(f)):
            failed += 1
            continue
        nb = law.to_natural(theta)
        samples.append(nb if offset else np.concatenate([[0.0], nb]))
    law.set_rows(None)
    samples_arr = np.array(samples) if samples else np.empty((0, len(all_names)))

    ci, se = {}, {}
    for j, k in enumerate(all_names):
        if k == "E" and not offset:
            ci[k], se[k] = [0.0, 0.0], 0.0
        elif samples_arr.shape[0] >= 2:
            ci[k], se[k] = percentile_ci(samples_arr[:, j], level), sample_se(samples_arr[:, j])
        else:
            ci[k], se[k] = [math.nan, math.nan], math.nan
    return PowerLawFit(
        params=params,
        ci=ci,
        se=se,
        n_points=n,
        method="huber-lbfgs-bootstrap" if n_bootstrap > 0 else "huber-lbfgs",
        converged=bool(best_conv),
        loss=float(loss),
        law=law_name,
        offset=offset,
        level=level,
        huber_delta=float(huber_delta),
        n_bootstrap=int(n_bootstrap),
        n_bootstrap_failed=failed,
        seed=seed,
        param_names=tuple(all_names),
        bootstrap_samples=samples_arr,
    )


_E_FRACTIONS = (0.0, 0.3, 0.6, 0.8, 0.9, 0.97)


def _ols_exponent(lx: np.ndarray, ly: np.ndarray) -> tuple[float, float]:
    """Slope, intercept of ly = intercept + slope * lx (least squares)."""
    if np.ptp(lx) == 0:
        return 0.0, float(ly.mean())
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(slope), float(intercept)


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
) -> PowerLawFit:
    """Fit L(x) = E + A * x**-a by Huber loss on log residuals, L-BFGS from a grid, bootstrap CIs.

    Parameters
    ----------
    x, y : array-like, shape (n,)
        Positive, finite. ``x`` e.g. parameters, tokens or steps; ``y`` the loss (any units;
        E and A come back in the units of y).
    offset : fit E >= 0 (default). ``False`` fixes E = 0 (reported as 0 with CI [0, 0]).
    huber_delta : Huber threshold on log residuals (default 1e-3, Hoffmann et al.).
    n_bootstrap : number of nonparametric bootstrap resamples of the points (default 200;
        0 skips uncertainty and gives NaN CIs).
    level : two-sided confidence level of the percentile CIs (default 0.95).
    seed : seed of the bootstrap resampling (default 0).
    names : names of (x, y) used in error messages (e.g. the CSV columns).

    Returns
    -------
    PowerLawFit with ``params`` {"E", "A", "a"}, ``law="1d"``.

    Raises
    ------
    FitError on non-finite or non-positive input, mismatched lengths, fewer than 4 distinct
    x values (3 with ``offset=False``), or when no initialisation converged.
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
    if huber_delta <= 0:
        raise FitError(f"huber_delta must be > 0; got {huber_delta}")

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
        n_bootstrap=n_bootstrap, level=level, seed=seed, inits=inits,
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
) -> PowerLawFit:
    """Fit L(N, D) = E + A / N**a + B / D**b (Hoffmann et al. Approach 3), bootstrap CIs.

    Parameters
    ----------
    n, d, y : array-like, shape (n_points,)
        Positive, finite: N (e.g. parameters), D (e.g. tokens or dataset size), the loss.
    offset, huber_delta, n_bootstrap, level, seed : as in :func:`fit_power_law`.
    names : names of (n, d, y) used in error messages.

    Returns
    -------
    PowerLawFit with ``params`` {"E", "A", "a", "B", "b"}, ``law="2d"``; ``predict(n, d)``.

    Raises
    ------
    FitError on bad input, fewer than 6 points or fewer than 2 distinct N or D values, or when
    no initialisation converged.
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
    if huber_delta <= 0:
        raise FitError(f"huber_delta must be > 0; got {huber_delta}")

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
        huber_delta=huber_delta, n_bootstrap=n_bootstrap, level=level, seed=seed, inits=inits,
    )
