"""Size-exponent estimators: planted finite Zipf samples recovered inside their intervals; the envelope's 1/rank
artefact; the MLE's mapping to a rank exponent."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.stats.cluster_sizes import (E_GRID, _log_norms, envelope_exponent, finite_zipf_exponent, mle_exponent,
                                       rank_mle, rank_slope_exponent, ranked_sizes, size_envelope)


def _zipf_counts(e: float, n: int, k: int, seed: int) -> np.ndarray:
    p = np.arange(1, k + 1, dtype=float) ** -e
    return np.random.default_rng(seed).multinomial(n, p / p.sum())


def test_rank_mle_recovers_exact_zipf_sizes():
    sizes = np.round(1e6 * np.arange(1, 41, dtype=float) ** -1.7)
    t = rank_mle(sizes[None, :], 10, _log_norms(40))[0]
    assert t == pytest.approx(1.7, abs=0.003)
    assert math.isnan(rank_mle(np.array([[50, 9, 8]]), 10, _log_norms(3))[0])  # fewer than 3 ranks >= 10


@pytest.mark.parametrize("e", [1.1, 1.6, 2.0])
def test_finite_zipf_recovers_planted_multinomial_exponent_within_its_interval(e):
    hits, estimates = 0, []
    for draw in range(8):
        fit = finite_zipf_exponent(_zipf_counts(e, 3000, 50, 1000 + draw), n_sim=120, seed=draw)
        estimates.append(fit.exponent)
        hits += fit.covers(e)
        assert fit.ci[0] < fit.exponent < fit.ci[1]
    assert abs(np.mean(estimates) - e) < 0.03
    assert hits >= 6  # 95% intervals: P(fewer than 6 of 8 | coverage 0.95) = 0.006


def test_finite_zipf_is_deterministic_given_the_seed_and_names_its_choices():
    c = _zipf_counts(1.4, 2000, 40, 3)
    a, b = finite_zipf_exponent(c, n_sim=50, seed=7), finite_zipf_exponent(c, n_sim=50, seed=7)
    assert (a.exponent, a.ci) == (b.exponent, b.ci)
    assert a.estimator == "finite_zipf" and a.choices["min_size"] == 10 and a.choices["n_categories"] == len(c[c > 0])
    few = finite_zipf_exponent([500, 20, 5, 3], n_sim=20)
    assert math.isnan(few.exponent) and "fewer than 3 clusters of >= 10 rows" in few.note


def test_envelope_of_equal_splits_reads_one_whatever_the_data():
    n = 3000
    sizes_by_k = {k: np.full(k, n // k) for k in (10, 20, 40, 80, 160)}  # no structure at all: equal parts
    env = size_envelope(sizes_by_k, n)
    ks = np.array(sorted(sizes_by_k))
    smallest_k_with_rank = ks[np.searchsorted(ks, np.arange(1, 161))]
    assert env == pytest.approx((n // smallest_k_with_rank) / n)  # 1/k at every rank <= k: a staircase on 1/rank
    fit = envelope_exponent(sizes_by_k, n)
    assert 0.8 < fit.exponent < 1.05 and fit.ci[0] < fit.ci[1]


def test_rank_slope_and_mle_on_a_rank_law():
    sizes = np.round(5000 * np.arange(1, 101, dtype=float) ** -1.5).astype(int)
    assert rank_slope_exponent(sizes[:30], 30).exponent == pytest.approx(1.5, abs=0.01)
    fit = mle_exponent(_zipf_counts(1.0, 20000, 2000, 0), 2000)
    assert fit.choices["alpha"] > 1 and fit.exponent == pytest.approx(1 / (fit.choices["alpha"] - 1))
    assert fit.ci[0] <= fit.exponent <= fit.ci[1]
    assert ranked_sizes([3, 3, 1, 7, 7, 7]).tolist() == [3, 2, 1]


def test_belt_grid_covers_the_calibration_range():
    assert E_GRID[0] < 1.1 and E_GRID[-1] > 2.0
