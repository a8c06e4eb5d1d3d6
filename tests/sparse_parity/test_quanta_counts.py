"""Counting quanta: n = N/C (paper Section 2) and subtasks learned vs D with early stopping (paper Figure 9)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from flows.running import run_study
from schemas.config import load_config
from schemas.sparse_parity import SparseParityConfig
from tasks.sparse_parity.quanta import params_per_quantum, quanta_table
from tests.sparse_parity.test_uniform_control import TINY


def _runs(alpha: float, c: float) -> pd.DataFrame:
    """Fresh-data models that learned exactly N / c subtasks, and finite-data models (width 64) that learn
    D^(1/(alpha+1)) subtasks at their best step (the loss is lowest there) and forget some afterwards."""
    rows = []
    for w, jitter in zip((8, 16, 32, 64, 128), (1.1, 0.9, 1.05, 0.95, 1.0)):  # C varies a little by model
        n_params = w * 250
        for step in (10, 100):
            learned = int(round(jitter * n_params / c)) if step == 100 else 0
            rows.append(dict(model_id=f"w{w}", width=w, n_params=n_params, data_size=-1, seed=0, alpha=alpha,
                             step=step, mean_loss=1.0 / step, subtasks_learned=learned))
    for d in (1_000, 4_000, 16_000, 64_000):
        learned = d ** (1 / (alpha + 1))
        for step, loss, n in ((10, 0.5, 0), (100, 0.1, learned), (1000, 0.3, learned / 2)):
            rows.append(dict(model_id=f"d{d}", width=64, n_params=16000, data_size=d, seed=0, alpha=alpha, step=step,
                             mean_loss=loss, subtasks_learned=int(round(n))))
    return pd.DataFrame(rows)


def test_planted_counts_give_slope_one_the_planted_c_and_figure_9s_exponent():
    q = quanta_table(_runs(alpha=0.4, c=100.0)).set_index("quantity")
    assert q.loc["subtasks_vs_N", "value"] == pytest.approx(1.0, abs=0.05) and q.loc["subtasks_vs_N", "consistent"]
    assert q.loc["params_per_quantum", "value"] == pytest.approx(100.0, rel=0.05)
    lo, hi = q.loc["params_per_quantum", ["ci_lo", "ci_hi"]]
    assert lo <= q.loc["params_per_quantum", "value"] <= hi
    # early stopping: the count at the best step, D^(1/1.4), not the forgetting after it
    assert q.loc["subtasks_vs_D", "value"] == pytest.approx(1 / 1.4, abs=0.02)
    assert q.loc["subtasks_vs_D", "theory"] == pytest.approx(1 / 1.4)


def test_c_needs_two_models_and_the_uniform_control_has_no_d_theory():
    with pytest.raises(Exception, match=">= 2 models"):
        params_per_quantum(np.array([100.0, 200.0]), np.array([0, 3]), 0.95)
    value, (lo, hi) = params_per_quantum(np.array([100.0, 400.0]), np.array([1, 4]), 0.95)
    assert value == pytest.approx(100.0) and lo == pytest.approx(100.0) and hi == pytest.approx(100.0)
    q = quanta_table(_runs(alpha=0.0, c=100.0)).set_index("quantity")
    assert math.isnan(q.loc["subtasks_vs_D", "theory"]) and math.isnan(q.loc["subtasks_vs_N", "theory"])


def test_a_tiny_study_counts_quanta(prefect_server, tmp_path):
    cfg = load_config(SparseParityConfig, TINY)
    out = run_study("sparse-parity", cfg, str(tmp_path / "store"))
    res = out["results"]
    assert "quanta" in out["artifacts"] and res["subtasks_vs_N_theory"] == 1.0
    assert {"subtasks_vs_N", "params_per_quantum", "params_per_quantum_ci"} <= set(res)
    if res["params_per_quantum"] is not None:
        lo, hi = res["params_per_quantum_ci"]
        assert lo <= res["params_per_quantum"] <= hi
