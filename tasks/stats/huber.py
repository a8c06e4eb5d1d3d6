"""The numerical core of the power-law fits: the Huber objective on log residuals of a log-sum-exp law, with its
analytic gradient, one L-BFGS-B run, and the screened multistart over initialisations (Hoffmann et al. 2022,
Approach 3, as replicated by Besiroglu et al. 2024).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import optimize

from tasks.stats.inputs import FitError


class LogSumExpLaw:
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

    def _terms(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log-predictions, shape (n,); softmax weights of the terms, shape (n, n_terms), offset term first)."""
        c, s = self._split(theta)
        if self.K == 1 and self.offset:
            # the common 1-D law in few array passes: log(E + A x^-a) = logaddexp(e, c - s u)
            t1 = c[0] - s[0] * self.U[:, 0]
            logpred = np.logaddexp(theta[0], t1)
            w1 = np.exp(t1 - logpred)
            return logpred, np.column_stack([1.0 - w1, w1])
        T = c[None, :] - self.U * s[None, :]  # (n, K)
        if self.offset:
            T = np.concatenate([np.full((T.shape[0], 1), theta[0]), T], axis=1)
        m = T.max(axis=1, keepdims=True)
        ex = np.exp(T - m)
        z = ex.sum(axis=1, keepdims=True)
        return (m + np.log(z))[:, 0], ex / z

    def fun_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """(objective / delta, its gradient, shape (p,)): the summed Huber loss of the log residuals over the rows in
        use (see ``set_rows``), scaled by 1/delta."""
        o = 1 if self.offset else 0
        if self.K == 1 and self.offset:
            return self._fun_grad_1d(theta)
        logpred, w = self._terms(theta)
        r = logpred - self.ly
        hp = np.clip(r, -self.delta, self.delta)  # Huber derivative psi(r)
        # Huber loss: r^2/2 for |r| <= delta, delta*|r| - delta^2/2 beyond; both equal psi * (r - psi/2)
        f = float(np.dot(hp, r - 0.5 * hp))
        whp = w * hp[:, None]
        wt = whp.sum(axis=0)  # (nterm,)
        g = np.empty(self.npar)
        if self.offset:
            g[0] = wt[0]
        g[o::2][: self.K] = wt[o:]
        g[o + 1 :: 2][: self.K] = -(whp[:, o:] * self.U).sum(axis=0)
        # Scale by 1/delta: same minimiser, but an objective of order sum|r| keeps scipy's
        # relative ftol/gtol meaningful (the raw sum is ~1e-3 and would stop L-BFGS early).
        return f / self.delta, g / self.delta

    def _fun_grad_1d(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """fun_grad of E + A x^-a in a few passes over the rows (no (n, 2) temporaries): it dominates large fits."""
        e, c, s = theta
        u = self.U[:, 0]
        d = (c - e) - s * u  # log(A x^-a / E)
        if d.max() < 700.0:  # np.logaddexp is several times slower than exp + log1p
            z = np.exp(d)
            logpred = e + np.log1p(z)
            w1 = z / (1.0 + z)  # weight of the power-law term; the offset's is 1 - w1
        else:
            logpred = np.logaddexp(0.0, d) + e
            w1 = np.exp(d + e - logpred)
        r = logpred - self.ly
        hp = np.clip(r, -self.delta, self.delta)
        f = float(np.dot(hp, r - 0.5 * hp))
        hw = hp * w1
        sum_hw = float(hw.sum())
        g = np.array([float(hp.sum()) - sum_hw, sum_hw, -float(np.dot(hw, u))])
        return f / self.delta, g / self.delta

    def sandwich(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Pieces of the M-estimator's asymptotic covariance at ``theta`` (Huber 1967), all rows in use.

        Returns (H, B, n_quadratic): H = sum_i d^2 rho(r_i)/dtheta^2, shape (p, p), with rho'' = 1{|r| <= delta}
        (the density of residuals at zero, estimated by those inside the quadratic zone); B = sum_i psi_i^2 J_i J_i^T
        (J_i = dr_i/dtheta), shape (p, p); n_quadratic = the number of residuals with |r| <= delta, on which H's
        first term rests. cov(theta) ~ H^-1 B H^-1 (the caller applies the small-sample factor n/(n-p)).
        """
        o = 1 if self.offset else 0
        logpred, w = self._terms(theta)
        r = logpred - self.ly
        psi = np.clip(r, -self.delta, self.delta)
        quad = (np.abs(r) <= self.delta).astype(float)
        n = len(r)
        # t_ik = dT_ik/dtheta is a unit vector (offset; coefficient c_k) or -U_ik (exponent s_k)
        J = np.zeros((n, self.npar))
        if self.offset:
            J[:, 0] = w[:, 0]
        curv = np.zeros((self.npar, self.npar))  # sum_i psi_i sum_k w_ik t_ik t_ik^T
        if self.offset:
            curv[0, 0] = np.dot(psi, w[:, 0])
        for k in range(self.K):
            ci, si = o + 2 * k, o + 2 * k + 1
            wk, uk = w[:, o + k], self.U[:, k]
            J[:, ci], J[:, si] = wk, -wk * uk
            pw = psi * wk
            curv[ci, ci] += pw.sum()
            curv[ci, si] -= np.dot(pw, uk)
            curv[si, ci] = curv[ci, si]
            curv[si, si] += np.dot(pw, uk * uk)
        H = J.T @ (J * (quad - psi)[:, None]) + curv
        B = J.T @ (J * (psi * psi)[:, None])
        return H, B, int(quad.sum())

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


def single_threaded_blas() -> contextlib.AbstractContextManager:
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


LBFGS_OPTIONS = {"maxiter": 5000, "maxfun": 20000, "ftol": 1e-14, "gtol": 1e-9, "maxcor": 20}
EXP_BOUNDS = (-10.0, 10.0)


def minimise(law: LogSumExpLaw, theta0: np.ndarray, bounds, maxiter: int | None = None) -> tuple[np.ndarray, float, bool]:
    """One L-BFGS-B run (at most ``maxiter`` iterations; default LBFGS_OPTIONS'). Returns (theta, scaled objective,
    converged); a run stopped by ``maxiter`` is not converged."""
    options = LBFGS_OPTIONS if maxiter is None else {**LBFGS_OPTIONS, "maxiter": maxiter}
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            res = optimize.minimize(
                law.fun_grad, theta0, jac=True, method="L-BFGS-B", bounds=bounds, options=options
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


SCREEN_ITERS = 30  # L-BFGS iterations per initialisation in the screening pass of the multistart
POLISH_TOP = 3  # the best screened initialisations, run to convergence
MULTISTART_MAX_ROWS = 10_000  # above this, initialisations are screened on a fixed random subsample of rows

@dataclass
class Optimum:
    """One L-BFGS result: theta, the scaled objective, whether it converged."""

    theta: np.ndarray
    f: float  # scaled objective (LogSumExpLaw.fun_grad)
    converged: bool


def clip_to_bounds(theta: np.ndarray, bounds) -> np.ndarray:
    lo = [-np.inf if b[0] is None else b[0] for b in bounds]
    hi = [np.inf if b[1] is None else b[1] for b in bounds]
    return np.clip(theta, lo, hi)


def _better(cand: Optimum, best: Optimum | None) -> bool:
    """Converged runs first; among equals the lowest objective."""
    if best is None:
        return True
    return (cand.converged and not best.converged) or (cand.converged == best.converged and cand.f < best.f)


def multistart(law: LogSumExpLaw, inits: list[np.ndarray], bounds, law_name: str, huber_delta: float,
               progress: Callable[[str, int, int], None] | None = None) -> Optimum:
    """L-BFGS from every initialisation for at most SCREEN_ITERS iterations, then the POLISH_TOP best run to
    convergence; the best converged run is kept. Screening finds the basin as full runs from every start did, at a
    fraction of the cost. With more than MULTISTART_MAX_ROWS rows, all of this runs on a fixed random subsample and
    the winner is then refined on all rows (one run from near the optimum: the subsample's optimum is within its
    sampling error of the full one). Raises FitError if nothing converged. ``progress(stage, done, total)`` is
    called after every initialisation (stage "multistart") and every run to convergence (stage "refine")."""
    def report(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(stage, done, total)

    n = len(law.ly_all)
    sub = None
    if n > MULTISTART_MAX_ROWS:
        sub = np.sort(np.random.default_rng(0).choice(n, MULTISTART_MAX_ROWS, replace=False))
    law.set_rows(sub)
    try:
        screened = []
        for i, nat0 in enumerate(inits):
            theta0 = clip_to_bounds(law.from_natural(nat0), bounds)
            screened.append(Optimum(*minimise(law, theta0, bounds, maxiter=SCREEN_ITERS)))
            report("multistart", i + 1, len(inits))
        best = None
        top = sorted((s for s in screened if math.isfinite(s.f)), key=lambda s: s.f)[:POLISH_TOP]
        n_refine = len(top) + (sub is not None)
        for i, cand in enumerate(top):
            if not cand.converged:
                cand = Optimum(*minimise(law, cand.theta, bounds))
            if _better(cand, best):
                best = cand
            report("refine", i + 1, n_refine)
    finally:
        law.set_rows(None)
    if best is not None and sub is not None and math.isfinite(best.f):
        best = Optimum(*minimise(law, best.theta, bounds))
        report("refine", n_refine, n_refine)
    if best is None or not math.isfinite(best.f):
        raise FitError(f"{law_name} fit failed: the objective was non-finite from every initialisation")
    if not best.converged:
        raise FitError(
            f"{law_name} fit did not converge: no initialisation out of {len(inits)} converged "
            f"(best Huber loss {best.f * huber_delta:.3g})"
        )
    return best
