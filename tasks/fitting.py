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

Also here: the paper's own log-log OLS slope (:func:`fit_loglog_ols`), rank-frequency (Zipf)
slopes (:func:`rank_frequency_slope`), the discrete power-law MLE (:func:`fit_discrete_powerlaw`)
and theory checks as data (:func:`theory_check`, :func:`scaling_theory_checks`).

Conventions: exponents are reported positive for decreasing laws (``a`` in ``A x^-a``); OLS
slopes keep their sign (a Zipf rank-frequency slope is negative). ``level`` is the two-sided
confidence level of every interval (default 0.95). Rows in error messages are 0-based indices
into the arrays passed in.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from scipy import optimize, special, stats

__all__ = [
    "FitError",
    "PowerLawFit",
    "DerivedValue",
    "LogLogFit",
    "DiscretePowerLawFit",
    "TheoryCheck",
    "ExponentEstimate",
    "fit_power_law",
    "fit_chinchilla",
    "fit_loglog_ols",
    "rank_frequency_slope",
    "fit_discrete_powerlaw",
    "theory_check",
    "as_exponent",
    "scaling_theory_checks",
]


class FitError(ValueError):
    """Bad input for a fit (non-finite, non-positive, too few points) or a fit that failed."""


# --------------------------------------------------------------------------- helpers


def _json_float(v: Any) -> float | None:
    """A JSON-safe float: NaN/inf become None."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _json_pair(p: Sequence[float] | None) -> list[float | None] | None:
    if p is None:
        return None
    return [_json_float(p[0]), _json_float(p[1])]


def _check_level(level: float) -> float:
    level = float(level)
    if not (0.0 < level < 1.0):
        raise FitError(f"level must be in (0, 1); got {level}")
    return level


def _as_1d(values: Any, name: str, *, positive: bool = True) -> np.ndarray:
    """Convert to a 1-D float array; reject NaN/inf (and non-positive values if ``positive``)."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise FitError(f"{name} must be numeric: {exc}") from None
    if arr.ndim > 1 and arr.size == max(arr.shape):
        arr = arr.reshape(-1)  # a column or row vector
    if arr.ndim != 1:
        raise FitError(f"{name} must be a 1-D array; got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        raise FitError(f"{name} contains non-finite value {arr[i]} at row {i}")
    if positive:
        bad = np.flatnonzero(arr <= 0)
        if bad.size:
            i = int(bad[0])
            raise FitError(f"{name} contains non-positive value {arr[i]} at row {i}")
    return arr


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        desc = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise FitError(f"inputs must have the same length: {desc}")
    return next(iter(lengths.values()))


def _percentile_ci(samples: np.ndarray, level: float) -> list[float]:
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return [math.nan, math.nan]
    q = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [q, 1.0 - q])
    return [float(lo), float(hi)]


def _sample_se(samples: np.ndarray) -> float:
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    return float(np.std(samples, ddof=1)) if samples.size >= 2 else math.nan


# --------------------------------------------------------------------------- the Huber / L-BFGS core


