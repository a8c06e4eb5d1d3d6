"""The designed size-exponent estimator on planted affinities, and the qdg-calibration study under a Prefect server:
results, `Cached` on rerun, a new draw computed alone, bad configs stopped with exit 2 naming the field."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from fault_helpers import task_states
from schemas.config import load_config
from schemas.qdg_calibration import QDGCalibrationConfig
from tasks.qdg.calibration import planted_affinity, planted_rows
from tasks.qdg.size_exponent import merge_pieces, size_exponent


def test_merging_pieces_of_an_overclustering_recovers_the_planted_clusters():
    from sklearn.metrics import adjusted_rand_score

    rows, truth = planted_rows(1.5, 8, 600, 32, 0.3, seed=1)
    a = planted_affinity(rows)
    pieces = truth * 3 + np.random.default_rng(0).integers(0, 3, size=truth.size)  # each cluster cut in three
    merged, background = merge_pieces(a, np.unique(pieces, return_inverse=True)[1])
    assert adjusted_rand_score(truth, merged) == pytest.approx(1.0)
    assert 0.45 < background < 0.75
    # the same on a sparse affinity (what the kNN path gives): only the stored entries count
    sparse = sp.csr_array(np.where(a > 0.8, a, 0))
    assert adjusted_rand_score(truth, merge_pieces(sparse, np.unique(pieces, return_inverse=True)[1])[0]) == \
        pytest.approx(1.0)


@pytest.mark.parametrize("planted", [1.3, 1.8])
def test_size_exponent_recovers_a_planted_exponent_within_its_interval(planted):
    rows, truth = planted_rows(planted, 40, 2000, 64, 0.3, seed=11)
    a = planted_affinity(rows)
    before = a.copy()
    fit = size_exponent(a, n_clusters=[10, 20, 40, 80], seed=0, n_sim=100)
    assert np.array_equal(a, before), "the affinity must not be modified"
    assert fit.estimator == "merged_finite_zipf" and fit.choices["k_over"] == 80
    assert fit.covers(planted), (fit.exponent, fit.ci)
    assert abs(fit.exponent - planted) < 0.1
    assert abs(fit.choices["k_chosen"] - len(np.unique(truth))) <= 15
    again = size_exponent(a, n_clusters=[10, 20, 40, 80], seed=0, n_sim=100)
    assert (again.exponent, again.ci, again.choices) == (fit.exponent, fit.ci, fit.choices)  # deterministic


def _tiny(project_root, *overrides) -> QDGCalibrationConfig:
    return load_config(QDGCalibrationConfig, project_root / "configs" / "qdg" / "calibration_tiny.toml",
                       list(overrides))


def _run(cfg, store_root):
    from flows.qdg_calibration import FLOW

    state = FLOW(config=cfg, store=store_root, return_state=True)
    return task_states(state.state_details.flow_run_id), state.result(raise_on_failure=True)


@pytest.mark.usefixtures("prefect_server")
def test_tiny_calibration_runs_is_cached_and_adding_a_draw_computes_only_it(project_root, store_root, store):
    cfg = _tiny(project_root)
    states, out = _run(cfg, store_root)
    assert set(states.values()) == {"Completed"}, states
    draws = store.read_table(out["artifacts"]["draw_e1.5_sep0.3_d0"])
    assert set(draws.estimator) == {"envelope", "rank_slope", "powerlaw_mle", "finite_zipf", "merged_finite_zipf"}
    assert set(draws[draws.estimator == "rank_slope"].k) == {6, 12, 24}
    summary = store.read_table(out["artifacts"]["summary"])
    assert len(summary) == len(draws)  # one draw: one summary row per (estimator, k)
    res = out["results"]["calibration"]["0.3"]["merged_finite_zipf"]["1.5"]
    measured = float(draws[draws.estimator == "merged_finite_zipf"].exponent.iloc[0])
    assert res["mean"] == pytest.approx(measured, abs=1e-4)  # results round to 4 decimals
    assert out["results"]["goal"][0]["separation"] == pytest.approx(0.3)

    states, _ = _run(cfg, store_root)
    assert set(states.values()) == {"Cached"}, states

    states, out = _run(_tiny(project_root, "planted.draws=2"), store_root)
    ran = {k for k, v in states.items() if v != "Cached"}
    assert ran == {"qdg-calibration-e1.5-sep0.3-d1", "qdg-calibration-summary", "qdg-calibration-report"}, states
    summary = store.read_table(out["artifacts"]["summary"])
    assert summary["draws"].eq(2).all() and len(summary) == len(draws)  # each (estimator, k) over both draws


@pytest.mark.parametrize("override, field", [("planted.exponents=[1.2, 9.0]", "planted.exponents"),
                                             ("planted.separations=[-0.5]", "planted.separations"),
                                             ("planted.n_rows=20", "planted.n_rows"),
                                             ("clustering.n_clusters=[6, 400]", "clustering.n_clusters"),
                                             ("estimator.min_size=0", "estimator.min_size")])
def test_bad_calibration_configs_exit_2_naming_the_field(project_root, tmp_path, capsys, override, field):
    from flows.cli import main

    store = tmp_path / "store"
    cfg = str(project_root / "configs" / "qdg" / "calibration_tiny.toml")
    assert main(["run", "qdg-calibration", "--config", cfg, "--set", override, "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    section, name = field.split(".")
    assert len(err) == 1 and section in err[0] and name in err[0], err
    assert not list(store.glob("qdg_calibration.*")), "work was done before the config was checked"
