"""p(L) and L·p(L) on the paper's bins, sharp transitions, alpha_N resampled over documents (and models)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from schemas.lm import LOSS_HIST_BINS, LOSS_HIST_MAX_BITS, AnalysisConfig
from tasks.lm.distributions import (document_sums, loss_distribution, resampled_alpha_n, transitions_table)
from tasks.stats import FitError
from tasks.stats.resampling import resampled_loglog_slope

LN2 = math.log(2)


def test_the_integrand_integrates_to_the_mean_loss_and_the_density_to_one():
    rng = np.random.default_rng(0)
    bits = np.stack([rng.exponential(4.0, 20000), rng.exponential(1.0, 20000)], axis=1)
    bits = np.minimum(bits, LOSS_HIST_MAX_BITS - 1e-9)                     # all inside the paper's range
    d = loss_distribution(bits * LN2)
    width = np.diff(d["bin_edges_bits"])
    assert d["density"].shape == (2, LOSS_HIST_BINS) and d["bin_edges_bits"][-1] == LOSS_HIST_MAX_BITS
    assert (d["density"] * width).sum(axis=1) == pytest.approx([1.0, 1.0])
    # area under L·p(L) = mean loss, to the bin width (0.018 bits)
    assert (d["integrand"] * width).sum(axis=1) == pytest.approx(bits.mean(axis=0), abs=0.02)
    assert d["mean_loss_bits"] == pytest.approx(bits.mean(axis=0))
    assert d["fraction_beyond"].tolist() == [0.0, 0.0]
    beyond = loss_distribution(np.array([[1.0], [30.0 * LN2]]))             # one of two tokens past 18 bits
    assert beyond["fraction_beyond"].tolist() == [0.5]


def test_transitions_count_first_learned_tokens_and_those_that_stay():
    bits = np.array([
        [0.1, 0.1, 0.1],   # learned at m0, stays
        [5.0, 0.2, 0.1],   # learned at m1, stays
        [5.0, 0.2, 3.0],   # learned at m1, forgotten at m2
        [5.0, 4.0, 0.1],   # first learned by the last model: not counted (the paper's curves[:, :-1])
        [6.0, 6.0, 6.0],   # never
    ])
    t = transitions_table(bits * LN2, ["m0", "m1", "m2"], learned_bits=0.3)
    assert t.first_learned.tolist() == [1, 2, 0] and t.stay_learned.tolist() == [1, 1, 0]
    assert t.stay_fraction.iloc[0] == 1.0 and t.stay_fraction.iloc[1] == 0.5 and math.isnan(t.stay_fraction.iloc[2])
    change01 = bits[:, 1] - bits[:, 0]
    assert t.change_mean.iloc[0] == pytest.approx(change01.mean())
    assert t.improved_fraction.iloc[0] == pytest.approx((change01 < 0).mean())
    assert t.next_model.tolist() == ["m1", "m2", ""]


def test_document_sums_skip_unpredicted_tokens():
    loss = np.array([[np.nan, np.nan], [1.0, 0.5], [3.0, 1.5], [np.nan, np.nan], [2.0, 2.0]])
    sums, counts = document_sums(loss, np.array([0, 3, 5]))
    assert sums.tolist() == [[4.0, 2.0], [2.0, 2.0]] and counts.tolist() == [2.0, 1.0]


def _planted_documents(alpha: float, n_docs: int, seed: int):
    """Documents whose mean loss follows N^-alpha exactly in expectation; each document its own level."""
    rng = np.random.default_rng(seed)
    n = np.array([1e6, 3e6, 1e7, 3e7, 1e8])
    level = rng.lognormal(0.0, 0.5, n_docs)
    counts = rng.integers(50, 200, n_docs).astype(float)
    sums = counts[:, None] * level[:, None] * (n / n[0]) ** -alpha
    return sums, counts, n


def test_resampled_slope_recovers_a_planted_exponent_and_models_widen_the_interval():
    sums, counts, n = _planted_documents(0.08, 300, 0)
    docs = resampled_loglog_slope(sums, counts, n, n_resamples=200, resample_points=False)
    both = resampled_loglog_slope(sums, counts, n, n_resamples=200, resample_points=True)
    assert docs.slope == pytest.approx(-0.08, abs=1e-9)
    # every document scales alike here, so document resampling alone leaves the slope exact
    assert docs.ci[0] == pytest.approx(-0.08, abs=1e-9) and docs.ci[1] == pytest.approx(-0.08, abs=1e-9)
    # documents that scale differently: the interval covers the truth and has width
    rng = np.random.default_rng(1)
    noisy = sums * rng.lognormal(0.0, 0.05, sums.shape)
    r = resampled_loglog_slope(noisy, counts, n, n_resamples=300, resample_points=False)
    assert r.ci[0] < -0.08 < r.ci[1] and r.ci[1] - r.ci[0] > 0
    assert both.n_resamples <= 200 and both.n_groups == 300
    with pytest.raises(FitError, match="3 distinct"):
        resampled_loglog_slope(sums[:, :2], counts, n[:2], n_resamples=10, resample_points=False)


def test_resampled_alpha_n_respects_the_fit_window():
    sums, counts, n = _planted_documents(0.1, 100, 2)
    sums[:, -1] = sums[:, 0]                         # the largest model is off the law
    rows = resampled_alpha_n(sums, counts, n, AnalysisConfig(bootstrap=50, fit_max_params=5e7))
    assert rows.n_points.tolist() == [4, 4]
    assert rows.value.iloc[0] == pytest.approx(0.1, abs=1e-9)
    assert rows.quantity.tolist() == ["alpha_N (resampled documents)", "alpha_N (resampled documents and models)"]