class _LogSumExpLaw:
    """Objective and gradient of sum_i Huber(logsumexp_k T_ik - log y_i).

    Terms: T_i0 = e (offset, if any); T_ik = c_k - s_k * u_ik for the power-law terms, with
    u = log(x) - mean(log(x)) (centring decorrelates the coefficient from the exponent, which
    conditions L-BFGS far better on e.g. x ~ 1e9 parameters). Internal parameter vector
    theta = [e]? + [c_1, s_1, c_2, s_2, ...].
    """

    def __init__(self, logx: np.ndarray, logy: np.ndarray, offset: bool, delta: float):
        # logx: (n, K) log features, one column per power-law term
        self.offset = offset
        self.delta = float(delta)
        self.K = logx.shape[1]
        self.ref = logx.mean(axis=0)  # (K,)
        self.U_all = logx - self.ref
        self.ly_all = logy
        self.set_rows(None)
        self.npar = 2 * self.K + (1 if offset else 0)

    def set_rows(self, idx: np.ndarray | None) -> None:
        if idx is None:
            self.U, self.ly = self.U_all, self.ly_all
        else:
            self.U, self.ly = self.U_all[idx], self.ly_all[idx]

    def _split(self, theta: np.ndarray):
        o = 1 if self.offset else 0
        c = theta[o::2][: self.K]
        s = theta[o + 1 :: 2][: self.K]
        return c, s

    def fun_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        o = 1 if self.offset else 0
        c, s = self._split(theta)
        T = c[None, :] - self.U * s[None, :]  # (n, K)
        if self.offset:
            T = np.concatenate([np.full((T.shape[0], 1), theta[0]), T], axis=1)
        m = T.max(axis=1, keepdims=True)
        ex = np.exp(T - m)
        z = ex.sum(axis=1, keepdims=True)
        logpred = (m + np.log(z))[:, 0]
        w = ex / z  # softmax weights, (n, nterm)
        r = logpred - self.ly
        d = self.delta
        absr = np.abs(r)
        f = np.where(absr <= d, 0.5 * r * r, d * (absr - 0.5 * d)).sum()
        hp = np.clip(r, -d, d)  # Huber derivative
        g = np.empty(self.npar)
        # elementwise sums rather than matmuls: no BLAS calls on these tiny arrays
        whp = w * hp[:, None]
        wt = whp.sum(axis=0)  # (nterm,)
        if self.offset:
            g[0] = wt[0]
        g[o::2][: self.K] = wt[o:]
        g[o + 1 :: 2][: self.K] = -(whp[:, o:] * self.U).sum(axis=0)
        # Scale by 1/delta: same minimiser, but an objective of order sum|r| keeps scipy's
        # relative ftol/gtol meaningful (the raw sum is ~1e-3 and would stop L-BFGS early).
        return float(f / d), g / d

    def loss(self, theta: np.ndarray) -> float:
        """The summed Huber loss itself (not the scaled objective)."""
        return self.fun_grad(theta)[0] * self.delta

    def to_natural(self, theta: np.ndarray) -> np.ndarray:
        """Internal theta -> [E?, A, a, B, b, ...] in natural units (coefficients un-centred)."""
        c, s = self._split(theta)
        out = []
        if self.offset:
            out.append(math.exp(theta[0]))
        for k in range(self.K):
            # A x^-a = exp(c - a (log x - ref))  =>  log A = c + a * ref
            out.append(math.exp(min(c[k] + s[k] * self.ref[k], 700.0)))
            out.append(float(s[k]))
        return np.array(out)

    def from_natural(self, nat: np.ndarray) -> np.ndarray:
        o = 1 if self.offset else 0
        theta = np.empty(self.npar)
        if self.offset:
            theta[0] = math.log(max(nat[0], 1e-300))
        for k in range(self.K):
            A, s = nat[o + 2 * k], nat[o + 2 * k + 1]
            theta[o + 2 * k] = math.log(A) - s * self.ref[k]
            theta[o + 2 * k + 1] = s
        return theta


