"""tasks.stats: planted laws are recovered inside their CIs; errors are clear."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import tasks.stats.huber as huber
from tasks.stats import (
    FitError,
    LogLogFit,
    PowerLawFit,
    as_exponent,
    fit_chinchilla,
    fit_discrete_powerlaw,
    fit_loglog_ols,
    fit_power_law,
    rank_frequency_slope,
    scaling_theory_checks,
    theory_check,
)

E_TRUE, A_TRUE, a_TRUE = 1.5, 20.0, 0.6


def planted_1d(n=30, noise=0.02, seed=0, offset=True, lo=1.0, hi=4.0):
    """Points of E + A x^-a on a log grid 10^lo..10^hi, multiplicative log-normal noise."""
    rng = np.random.default_rng(seed)
    x = np.logspace(lo, hi, n)
    clean = (E_TRUE if offset else 0.0) + A_TRUE * x**-a_TRUE
    return x, clean * np.exp(rng.normal(0.0, noise, n))


def width(ci):
    return ci[1] - ci[0]


def inside(value, ci):
    return ci[0] <= value <= ci[1]


# --------------------------------------------------------------------------- 1-D / 2-D Huber fits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_1d_recovered_inside_bootstrap_ci(seed):
    x, y = planted_1d(seed=seed)
    fit = fit_power_law(x, y, n_bootstrap=100, seed=seed)
    assert isinstance(fit, PowerLawFit)
    assert fit.law == "1d" and fit.converged and fit.n_points == 30
    assert fit.method == "huber-lbfgs-bootstrap"
    for name, true in (("E", E_TRUE), ("A", A_TRUE), ("a", a_TRUE)):
        assert inside(true, fit.ci[name]), (name, true, fit.ci[name])
        assert inside(fit.params[name], fit.ci[name])
        assert fit.se[name] > 0
    assert fit.params["a"] == pytest.approx(a_TRUE, abs=0.04)
    assert fit.params["E"] == pytest.approx(E_TRUE, rel=0.05)
    assert fit.params["A"] == pytest.approx(A_TRUE, rel=0.2)
    assert fit.bootstrap_samples.shape == (100 - fit.n_bootstrap_failed, 3)
    assert fit.n_bootstrap_failed <= 5


def test_exact_data_recovered_to_high_precision():
    x = np.logspace(1, 4, 20)
    y = E_TRUE + A_TRUE * x**-a_TRUE
    fit = fit_power_law(x, y, n_bootstrap=0)
    assert fit.params["a"] == pytest.approx(a_TRUE, rel=1e-5)
    assert fit.params["E"] == pytest.approx(E_TRUE, rel=1e-5)
    assert fit.params["A"] == pytest.approx(A_TRUE, rel=1e-4)
    assert fit.method == "huber-lbfgs"
    assert all(math.isnan(v) for v in fit.ci["a"])  # no bootstrap -> no interval
    np.testing.assert_allclose(fit.predict(x), y, rtol=1e-6)


def test_large_x_scale_is_handled():
    # x ~ parameters (1e6..1e10): centring log x keeps L-BFGS well conditioned
    rng = np.random.default_rng(3)
    x = np.logspace(6, 10, 30)
    y = (1.7 + 400.0 * x**-0.3) * np.exp(rng.normal(0, 0.02, 30))
    fit = fit_power_law(x, y, n_bootstrap=100, seed=3)
    assert inside(0.3, fit.ci["a"]) and inside(1.7, fit.ci["E"]) and inside(400.0, fit.ci["A"])
    assert fit.params["a"] == pytest.approx(0.3, abs=0.03)


def test_planted_without_offset_recovered():
    x, y = planted_1d(seed=4, offset=False)
    fit = fit_power_law(x, y, offset=False, n_bootstrap=100, seed=4)
    assert fit.params["E"] == 0.0 and fit.ci["E"] == [0.0, 0.0] and fit.se["E"] == 0.0
    assert inside(a_TRUE, fit.ci["a"]) and inside(A_TRUE, fit.ci["A"])
    assert fit.params["a"] == pytest.approx(a_TRUE, abs=0.01)
    assert fit.params["A"] == pytest.approx(A_TRUE, rel=0.05)
    # a pure power law fitted with the offset gives E close to 0 and the same exponent
    fit_e = fit_power_law(x, y, n_bootstrap=0)
    assert fit_e.params["E"] < 0.05
    assert fit_e.params["a"] == pytest.approx(a_TRUE, abs=0.03)


def test_ci_shrinks_with_more_points():
    x10, y10 = planted_1d(n=10, seed=5)
    x80, y80 = planted_1d(n=80, seed=5)
    f10 = fit_power_law(x10, y10, n_bootstrap=100, seed=5)
    f80 = fit_power_law(x80, y80, n_bootstrap=100, seed=5)
    for name in ("E", "A", "a"):
        assert width(f80.ci[name]) < 0.7 * width(f10.ci[name]), name
        assert f80.se[name] < f10.se[name]


def test_derived_quantity_ci_contains_planted_value():
    x, y = planted_1d(seed=6)
    fit = fit_power_law(x, y, n_bootstrap=100, seed=6)
    dv = fit.derived(lambda p: p["a"] / (p["a"] + 1))
    assert dv.value == pytest.approx(fit.params["a"] / (fit.params["a"] + 1))
    assert inside(a_TRUE / (a_TRUE + 1), dv.ci)
    assert dv.se > 0 and dv.samples.shape == (fit.bootstrap_samples.shape[0],)
    # the bootstrap distribution of the identity is the parameter's own interval
    ident = fit.derived(lambda p: p["a"])
    assert ident.ci == pytest.approx(fit.ci["a"]) and ident.se == pytest.approx(fit.se["a"])
    # a monotone map's percentile interval is the mapped interval
    lo, hi = fit.ci["a"]
    # (equal up to the linear interpolation between order statistics)
    assert dv.ci == pytest.approx([lo / (lo + 1), hi / (hi + 1)], rel=1e-4)


def test_bootstrap_is_reproducible_with_seed_and_varies_without():
    x, y = planted_1d(seed=7)
    f1 = fit_power_law(x, y, n_bootstrap=50, seed=11)
    f2 = fit_power_law(x, y, n_bootstrap=50, seed=11)
    f3 = fit_power_law(x, y, n_bootstrap=50, seed=12)
    assert f1.ci == f2.ci
    assert f1.ci["a"] != f3.ci["a"]
    assert f1.params == f3.params  # the point estimate does not depend on the bootstrap


def test_level_changes_interval_width():
    x, y = planted_1d(seed=8)
    f95 = fit_power_law(x, y, n_bootstrap=100, seed=8, level=0.95)
    f68 = fit_power_law(x, y, n_bootstrap=100, seed=8, level=0.68)
    assert width(f68.ci["a"]) < width(f95.ci["a"])
    assert f68.ci["a"][0] >= f95.ci["a"][0] and f68.ci["a"][1] <= f95.ci["a"][1]


def test_planted_chinchilla_recovered():
    rng = np.random.default_rng(9)
    N = np.repeat(np.logspace(6, 9, 6), 6)
    D = np.tile(np.logspace(8, 11, 6), 6)
    true = {"E": 1.7, "A": 400.0, "a": 0.34, "B": 410.0, "b": 0.28}
    clean = true["E"] + true["A"] * N ** -true["a"] + true["B"] * D ** -true["b"]
    y = clean * np.exp(rng.normal(0, 0.02, N.size))
    fit = fit_chinchilla(N, D, y, n_bootstrap=60, seed=9)
    assert fit.law == "2d" and fit.converged and fit.n_points == 36
    assert set(fit.params) == {"E", "A", "a", "B", "b"}
    for name, v in true.items():
        assert inside(v, fit.ci[name]), (name, v, fit.ci[name])
    assert fit.params["a"] == pytest.approx(true["a"], abs=0.07)
    assert fit.params["b"] == pytest.approx(true["b"], abs=0.07)
    # the fitted surface matches the noise-free law to within the noise level (2%)
    log_err = np.log(fit.predict(N, D) / clean)
    assert np.sqrt(np.mean(log_err**2)) < 0.015 and np.max(np.abs(log_err)) < 0.04
    # the optimiser found a loss no worse than the planted parameters give
    log_true = np.log(clean)
    d = 1e-3
    r = np.abs(np.log(y) - log_true)
    huber_at_truth = np.sum(np.where(r <= d, 0.5 * r**2, d * (r - 0.5 * d)))
    assert fit.loss <= huber_at_truth
    with pytest.raises(FitError, match="N and D"):
        fit.predict(N)


def test_chinchilla_exact_data_precise():
    N = np.repeat(np.logspace(6, 9, 5), 5)
    D = np.tile(np.logspace(8, 11, 5), 5)
    y = 1.7 + 400.0 * N**-0.34 + 410.0 * D**-0.28
    fit = fit_chinchilla(N, D, y, n_bootstrap=0)
    assert fit.params["a"] == pytest.approx(0.34, rel=1e-3)
    assert fit.params["b"] == pytest.approx(0.28, rel=1e-3)
    assert fit.params["E"] == pytest.approx(1.7, rel=1e-3)


def test_to_dict_is_json_safe():
    x, y = planted_1d(seed=10)
    d = fit_power_law(x, y, offset=False, n_bootstrap=20).to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert set(back["params"]) == {"E", "A", "a"}
    assert back["ci"]["E"] == [0.0, 0.0]
    assert back["law"] == "1d" and back["n_points"] == 30 and back["method"] == "huber-lbfgs-bootstrap"
    assert "bootstrap_samples" not in back
    # no bootstrap: NaN intervals become null, still strict JSON
    d0 = fit_power_law(x, y, n_bootstrap=0).to_dict()
    json.dumps(d0, allow_nan=False)
    assert d0["ci"]["a"] == [None, None]


# --------------------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    "x, y, pattern",
    [
        ([1, 2, 3, np.nan, 5], [5, 4, 3, 2, 1], r"x contains non-finite value nan at row 3"),
        ([1, 2, 3, 4, 5], [5, 4, np.inf, 2, 1], r"y contains non-finite value inf at row 2"),
        ([1, 2, 3, 4, 5, 6, 7, -3.0], [8, 7, 6, 5, 4, 3, 2, 1], r"x contains non-positive value -3.0 at row 7"),
        ([1, 2, 3, 4, 5], [5, 4, 0.0, 2, 1], r"y contains non-positive value 0.0 at row 2"),
        ([1, 2, 3, 4, 5], [5, 4, 3, 2], r"same length.*x has 5.*y has 4"),
        ([1, 2, 3, 3, 3], [5, 4, 3, 2, 1], r"too few points.*at least 4 distinct x values, got 3"),
    ],
)
def test_fit_power_law_input_errors(x, y, pattern):
    with pytest.raises(FitError, match=pattern):
        fit_power_law(x, y, n_bootstrap=0)


def test_fiterror_is_valueerror_and_names_custom_columns():
    assert issubclass(FitError, ValueError)
    with pytest.raises(FitError, match=r"params contains non-positive value -1.0 at row 1"):
        fit_power_law([1, -1, 3, 4], [4, 3, 2, 1], names=("params", "loss"), n_bootstrap=0)


def test_point_count_rules():
    x, y = [10.0, 100.0, 1000.0], [3.0, 2.0, 1.5]
    with pytest.raises(FitError, match="too few"):
        fit_power_law(x, y, n_bootstrap=0)  # with E: 4 distinct x needed
    assert fit_power_law(x, y, offset=False, n_bootstrap=0).converged  # without E: 3 suffice
    with pytest.raises(FitError, match="at least 3 distinct x"):
        fit_power_law(x[:2], y[:2], offset=False, n_bootstrap=0)
    N = np.array([1e6, 1e7, 1e8, 1e6, 1e7])
    D = np.array([1e8, 1e8, 1e9, 1e9, 1e10])
    with pytest.raises(FitError, match="at least 6.*got 5"):
        fit_chinchilla(N, D, np.ones(5) * 2, n_bootstrap=0)
    with pytest.raises(FitError, match="2 distinct D values, got 1"):
        fit_chinchilla(np.logspace(6, 9, 6), np.full(6, 1e9), np.linspace(3, 2, 6), n_bootstrap=0)


def test_non_convergence_is_a_clear_error(monkeypatch):
    x, y = planted_1d(seed=0)

    def never(law, theta0, bounds, **kw):
        return theta0, 1.0, False

    monkeypatch.setattr(huber, "minimise", never)
    with pytest.raises(FitError, match="did not converge"):
        fit_power_law(x, y, n_bootstrap=0)

    def nonfinite(law, theta0, bounds, **kw):
        return theta0, math.inf, False

    monkeypatch.setattr(huber, "minimise", nonfinite)
    with pytest.raises(FitError, match="non-finite"):
        fit_power_law(x, y, n_bootstrap=0)


# --------------------------------------------------------------------------- log-log OLS


def test_ols_exact_power_law_slope():
    x = np.logspace(0, 3, 15)
    y = 7.0 * x**-0.37
    f = fit_loglog_ols(x, y)
    assert isinstance(f, LogLogFit)
    assert abs(f.slope - (-0.37)) < 1e-9
    assert abs(f.intercept - math.log(7.0)) < 1e-9
    assert f.r2 == pytest.approx(1.0, abs=1e-12) and f.n_points == 15
    assert f.se < 1e-7 and f.exponent == pytest.approx(0.37, abs=1e-9)  # se: rounding noise of exact data


def test_ols_range_restriction_and_offset():
    x = np.logspace(0, 4, 41)
    # power law up to 1e3, then a plateau that would bend an unrestricted fit
    y = np.where(x <= 1e3, 5.0 * x**-0.5, 5.0 * 1e3**-0.5)
    full = fit_loglog_ols(x, y)
    assert abs(full.slope + 0.5) > 0.05
    f = fit_loglog_ols(x, y, xmin=10.0, xmax=1e3)
    assert abs(f.slope + 0.5) < 1e-9
    assert f.n_points == int(np.sum((x >= 10) & (x <= 1e3))) and f.xmin == 10.0 and f.xmax == 1e3
    # offset subtracted before logging
    g = fit_loglog_ols(x, 2.0 + 3.0 * x**-0.8, offset=2.0)
    assert abs(g.slope + 0.8) < 1e-9


def test_ols_ci_is_t_interval_and_covers_truth():
    from scipy import stats

    rng = np.random.default_rng(12)
    x = np.logspace(0, 3, 12)
    y = 4.0 * x**-0.3 * np.exp(rng.normal(0, 0.05, 12))
    f = fit_loglog_ols(x, y, level=0.9)
    t = stats.t.ppf(0.95, 10)
    assert f.ci == pytest.approx([f.slope - t * f.se, f.slope + t * f.se])
    assert inside(-0.3, f.ci)
    # cross-check against scipy's linregress
    ref = stats.linregress(np.log(x), np.log(y))
    assert f.slope == pytest.approx(ref.slope) and f.se == pytest.approx(ref.stderr)
    assert f.r2 == pytest.approx(ref.rvalue**2)


def test_ols_errors():
    with pytest.raises(FitError, match="at least 3 distinct x"):
        fit_loglog_ols([1, 2, 3, 4], [4, 3, 2, 1], xmin=3)
    with pytest.raises(FitError, match=r"y - offset \(2.0\) contains non-positive value -0.5 at row 1"):
        fit_loglog_ols([1, 2, 3, 4], [3.0, 1.5, 2.5, 2.2], offset=2.0)
    with pytest.raises(FitError, match="xmin"):
        fit_loglog_ols([1, 2, 3, 4], [4, 3, 2, 1], xmin=3, xmax=2)


# --------------------------------------------------------------------------- Zipf


def test_rank_frequency_slope_recovers_zipf_exponent():
    rng = np.random.default_rng(13)
    k = np.arange(1, 1001)
    p = k**-1.5 / np.sum(k**-1.5)
    counts = rng.permutation(rng.multinomial(1_000_000, p))  # order must not matter
    f = rank_frequency_slope(counts, rank_min=1, rank_max=100)
    assert f.slope == pytest.approx(-1.5, abs=0.03)
    assert f.n_points == 100 and f.method == "ols-rank-frequency"
    assert f.ci[0] < f.slope < f.ci[1]
    # exact Zipf counts: slope exact
    exact = rank_frequency_slope(1e6 * k[:50] ** -1.5)
    assert abs(exact.slope + 1.5) < 1e-9


def test_rank_frequency_ignores_zero_counts_and_checks_input():
    counts = np.array([100, 50, 33, 25, 0, 0])
    f = rank_frequency_slope(counts)
    assert f.n_points == 4 and f.xmax == 4.0
    with pytest.raises(FitError, match="negative value -1.0 at row 2"):
        rank_frequency_slope([3, 2, -1, 1])
    with pytest.raises(FitError, match="too few"):
        rank_frequency_slope([5, 3, 0, 0])


def test_discrete_powerlaw_mle_recovers_exponent():
    rng = np.random.default_rng(14)
    data = rng.zipf(2.5, size=4000)
    f = fit_discrete_powerlaw(data, xmin=1)
    assert inside(2.5, f.ci)
    assert f.alpha == pytest.approx(2.5, abs=0.06)
    assert f.xmin == 1.0 and f.n == 4000 and f.n_total == 4000
    fb = fit_discrete_powerlaw(data, xmin=1, n_bootstrap=40, seed=0)
    assert fb.alpha == f.alpha and inside(2.5, fb.ci) and fb.method.endswith("bootstrap")
    assert fb.se == pytest.approx(f.se, rel=0.4)
    # xmin chosen by KS minimisation still finds the exponent
    fk = fit_discrete_powerlaw(data)
    assert fk.xmin >= 1 and fk.alpha == pytest.approx(2.5, abs=0.15)
    json.dumps(f.to_dict(), allow_nan=False)


def test_discrete_powerlaw_ci_coverage():
    # the asymptotic interval (exact discrete Fisher information) covers the truth ~95% of the time
    rng = np.random.default_rng(15)
    hits = sum(inside(2.2, fit_discrete_powerlaw(rng.zipf(2.2, size=500), xmin=1).ci) for _ in range(40))
    assert hits >= 33


def test_discrete_powerlaw_input_errors():
    with pytest.raises(FitError, match="integers.*2.5 at row 1"):
        fit_discrete_powerlaw([1, 2.5, 3, 4])
    with pytest.raises(FitError, match="too few"):
        fit_discrete_powerlaw([1, 1])


# --------------------------------------------------------------------------- theory checks


def test_theory_check_rules():
    # a measured prediction (with an interval): the interval of the difference (MOVER) must contain 0
    c = theory_check("t", 0.3, [0.25, 0.35], 0.33, [0.32, 0.40])
    assert c.consistent is True and c.rule == "interval-difference"
    assert c.difference == pytest.approx(-0.03)
    assert c.difference_ci == pytest.approx([-0.03 - math.hypot(0.05, 0.07), -0.03 + math.hypot(0.05, 0.01)])
    # overlapping 95% intervals are no longer enough: [0.25, 0.33] and [0.32, 0.40] overlap, the difference does not
    # contain 0 (-0.07 + hypot(0.04, 0.04) = -0.013)
    c = theory_check("t", 0.29, [0.25, 0.33], 0.36, [0.32, 0.40])
    assert c.consistent is False and c.rule == "interval-difference"
    # a constant prediction: it must lie inside the measured interval
    c = theory_check("t", 0.3, [0.25, 0.35], 0.33)
    assert c.consistent is True and c.rule == "ci-contains" and c.difference_ci is None
    c = theory_check("t", 0.3, [0.35, 0.25], 0.40)  # endpoints in either order
    assert c.consistent is False and c.measured_ci == [0.25, 0.35] and c.predicted_ci is None
    none = theory_check("t", 0.3, [math.nan, math.nan], 0.3)
    assert none.consistent is False and none.rule == "no-interval"
    d = c.to_dict()
    assert d["name"] == "t" and d["consistent"] is False and d["rule"] == "ci-contains"
    json.dumps(d, allow_nan=False)


def test_interval_difference_rule_is_a_5_percent_test_where_overlap_was_0_6_percent():
    # two independent unbiased normal estimates of one value, with exact 95% intervals: the rule rejects ~5%
    rng = np.random.default_rng(0)
    z = 1.959964
    m, p = rng.normal(0.3, 0.02, 4000), rng.normal(0.3, 0.03, 4000)
    rejected = [not theory_check("t", a, [a - z * 0.02, a + z * 0.02], b, [b - z * 0.03, b + z * 0.03]).consistent
                for a, b in zip(m, p)]
    overlap_rejected = np.abs(m - p) > z * (0.02 + 0.03)
    assert 0.04 < np.mean(rejected) < 0.06
    assert np.mean(overlap_rejected) < 0.02  # the earlier rule: far below its nominal 5%


def _planted_fit(alpha, seed, n=12, noise=0.02):
    rng = np.random.default_rng(seed)
    x = np.logspace(1, 4, n)
    return fit_power_law(x, (0.5 + 3 * x**-alpha) * np.exp(rng.normal(0, noise, n)), n_bootstrap=100, seed=seed)


def test_bootstrap_difference_flags_a_clear_mismatch_and_passes_a_planted_match():
    alpha = 0.4
    fit_n = _planted_fit(alpha, seed=1)
    ratio = alpha / (alpha + 1)
    # alpha_D measured by an independent fit whose exponent is planted at alpha_N/(alpha_N+1) ...
    match = _planted_fit(ratio, seed=2)
    # ... and one planted far from it
    mismatch = _planted_fit(0.6, seed=3)
    ok = {c.name: c for c in scaling_theory_checks(alpha_n=fit_n, alpha_d=match, alpha=alpha)}
    bad = {c.name: c for c in scaling_theory_checks(alpha_n=fit_n, alpha_d=mismatch, alpha=alpha)}
    key = "alpha_D vs alpha_N/(alpha_N+1)"
    assert ok[key].rule == bad[key].rule == "bootstrap-difference"
    assert ok[key].consistent is True and bad[key].consistent is False
    lo, hi = bad[key].difference_ci
    assert lo > 0 and bad[key].difference == pytest.approx(mismatch.params["a"] - fit_n.params["a"] / (1 + fit_n.params["a"]))
    # against the constant alpha/(alpha+1): the planted exponent is inside its interval, the other is not
    assert ok["alpha_D vs alpha/(alpha+1)"].rule == "ci-contains"
    assert ok["alpha_D vs alpha/(alpha+1)"].consistent is True
    assert bad["alpha_D vs alpha/(alpha+1)"].consistent is False
    # the predicted interval is the fit's own (BCa) interval of alpha_N/(alpha_N+1)
    assert ok[key].predicted_ci == pytest.approx(fit_n.derived(lambda p: p["a"] / (p["a"] + 1)).ci)


def test_scaling_theory_checks_with_planted_exponents():
    alpha = 0.4
    # alpha_N fitted on planted data with exponent alpha (bootstrap samples propagate)
    rng = np.random.default_rng(16)
    x = np.logspace(1, 4, 30)
    fit_n = fit_power_law(x, (0.5 + 3 * x**-alpha) * np.exp(rng.normal(0, 0.01, 30)), n_bootstrap=100, seed=1)
    good_d = (alpha / (alpha + 1), (0.27, 0.30))
    checks = {c.name: c for c in scaling_theory_checks(alpha_n=fit_n, alpha_d=good_d, alpha_s=(0.6, (0.55, 0.65)),
                                                        alpha=alpha)}
    assert checks["alpha_D vs alpha_N/(alpha_N+1)"].consistent is True
    assert checks["alpha_D vs alpha_N/(alpha_N+1)"].rule == "interval-difference"  # alpha_D has no samples
    assert checks["alpha_N vs alpha"].consistent is True and checks["alpha_N vs alpha"].rule == "ci-contains"
    assert checks["alpha_D vs alpha/(alpha+1)"].consistent is True
    assert checks["alpha_S vs alpha/(alpha+1)"].consistent is False  # 0.6 vs 0.286
    assert checks["alpha_S vs alpha_N/(alpha_N+1)"].consistent is False
    # predicted CI of alpha_N/(alpha_N+1) comes from the bootstrap distribution of alpha_N
    pred = checks["alpha_D vs alpha_N/(alpha_N+1)"]
    assert pred.predicted_ci == pytest.approx(fit_n.derived(lambda p: p["a"] / (p["a"] + 1)).ci)
    assert checks["alpha_N vs alpha"].predicted_ci is None


def test_scaling_theory_checks_endpoint_transform_and_zipf():
    # no samples: CI endpoints pushed through the monotone map
    checks = scaling_theory_checks(alpha_n=(0.4, (0.3, 0.5)), alpha_d=(0.2, (0.18, 0.22)))
    (c,) = checks
    assert c.predicted == pytest.approx(0.4 / 1.4)
    assert c.predicted_ci == pytest.approx([0.3 / 1.3, 0.5 / 1.5])
    assert c.consistent is False  # [0.18, 0.22] vs [0.231, 0.333]
    # Zipf slope of cluster sizes vs -(alpha_N + 1)  (paper: -1.24 vs -1.083)
    zipf = LogLogFit(-1.24, 0.0, [-1.30, -1.18], 0.03, [0, 0], 0, 0.99, 50)
    (z,) = scaling_theory_checks(alpha_n=(0.083, (0.08, 0.086)), zipf_slope=zipf)
    assert z.name == "zipf_slope vs -(alpha_N+1)"
    assert z.predicted == pytest.approx(-1.083) and z.predicted_ci == pytest.approx([-1.086, -1.08])
    assert z.consistent is False
    # an OLS fit as an exponent: -slope with flipped interval
    e = as_exponent(LogLogFit(-0.5, 0.0, [-0.6, -0.4], 0.05, [0, 0], 0, 0.9, 10))
    assert e.value == 0.5 and e.ci == pytest.approx([0.4, 0.6])
