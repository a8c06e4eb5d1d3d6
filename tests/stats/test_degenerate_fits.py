"""Data a decreasing power law does not describe get a refusal or a warning, not confident numbers."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.stats import FitError, fit_chinchilla, fit_power_law

X = np.logspace(1, 4, 12)


def test_constant_loss_is_refused():
    with pytest.raises(FitError, match=r"loss is constant \(all 12 values are 2.5\): there is no scaling law"):
        fit_power_law(X, np.full(12, 2.5), names=("params", "loss"), n_bootstrap=0)
    N, D = np.repeat([1e6, 1e7, 1e8], 3), np.tile([1e8, 1e9, 1e10], 3)
    with pytest.raises(FitError, match="y is constant"):
        fit_chinchilla(N, D, np.full(9, 3.0), n_bootstrap=0)


def test_rising_loss_is_flagged():
    y = (1.0 + 0.01 * X**0.3) * np.exp(np.random.default_rng(0).normal(0, 0.01, 12))
    fit = fit_power_law(X, y, names=("params", "loss"), n_bootstrap=0)
    assert "not-decreasing" in fit.warnings
    assert "loss does not decrease with params" in fit.warnings["not-decreasing"]
    assert fit.to_dict()["warnings"] == fit.warnings


def test_trendless_noise_is_flagged():
    y = 2.0 * np.exp(np.random.default_rng(1).normal(0, 0.05, 12))
    fit = fit_power_law(X, y, n_bootstrap=0)
    assert set(fit.warnings) & {"no-trend", "not-decreasing"}


def test_clean_decreasing_law_has_no_warnings():
    y = (1.5 + 20 * X**-0.6) * np.exp(np.random.default_rng(2).normal(0, 0.02, 12))
    fit = fit_power_law(X, y, n_bootstrap=0)
    assert fit.warnings == {}


def test_exponent_at_its_bound_is_flagged():
    # a drop far steeper than the exponents allowed (a <= 10): the best exponent runs to the edge of its range
    y = 1.0 + 100.0 * (X / 10.0) ** -15.0
    fit = fit_power_law(X, y, n_bootstrap=0)
    assert "at-bound" in fit.warnings and "a at the edge" in fit.warnings["at-bound"]