_BLAS_CONTROLLER: Any = None


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread while fitting.

    scipy's L-BFGS-B calls BLAS on vectors of a few elements; OpenBLAS wakes its thread pool for
    them, which on a busy machine made a 100-resample bootstrap 10-50x slower (seconds -> tens
    of seconds). ``threadpoolctl`` (a scikit-learn dependency) is used when installed; without
    it this is a no-op.
    """
    global _BLAS_CONTROLLER
    try:
        if _BLAS_CONTROLLER is None:
            from threadpoolctl import ThreadpoolController

            _BLAS_CONTROLLER = ThreadpoolController()
        return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")
    except Exception:  # threadpoolctl missing or unable to inspect the loaded libraries
        return contextlib.nullcontext()


_LBFGS_OPTIONS = {"maxiter": 5000, "maxfun": 20000, "ftol": 1e-14, "gtol": 1e-9, "maxcor": 20}
_EXP_BOUNDS = (-10.0, 10.0)


def _minimise(law: _LogSumExpLaw, theta0: np.ndarray, bounds) -> tuple[np.ndarray, float, bool]:
    """One L-BFGS-B run. Returns (theta, scaled objective, converged)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            res = optimize.minimize(
                law.fun_grad, theta0, jac=True, method="L-BFGS-B", bounds=bounds, options=_LBFGS_OPTIONS
            )
        except (FloatingPointError, ValueError):
            return theta0, math.inf, False
    fval = float(res.fun)
    if not (math.isfinite(fval) and np.all(np.isfinite(res.x))):
        return res.x, math.inf, False
    converged = bool(res.success)
    if not converged and res.status == 2:
        # "ABNORMAL_TERMINATION_IN_LNSRCH": the line search hit float precision, which with
        # tight tolerances usually means we are at the optimum. Accept if the projected
        # gradient is small relative to the number of points.
        g = np.asarray(res.jac, dtype=float)
        x = res.x
        lo = np.array([b[0] if b[0] is not None else -np.inf for b in bounds])
        hi = np.array([b[1] if b[1] is not None else np.inf for b in bounds])
        pg = np.where((x <= lo) & (g > 0), 0.0, np.where((x >= hi) & (g < 0), 0.0, g))
        converged = bool(np.max(np.abs(pg)) <= 1e-4 * max(1, len(law.ly)))
    return res.x, fval, converged


