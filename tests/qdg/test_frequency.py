"""The frequency claim where the answer is known: frequency-sampled sparse parity (tasks/qdg/frequency.py)."""
from __future__ import annotations

import numpy as np
import pytest

from fault_helpers import task_states
from schemas.config import load_config
from schemas.qdg import QDGSparseParityConfig
from tasks.qdg.frequency import true_exponent
from tasks.qdg.parity import frequency_counts
from tasks.sparse_parity.data import zipf_probs


def test_frequency_sampling_stops_when_the_rarest_subtask_has_its_samples():
    p = zipf_probs(20, 0.4)
    learned = np.arange(10)
    counts = frequency_counts(p, learned, 10, seed=0)
    assert counts.min() == 10 and np.array_equal(counts, frequency_counts(p, learned, 10, seed=0))
    # the shares follow the task's distribution restricted to the learned subtasks (many draws: within 3 se)
    many = frequency_counts(p, learned, 2000, seed=1)
    share, want = many / many.sum(), p[learned] / p[learned].sum()
    assert np.all(np.abs(share - want) < 3 * np.sqrt(want * (1 - want) / many.sum()) + 1e-3)
    assert not np.array_equal(counts, frequency_counts(p, learned, 10, seed=2))


def test_the_true_exponent_is_alpha_plus_one_over_the_most_frequent_ranks():
    p = zipf_probs(50, 0.4)
    assert true_exponent(p, np.arange(12)) == pytest.approx(1.4)
    assert true_exponent(p, np.array([0, 1, 2, 3, 9, 30])) != pytest.approx(1.4, abs=0.05)  # gaps change it


@pytest.mark.usefixtures("prefect_server")
def test_frequency_sampled_parity_reports_each_estimator_against_the_true_exponent(project_root, store_root):
    """The modular control's clusters are the subtasks, so its true-label fit is the estimator alone: its interval
    covers the planted exponent. Every run gets a row per estimator; a rerun is Cached."""
    from flows.qdg_sparse_parity import FLOW

    cfg = load_config(QDGSparseParityConfig, project_root / "configs" / "qdg" / "sparse_parity_tiny.toml",
                      ["model.sampling='frequency'", "representations=['attribution']"])
    state = FLOW(config=cfg, store=store_root, return_state=True)
    freq = state.result(raise_on_failure=True)["results"]["frequency"]
    runs = freq["runs"]
    assert set(runs) == {"study-s0/attribution:none", "modular-s0/attribution:none"}
    for r in runs.values():
        assert set(r) == {"merged_finite_zipf", "rank_slope", "powerlaw_mle", "true_labels"}
    oracle = runs["modular-s0/attribution:none"]["true_labels"]
    assert oracle["covers"] and oracle["ci"][0] <= freq["true_exponent"] <= oracle["ci"][1]
    assert freq["n"] > 20 and freq["true_exponent"] > 1
    again = FLOW(config=cfg, store=store_root, return_state=True)
    assert set(task_states(again.state_details.flow_run_id).values()) == {"Cached"}
