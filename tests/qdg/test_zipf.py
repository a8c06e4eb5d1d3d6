"""Zipf stage: rank-frequency slopes, the MLE exponent and the envelope of cluster sizes, against -(alpha_N + 1)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from schemas.qdg import ZipfConfig
from tasks.qdg.clustering import labels_table
from tasks.qdg.zipf import (alpha_n_from_fits, cluster_sizes, size_envelope, sizes_from_labels, zipf_analysis,
                            zipf_row, zipf_table)


def _planted_sizes(k: int, slope: float, top: int = 20000) -> np.ndarray:
    """Sizes exactly on size = top * rank^slope (rounded), ranks 1..k."""
    return np.round(top * np.arange(1, k + 1, dtype=float) ** slope).astype(np.int64)


def _labels_for(sizes: np.ndarray, k: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    return labels_table(np.arange(labels.size), labels, k, 0)


def _fits(value, lo, hi) -> pd.DataFrame:
    return pd.DataFrame([{"quantity": "alpha_N", "value": value, "ci_lo": lo, "ci_hi": hi, "E": 0.0, "A": 1.0,
                          "n_points": 5, "method": "test", "note": ""}])


def test_cluster_sizes_are_ranked_with_empty_clusters():
    assert cluster_sizes(np.array([2, 0, 2, 2, 1]), 4).tolist() == [3, 1, 1, 0]
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        cluster_sizes(np.array([0, 2]), 2)


def test_planted_rank_frequency_slope_is_recovered_and_checked_against_alpha_n():
    sizes = _planted_sizes(150, -1.3)
    cfg = ZipfConfig(rank_max=60)  # ranks where rounding is negligible
    row = zipf_row(sizes, "k", 150, int(sizes.sum()), (0.3, [0.25, 0.35]), cfg)
    assert row["slope_ci_lo"] <= -1.3 <= row["slope_ci_hi"] and row["slope"] == pytest.approx(-1.3, abs=0.01)
    assert (row["rank_min"], row["rank_max"]) == (1, 60)
    assert row["predicted_slope"] == pytest.approx(-1.3)
    assert (row["predicted_ci_lo"], row["predicted_ci_hi"]) == pytest.approx((-1.35, -1.25))
    assert row["consistent"] == "yes"
    assert zipf_row(sizes, "k", 150, int(sizes.sum()), (0.9, [0.85, 0.95]), cfg)["consistent"] == "no"
    assert zipf_row(sizes, "k", 150, int(sizes.sum()), (0.3, None), cfg)["consistent"] == "yes"
    no_prediction = zipf_row(sizes, "k", 150, int(sizes.sum()), None, cfg)
    assert no_prediction["consistent"] == "n/a" and "no alpha_N" in no_prediction["note"]


def test_mle_exponent_of_sizes_drawn_from_a_power_law_is_recovered():
    exponent = 1.8
    sizes = stats.zipf(exponent).rvs(size=3000, random_state=np.random.default_rng(11))
    row = zipf_row(np.sort(sizes)[::-1], "k", 3000, int(sizes.sum()), None, ZipfConfig(bootstrap=0, mle_xmin=1))
    assert row["exponent_mle_ci_lo"] <= exponent <= row["exponent_mle_ci_hi"]
    assert row["exponent_mle_ci_hi"] - row["exponent_mle_ci_lo"] < 0.15
    assert row["slope_from_mle"] == pytest.approx(-1 / (row["exponent_mle"] - 1))
    assert row["mle_xmin"] == 1


def test_envelope_is_the_largest_normalised_size_per_rank_and_its_slope_is_the_planted_one():
    env = size_envelope({3: np.array([6, 3, 1]), 4: np.array([5, 4, 1, 0])}, n_tokens=10)
    assert env.tolist() == [0.6, 0.4, 0.1, 0.0]
    # three clusterings of the same tokens on one Zipf law, cut at different k: the envelope follows the law
    by_k = {k: _planted_sizes(k, -1.2) for k in (40, 80, 160)}
    table = zipf_table(by_k, 50000, (0.2, [0.1, 0.3]), ZipfConfig(rank_max=60, bootstrap=0))
    assert table["scope"].tolist() == ["k", "k", "k", "envelope"] and table["k"].tolist() == [40, 80, 160, 0]
    envelope = table.iloc[-1]
    assert envelope["slope"] == pytest.approx(-1.2, abs=0.01) and envelope["consistent"] == "yes"
    assert np.isnan(envelope["exponent_mle"])


def test_too_few_clusters_give_nan_and_a_note_not_an_error():
    row = zipf_row(np.array([5, 3]), "k", 2, 8, None, ZipfConfig(bootstrap=0))
    assert np.isnan(row["slope"]) and np.isnan(row["exponent_mle"]) and "too few points" in row["note"]


def test_alpha_n_is_read_from_the_lm_fits_table():
    assert alpha_n_from_fits(_fits(0.08, 0.06, 0.1)) == (0.08, [0.06, 0.1])
    assert alpha_n_from_fits(_fits(0.08, np.nan, np.nan)) == (0.08, None)
    assert alpha_n_from_fits(_fits(np.nan, np.nan, np.nan)) is None and alpha_n_from_fits(None) is None


def test_sizes_from_labels_needs_one_clustering_per_k_over_the_same_tokens():
    a = _labels_for(np.array([5, 3, 2]), 3)
    sizes, n = sizes_from_labels([a, _labels_for(np.array([4, 3, 2, 1]), 4)])
    assert n == 10 and sizes[3].tolist() == [5, 3, 2] and sizes[4].tolist() == [4, 3, 2, 1]
    with pytest.raises(ValueError, match="two clusterings with k = 3"):
        sizes_from_labels([a, a])
    with pytest.raises(ValueError, match="not the same tokens"):
        sizes_from_labels([a, _labels_for(np.array([4, 3, 2, 2]), 4)])


def test_zipf_task_writes_a_validated_table_from_labels_and_lm_fits(store):
    refs = [store.write_table("qdg.labels", _labels_for(_planted_sizes(20, -1.1, top=600), 20))]
    fits = store.write_table("lm.fits", _fits(0.1, 0.05, 0.15))
    ref = zipf_analysis.fn(refs, fits, cfg=ZipfConfig(bootstrap=20), store=store.url)
    table = store.read_table(ref)
    assert ref.kind == "qdg.zipf" and table["scope"].tolist() == ["k", "envelope"]
    row = table.iloc[0]
    assert row["k"] == 20 and row["slope_ci_lo"] <= -1.1 <= row["slope_ci_hi"] and row["consistent"] == "yes"
    assert row["alpha_N"] == pytest.approx(0.1) and row["predicted_slope"] == pytest.approx(-1.1)
    assert set(ref.inputs) == {refs[0].content_hash, fits.content_hash}