# --------------------------------------------------------------------------- result types


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
        return {"value": _json_float(self.value), "ci": _json_pair(self.ci), "se": _json_float(self.se),
                "level": self.level}


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
        level = self.level if level is None else _check_level(level)
        value = float(fn(dict(self.params)))
        samples = self.bootstrap_samples
        if samples.size == 0:
            return DerivedValue(value, [math.nan, math.nan], math.nan, level, np.empty(0))
        vals = np.array([fn(dict(zip(self.param_names, map(float, row)))) for row in samples], dtype=float)
        return DerivedValue(value, _percentile_ci(vals, level), _sample_se(vals), level, vals)

    def samples_of(self, name: str) -> np.ndarray:
        """Bootstrap samples of one parameter, shape (n_ok,) (empty without bootstrap)."""
        if self.bootstrap_samples.size == 0:
            return np.empty(0)
        return self.bootstrap_samples[:, self.param_names.index(name)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (floats, lists; NaN -> None); bootstrap samples left out."""
        return {
            "params": {k: _json_float(v) for k, v in self.params.items()},
            "ci": {k: _json_pair(v) for k, v in self.ci.items()},
            "se": {k: _json_float(v) for k, v in self.se.items()},
            "n_points": int(self.n_points),
            "method": self.method,
            "converged": bool(self.converged),
            "loss": _json_float(self.loss),
            "law": self.law,
            "offset": bool(self.offset),
            "level": float(self.level),
            "huber_delta": float(self.huber_delta),
            "n_bootstrap": int(self.n_bootstrap),
            "n_bootstrap_failed": int(self.n_bootstrap_failed),
            "seed": self.seed,
        }


# --------------------------------------------------------------------------- 1-D and 2-D fits


def _fit_lse(*args: Any, **kwargs: Any) -> PowerLawFit:
    with _single_threaded_blas():
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
    law = _LogSumExpLaw(logx, logy, offset, huber_delta)
    ly_min, ly_max = float(logy.min()), float(logy.max())
    bounds = []
    if offset:
        bounds.append((ly_min - 30.0, ly_max + 2.0))  # E from ~1e-13 * min(y) to ~7 * max(y)
    for _ in range(law.K):
        bounds += [(None, None), _EXP_BOUNDS]

    best_theta, best_f, any_conv, best_conv = None, math.inf, False, False
    for nat0 in inits:
        theta0 = law.from_natural(nat0)
        theta0 = np.array([np.clip(t, b[0] if b[0] is not None else -np.inf, b[1] if b[1] is not None else np.inf)
                           for t, b in zip(theta0, bounds)])
        theta, f, conv = _minimise(law, theta0, bounds)
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
        theta, f, conv = _minimise(law, best_theta, bounds)
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
            ci[k], se[k] = _percentile_ci(samples_arr[:, j], level), _sample_se(samples_arr[:, j])
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
    level = _check_level(level)
    xn, yn = names
    x = _as_1d(x, xn)
    y = _as_1d(y, yn)
    _same_length(**{xn: x, yn: y})
    need = 4 if offset else 3
    n_distinct = len(np.unique(x))
    if n_distinct < need:
        raise FitError(
            f"too few points for the 1-D law {'with' if offset else 'without'} offset E: need at least "
            f"{need} distinct {xn} values, got {n_distinct} (n_points={len(x)})"
        )
    if huber_delta <= 0:
        raise FitError(f"huber_delta must be > 0; got {huber_delta}")

    lx, ly = np.log(x), np.log(y)
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
    level = _check_level(level)
    nn, dn, yn = names
    N = _as_1d(n, nn)
    D = _as_1d(d, dn)
    y = _as_1d(y, yn)
    npts = _same_length(**{nn: N, dn: D, yn: y})
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


# --------------------------------------------------------------------------- OLS on log-log data


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
        return {
            "slope": _json_float(self.slope),
            "intercept": _json_float(self.intercept),
            "ci": _json_pair(self.ci),
            "se": _json_float(self.se),
            "intercept_ci": _json_pair(self.intercept_ci),
            "intercept_se": _json_float(self.intercept_se),
            "r2": _json_float(self.r2),
            "n_points": int(self.n_points),
            "level": float(self.level),
            "xmin": _json_float(self.xmin),
            "xmax": _json_float(self.xmax),
            "offset": float(self.offset),
            "method": self.method,
        }


def _ols_loglog(lx: np.ndarray, ly: np.ndarray, level: float) -> tuple[float, float, float, float, float, list, list]:
    n = len(lx)
    xm, ym = lx.mean(), ly.mean()
    sxx = float(np.sum((lx - xm) ** 2))
    slope = float(np.sum((lx - xm) * (ly - ym)) / sxx)
    intercept = float(ym - slope * xm)
    resid = ly - (intercept + slope * lx)
    sse = float(np.sum(resid**2))
    sst = float(np.sum((ly - ym) ** 2))
    r2 = 1.0 - sse / sst if sst > 0 else 1.0
    dof = n - 2
    s2 = sse / dof
    se = math.sqrt(s2 / sxx)
    se_i = math.sqrt(s2 * (1.0 / n + xm**2 / sxx))
    t = float(stats.t.ppf(0.5 + level / 2.0, dof))
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
    level = _check_level(level)
    xn, yn = names
    x = _as_1d(x, xn)
    y = _as_1d(y, yn, positive=False)
    _same_length(**{xn: x, yn: y})
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
    slope, icpt, se, se_i, r2, ci, ci_i = _ols_loglog(np.log(xs), np.log(yo), level)
    return LogLogFit(slope, icpt, ci, se, ci_i, se_i, r2, len(rows), level,
                     None if xmin is None else float(xmin), None if xmax is None else float(xmax), float(offset))


# --------------------------------------------------------------------------- Zipf / rank-frequency


def _counts_array(counts: Any, name: str = "counts") -> np.ndarray:
    c = _as_1d(counts, name, positive=False)
    bad = np.flatnonzero(c < 0)
    if bad.size:
        i = int(bad[0])
        raise FitError(f"{name} contains negative value {c[i]} at row {i}")
    return c


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
    c = _counts_array(counts)
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
    slope, icpt, se, se_i, r2, ci, ci_i = _ols_loglog(np.log(ranks[keep]), np.log(c_sorted[keep]), _check_level(level))
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
        return {
            "alpha": _json_float(self.alpha),
            "ci": _json_pair(self.ci),
            "se": _json_float(self.se),
            "xmin": _json_float(self.xmin),
            "n": int(self.n),
            "n_total": int(self.n_total),
            "ks_distance": _json_float(self.ks_distance),
            "level": float(self.level),
            "method": self.method,
        }


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
    level = _check_level(level)
    c = _counts_array(counts)
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
        rng = np.random.default_rng(seed)
        tail = data[data >= xm]
        boots = []
        for _ in range(int(n_bootstrap)):
            sample = tail[rng.integers(0, len(tail), size=len(tail))]
            if len(np.unique(sample)) < 2:
                continue
            boots.append(_powerlaw_fit(sample, xm)[0])
        boots = np.array(boots)
        ci, se_b = _percentile_ci(boots, level), _sample_se(boots)
        return DiscretePowerLawFit(alpha, ci, se_b, xm, n, len(data), ks, level, "powerlaw-mle-discrete-bootstrap")
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    return DiscretePowerLawFit(alpha, [alpha - z * se, alpha + z * se], se, xm, n, len(data), ks, level,
                               "powerlaw-mle-discrete")


# --------------------------------------------------------------------------- theory checks


@dataclass
class TheoryCheck:
    """One comparison of a measured quantity with a theory prediction.

    ``consistent``: the two intervals overlap, or (``predicted_ci`` None) the prediction lies
    inside ``measured_ci``. False when the measured interval is not finite.
    """

    name: str
    measured: float
    measured_ci: list[float]
    predicted: float
    predicted_ci: list[float] | None
    consistent: bool
    level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": _json_float(self.measured),
            "measured_ci": _json_pair(self.measured_ci),
            "predicted": _json_float(self.predicted),
            "predicted_ci": _json_pair(self.predicted_ci),
            "consistent": bool(self.consistent),
            "level": float(self.level),
        }


def theory_check(
    name: str,
    measured: float,
    measured_ci: Sequence[float],
    predicted: float,
    predicted_ci: Sequence[float] | None = None,
    level: float = 0.95,
) -> TheoryCheck:
    """Build a :class:`TheoryCheck`; intervals are [lo, hi] (given in either order)."""
    mci = sorted(float(v) for v in measured_ci)
    pci = None if predicted_ci is None else sorted(float(v) for v in predicted_ci)
    if not all(math.isfinite(v) for v in mci):
        ok = False
    elif pci is None:
        ok = mci[0] <= float(predicted) <= mci[1]
    elif not all(math.isfinite(v) for v in pci):
        ok = mci[0] <= float(predicted) <= mci[1]
    else:
        ok = max(mci[0], pci[0]) <= min(mci[1], pci[1])
    return TheoryCheck(name, float(measured), mci, float(predicted), pci, bool(ok), float(level))


@dataclass
class ExponentEstimate:
    """A scalar estimate with an optional interval and optional bootstrap samples (shape (m,))."""

    value: float
    ci: list[float] | None = None
    samples: np.ndarray | None = field(default=None, repr=False)


def as_exponent(obj: Any, param: str = "a") -> ExponentEstimate:
    """Normalise an exponent estimate for :func:`scaling_theory_checks`.

    Accepts a :class:`PowerLawFit` (takes ``params[param]``, its CI and bootstrap samples), a
    :class:`LogLogFit` (the exponent ``-slope``, CI flipped), a :class:`DerivedValue`, an
    :class:`ExponentEstimate`, a tuple ``(value, (lo, hi))`` or ``(value, lo, hi)``, or a number
    (no interval).
    """
    if isinstance(obj, ExponentEstimate):
        return obj
    if isinstance(obj, PowerLawFit):
        s = obj.samples_of(param)
        return ExponentEstimate(obj.params[param], list(obj.ci[param]), s if s.size else None)
    if isinstance(obj, LogLogFit):
        return ExponentEstimate(-obj.slope, sorted([-obj.ci[0], -obj.ci[1]]), None)
    if isinstance(obj, DerivedValue):
        return ExponentEstimate(obj.value, list(obj.ci), obj.samples if obj.samples.size else None)
    if isinstance(obj, (tuple, list)):
        if len(obj) == 2:
            return ExponentEstimate(float(obj[0]), [float(obj[1][0]), float(obj[1][1])])
        if len(obj) == 3:
            return ExponentEstimate(float(obj[0]), [float(obj[1]), float(obj[2])])
        raise FitError(f"an exponent tuple must be (value, (lo, hi)) or (value, lo, hi); got {obj!r}")
    if isinstance(obj, (int, float, np.floating, np.integer)):
        return ExponentEstimate(float(obj))
    raise FitError(f"cannot read an exponent estimate from {type(obj).__name__}")


def _transform(est: ExponentEstimate, fn: Callable[[np.ndarray], np.ndarray], level: float):
    """(value, ci) of fn(estimate): bootstrap distribution when present, else the CI endpoints
    mapped through fn (valid because every map used here is monotone)."""
    value = float(fn(np.asarray(est.value)))
    if est.samples is not None and len(est.samples) >= 2:
        return value, _percentile_ci(fn(np.asarray(est.samples, dtype=float)), level)
    if est.ci is None:
        return value, None
    ends = sorted(float(fn(np.asarray(v))) for v in est.ci)
    return value, ends


def _measured(est: ExponentEstimate) -> list[float]:
    return list(est.ci) if est.ci is not None else [est.value, est.value]


def scaling_theory_checks(
    *,
    alpha_n: Any = None,
    alpha_d: Any = None,
    alpha_s: Any = None,
    alpha: Any = None,
    zipf_slope: Any = None,
    level: float = 0.95,
) -> list[TheoryCheck]:
    """The quantization model's relations, as checks for whichever inputs are given.

    alpha is the paper's α (frequencies p_k ∝ k^-(α+1)); inputs are anything
    :func:`as_exponent` accepts (``zipf_slope``: a signed slope — a :class:`LogLogFit` from
    :func:`rank_frequency_slope` or a (value, ci) tuple — not an exponent).

    Checks produced (when their inputs are present):
    - ``alpha_D vs alpha_N/(alpha_N+1)``, ``alpha_S vs alpha_N/(alpha_N+1)``
    - ``alpha_N vs alpha``, ``alpha_D vs alpha/(alpha+1)``, ``alpha_S vs alpha/(alpha+1)``
    - ``zipf_slope vs -(alpha_N+1)``, ``zipf_slope vs -(alpha+1)``
    The predicted interval comes from the bootstrap distribution of the input exponent when
    available, else from its CI endpoints pushed through the (monotone) map.
    """
    level = _check_level(level)
    ratio = lambda a: a / (a + 1.0)  # noqa: E731
    checks: list[TheoryCheck] = []
    an = None if alpha_n is None else as_exponent(alpha_n)
    ad = None if alpha_d is None else as_exponent(alpha_d)
    as_ = None if alpha_s is None else as_exponent(alpha_s)
    al = None if alpha is None else as_exponent(alpha)
    zs = None
    if zipf_slope is not None:
        if isinstance(zipf_slope, LogLogFit):
            zs = ExponentEstimate(zipf_slope.slope, list(zipf_slope.ci))
        else:
            zs = as_exponent(zipf_slope)

    def add(name, meas, src, fn):
        pv, pci = _transform(src, fn, level)
        checks.append(theory_check(name, meas.value, _measured(meas), pv, pci, level))

    if an is not None:
        if ad is not None:
            add("alpha_D vs alpha_N/(alpha_N+1)", ad, an, ratio)
        if as_ is not None:
            add("alpha_S vs alpha_N/(alpha_N+1)", as_, an, ratio)
    if al is not None:
        if an is not None:
            add("alpha_N vs alpha", an, al, lambda a: a)
        if ad is not None:
            add("alpha_D vs alpha/(alpha+1)", ad, al, ratio)
        if as_ is not None:
            add("alpha_S vs alpha/(alpha+1)", as_, al, ratio)
    if zs is not None:
        if an is not None:
            add("zipf_slope vs -(alpha_N+1)", zs, an, lambda a: -(a + 1.0))
        if al is not None:
            add("zipf_slope vs -(alpha+1)", zs, al, lambda a: -(a + 1.0))
    return checks
