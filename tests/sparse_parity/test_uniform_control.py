"""The uniform-frequency control (paper: experiments/P-scaling-uniform-0): alpha = 0 only with uniform
frequencies, no exponent fitted, and the step test that asks whether the loss falls in one step with N."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from flows.running import run_study
from schemas import ConfigError
from schemas.config import load_config
from schemas.sparse_parity import FitConfig, SparseParityConfig
from tasks.sparse_parity.analysis import UNIFORM_NOTE, fit_exponents, runs_table, step_fraction, step_test

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/sparse_parity/tiny.toml"


def test_alpha_zero_is_the_uniform_control_and_nothing_else():
    cfg = load_config(SparseParityConfig, TINY, ["task.frequencies=uniform", "task.alpha=0"])
    assert cfg.task.alpha == 0
    with pytest.raises(ConfigError, match=r"task.alpha: .*alpha must be > 0 for Zipf frequencies.*\(got 0"):
        load_config(SparseParityConfig, TINY, ["task.alpha=0"])
    with pytest.raises(ConfigError, match=r"alpha must be 0 with frequencies = 'uniform'.*\(got 0.4\)"):
        load_config(SparseParityConfig, TINY, ["task.frequencies=uniform"])
    with pytest.raises(ConfigError, match="task.frequencies"):
        load_config(SparseParityConfig, TINY, ["task.frequencies=flat"])
    from schemas.sparse_parity import AlphaSweepConfig
    with pytest.raises(ConfigError, match="task.frequencies must be 'zipf' in an alpha sweep"):
        load_config(AlphaSweepConfig, ROOT / "configs/sparse_parity/alpha_sweep_demo.toml",
                    ["task.frequencies=uniform", "task.alpha=0"])
    for name in ("uniform_demo.toml", "uniform_paper.toml"):
        c = load_config(SparseParityConfig, ROOT / "configs/sparse_parity" / name)
        assert c.task.frequencies == "uniform" and c.task.alpha == 0


def test_step_fraction_of_a_step_and_of_a_power_law():
    n = np.geomspace(1e2, 1e5, 10)
    step = np.where(n < 3e3, 1.0, 0.05)                    # every subtask learned between two sizes
    frac, before, after = step_fraction(n, step)
    assert frac == pytest.approx(1.0) and before < 3e3 < after
    power = 2.0 * n ** -0.4                                # the drop spread over every size, largest first
    frac_p, before_p, _ = step_fraction(n, power)
    assert frac_p < 0.5 and before_p == n[0]
    assert math.isnan(step_fraction(n, np.ones_like(n))[0])  # no drop: no statistic


def _curves(loss_by_width: np.ndarray, alpha: float) -> dict:
    """One logged step, M widths: the final mean loss of each model as given."""
    M = len(loss_by_width)
    widths = (8 * 2 ** np.arange(M)).astype(int)             # log-spaced, as the grids are
    mean = np.asarray(loss_by_width, dtype=float)[:, None]
    return {"steps": np.array([100]), "loss_bits": np.repeat(mean[:, :, None], 4, axis=2), "mean_loss_bits": mean,
            "width": widths, "n_params": widths * 30, "data_size": np.full(M, -1), "seed": np.zeros(M, dtype=int),
            "alpha": np.full(M, alpha)}


def test_uniform_runs_get_no_exponent_and_a_step_verdict_beside_the_power_law_null():
    uniform = runs_table([_curves([1.0, 1.0, 0.98, 0.05, 0.04, 0.04], 0.0)], 0.1)
    zipf = runs_table([_curves(list(1.0 * 2.0 ** (-0.4 * np.arange(6))), 0.4)], 0.1)  # L = N^-0.4 exactly
    import pandas as pd
    runs = pd.concat([uniform, zipf], ignore_index=True)
    fits = fit_exponents(runs, FitConfig(bootstrap=20, offset=False))
    u = fits[fits.alpha == 0]
    assert len(u) and u.value.isna().all() and u.theory.isna().all() and (u.note == UNIFORM_NOTE).all()
    assert fits[(fits.alpha == 0.4) & (fits.quantity == "alpha_N")].value.notna().all()
    steps = step_test(runs).set_index("alpha")
    assert bool(steps.loc[0.0, "one_step"]) and steps.loc[0.0, "step_fraction"] == pytest.approx(0.93 / 0.96)
    # a power law through the same points puts less of the drop at one size
    assert steps.loc[0.0, "powerlaw_step_fraction"] < steps.loc[0.0, "step_fraction"]
    assert not bool(steps.loc[0.4, "one_step"])


def test_a_tiny_uniform_study_reports_no_power_law(prefect_server, tmp_path):
    cfg = load_config(SparseParityConfig, TINY, ["task.frequencies=uniform", "task.alpha=0"])
    out = run_study("sparse-parity", cfg, str(tmp_path / "store"))
    res = out["results"]
    assert res["alpha_N"] is None and res["alpha_N_note"] == UNIFORM_NOTE   # JSON: NaN is null
    assert "step_test" in out["artifacts"] and len(res["step_test"]) == 1
    row = res["step_test"][0]
    assert row["alpha"] == 0 and row["n_points"] == 3
    assert row["one_step"] is None or row["one_step"] == (
        row["step_fraction"] > 0.5 and row["step_fraction"] > row["powerlaw_step_fraction"])
    report = Path(out["store"]) / out["artifacts"]["report"]["uri"]
    assert (report / "step_test.png").exists() and "Step test" in (report / "report.md").read_text()
