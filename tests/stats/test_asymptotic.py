"""Large fits: the sandwich covariance agrees with the bootstrap, its Hessian with finite differences, and a large
table is fitted by the screened multistart to the same optimum as an exhaustive one."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import approx_fprime

import tasks.stats.huber as huber
from tasks.stats import fit_chinchilla, fit_power_law
from tasks.stats.huber import LogSumExpLaw


def _planted(n, seed, noise=0.05):
    rng = np.random.default_rng(seed)
    x = np.exp(rng.uniform(np.log(1e6), np.log(1e10), n))
    return x, (1.7 + 400.0 * x**-0.3) * np.exp(rng.normal(0.0, noise, n))


@pytest.mark.parametrize("K, offset", [(1, True), (1, False), (2, True)])
def test_sandwich_hessian_is_the_objectives_second_derivative(K, offset):
    rng = np.random.default_rng(K)
    law = LogSumExpLaw(rng.normal(0, 2, (60, K)), rng.normal(0, 0.5, 60), offset, 1.0)
    theta = rng.normal(0, 0.5, law.npar)
    H, B, n_quad = law.sandwich(theta)
    numeric = np.array([approx_fprime(theta, lambda t: law.fun_grad(t)[1][j] * law.delta, 1e-7)
                        for j in range(law.npar)])
    np.testing.assert_allclose(H, numeric, atol=2e-5 * np.abs(H).max())
    assert 0 < n_quad < 60 and np.all(np.linalg.eigvalsh(B) >= -1e-12)


def test_asymptotic_intervals_agree_with_the_bootstrap():
    x, y = _planted(3000, seed=1, noise=0.02)  # ~4% of residuals inside huber_delta: 120, enough for the Hessian
    boot = fit_power_law(x, y, n_bootstrap=100, seed=1, ci="percentile")
    asym = fit_power_law(x, y, n_bootstrap=100, seed=1, ci="asymptotic")
    assert asym.method == "huber-lbfgs-sandwich" and asym.ci_method == "asymptotic" and asym.warnings == {}
    assert asym.params == boot.params
    for name, true in (("E", 1.7), ("A", 400.0), ("a", 0.3)):
        assert asym.se[name] == pytest.approx(boot.se[name], rel=0.3), name
        lo, hi = asym.ci[name]
        assert lo <= true <= hi, (name, asym.ci[name])
    # derived values come from draws of the asymptotic normal: the identity gives back the parameter's interval
    ident = asym.derived(lambda p: p["a"])
    assert ident.ci == pytest.approx(asym.ci["a"], rel=0.02)


def test_large_table_auto_and_subsampled_multistart_find_the_exhaustive_optimum(monkeypatch):
    x, y = _planted(30_000, seed=2)
    fit = fit_power_law(x, y)
    assert fit.ci_method == "asymptotic" and fit.n_points == 30_000
    monkeypatch.setattr(huber, "MULTISTART_MAX_ROWS", 10**9)  # every start screened on all rows
    full = fit_power_law(x, y, n_bootstrap=0)
    for name in ("E", "A", "a"):
        assert fit.params[name] == pytest.approx(full.params[name], rel=1e-5)
    assert fit.loss == pytest.approx(full.loss, rel=1e-9)


def test_chinchilla_grid_with_asymptotic_intervals():
    # (measured on 4000 rows: sandwich SEs within 20% of a 40-resample bootstrap's for all five parameters)
    rng = np.random.default_rng(3)
    N = rng.choice(np.logspace(6, 9, 8), 2000)
    D = rng.choice(np.logspace(8, 11, 8), 2000)
    y = (1.7 + 400.0 * N**-0.34 + 410.0 * D**-0.28) * np.exp(rng.normal(0, 0.01, N.size))
    fit = fit_chinchilla(N, D, y, ci="asymptotic")
    assert fit.ci_method == "asymptotic" and fit.warnings == {}
    for name, true in {"E": 1.7, "A": 400.0, "a": 0.34, "B": 410.0, "b": 0.28}.items():
        lo, hi = fit.ci[name]
        assert lo <= true <= hi, (name, fit.ci[name])


def test_asymptotic_intervals_on_few_quadratic_residuals_are_flagged():
    x, y = _planted(3000, seed=1, noise=0.05)  # ~1.6% of residuals within huber_delta: ~50 < 20 per parameter
    fit = fit_power_law(x, y, ci="asymptotic")
    assert "few-quadratic" in fit.warnings and "residuals lie within huber_delta" in fit.warnings["few-quadratic"]
