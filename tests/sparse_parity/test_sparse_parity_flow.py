"""The sparse-parity flow under a real Prefect server: results, caching, partial reruns, artifacts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fault_helpers import task_states
from flows.running import run_study
from schemas.config import load_config
from schemas.sparse_parity import FitConfig, SparseParityConfig
from storage import Store
from tasks.sparse_parity.analysis import emergence_table, fit_exponents, runs_table
from tasks.sparse_parity.train import n_params

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/sparse_parity/tiny.toml"


def _cfg(*overrides):
    return load_config(SparseParityConfig, TINY, list(overrides))


def _by_task(states: dict[str, str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, state in states.items():
        base = name.rsplit("-", 1)[0] if not name.startswith("train-shard") else "train-shard"
        out.setdefault(base, set()).add(state)
    return out


@pytest.fixture(scope="module")
def first_run(prefect_server, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("sp") / "store")
    out = run_study("sparse-parity", _cfg("grid.seeds=[0, 1]"), store)
    return store, out


def test_tiny_study_end_to_end(first_run):
    store, out = first_run
    assert out["study"] == "sparse-parity" and out["store"] == store
    for name in ("spec", "runs", "fits", "emergence", "report", "curves_0", "curves_1"):
        assert name in out["artifacts"], name
        assert out["artifacts"][name]["content_hash"]
    res = out["results"]
    assert res["alpha_theory"] == pytest.approx(0.4)
    assert {"alpha_N", "alpha_N_ci", "alpha_S", "alpha_S_ci"} <= set(res)
    losses = res["final_loss_by_width"]
    assert losses["64"] < losses["8"]  # wider models reach lower loss
    assert out["task_states"].get("Completed", 0) >= 7
    report = Path(res["report_dir"])
    assert (report / "report.md").exists() and list(report.glob("*.png"))
    st = Store(store)
    runs = st.read_table(_ref(out, "runs"))
    assert set(runs.seed) == {0, 1} and runs.n_params.min() == n_params(8 + 12, 8, 1)


def _ref(out, name):
    from storage import ArtifactRef

    a = out["artifacts"][name]
    return ArtifactRef(kind=a["kind"], uri=a["uri"], content_hash=a["content_hash"], schema_version=1)


def test_rerun_same_config_is_all_cached(first_run):
    store, first = first_run
    out = run_study("sparse-parity", _cfg("grid.seeds=[0, 1]"), store)
    assert set(out["task_states"]) == {"Cached"}
    assert out["artifacts"] == first["artifacts"]


def test_changing_fit_reruns_only_fit_and_report(first_run):
    store, _ = first_run
    out = run_study("sparse-parity", _cfg("grid.seeds=[0, 1]", "fit.bootstrap=20", "fit.offset=false"), store)
    states = _by_task(task_states(out["flow_run_id"]))
    assert states.pop("fit-exponents") == {"Completed"}
    assert states.pop("sparse-parity-report") == {"Completed"}
    assert all(s == {"Cached"} for s in states.values()), states


def test_changing_threshold_keeps_training_cached(first_run):
    store, _ = first_run
    out = run_study("sparse-parity", _cfg("grid.seeds=[0, 1]", "grid.learned_threshold_bits=0.2"), store)
    states = _by_task(task_states(out["flow_run_id"]))
    assert states["train-shard"] == {"Cached"} and states["sparse-parity-spec"] == {"Cached"}
    assert states["runs-table"] == {"Completed"} and states["emergence-table"] == {"Completed"}


def test_adding_a_seed_trains_only_the_new_shard(first_run):
    store, _ = first_run
    out = run_study("sparse-parity", _cfg("grid.seeds=[0, 1, 2]"), store)
    states = task_states(out["flow_run_id"])
    shards = {k: v for k, v in states.items() if k.startswith("train-shard")}
    assert sorted(shards.values()) == ["Cached", "Cached", "Completed"]
    assert shards["train-shard-[(-1, 2)]"] == "Completed"


def test_the_device_is_not_in_the_cache_key_and_the_lineage_names_it(first_run):
    import torch

    store, first = first_run  # tiny.toml: grid.device = "cpu"
    out = run_study("sparse-parity", _cfg("grid.seeds=[0, 1]", "grid.device='auto'"), store)
    assert set(out["task_states"]) == {"Cached"}  # the same streams on every device: the same shards
    rec = Store(store).lineage(first["artifacts"]["curves_0"]["content_hash"])
    assert rec["params"]["device"] == "cpu" and "widths" in rec["params"]
    assert Store(store).read_zarr(_ref(first, "curves_0"))[1]["device"] == "cpu"
    if torch.cuda.is_available():  # "auto" ran on the GPU, but found the CPU's shards
        assert out["artifacts"] == first["artifacts"]


def test_report_is_published_as_keyed_prefect_artifacts(first_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    _, out = first_run
    with get_client(sync_client=True) as c:  # this run's artifacts (other tests publish under the same keys)
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="sparse-parity")),
                                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[out["flow_run_id"]])))
    keys = {a.key for a in arts}
    assert {"sparse-parity-report", "sparse-parity-fits", "sparse-parity-final-losses"} <= keys
    md = next(a for a in arts if a.key == "sparse-parity-report")
    assert "data:image/png;base64," in md.data and "alpha_S" in md.data


def test_finite_data_groups_and_lineage(prefect_server, tmp_path):
    store = str(tmp_path / "store")
    out = run_study("sparse-parity", _cfg("grid.data_sizes=[40, 400]", "grid.widths=[16, 32]"), store)
    st = Store(store)
    runs = st.read_table(_ref(out, "runs"))
    assert sorted(runs.data_size.unique()) == [40, 400]
    rec = st.lineage(out["artifacts"]["curves_0"]["content_hash"])
    kinds = sorted(i["kind"] for i in rec["inputs"])
    assert kinds == ["sparse_parity.spec", "sparse_parity.train_set"]
    assert rec["producer"] == "train-shard" and rec["flow_run_id"] == out["flow_run_id"]


# ------------------------------------------------------------------ analysis functions on planted data
def _planted_curves(alpha=0.4, widths=(10, 20, 40, 80, 160, 320), n_tasks=4):
    steps = np.array([1, 10, 100, 1000])
    N = np.array([n_params(30, w, 1) for w in widths])
    M = len(widths)
    mean = np.empty((M, len(steps)), dtype=np.float32)
    for i, n in enumerate(N):
        mean[i] = 3.0 * n ** -alpha * (steps / 1000.0) ** -0.25
    loss = np.repeat(mean[:, :, None], n_tasks, axis=2)
    return {"steps": steps, "loss_bits": loss, "mean_loss_bits": mean, "width": np.array(widths),
            "n_params": N, "data_size": np.full(M, -1), "seed": np.zeros(M, dtype=int),
            "alpha": np.full(M, alpha)}


def test_fit_exponents_recovers_planted_alpha_N_and_alpha_S():
    runs = runs_table([_planted_curves()], 0.1)
    fits = fit_exponents(runs, FitConfig(bootstrap=50, offset=False)).set_index("quantity")
    assert fits.loc["alpha_N", "value"] == pytest.approx(0.4, abs=1e-3)
    assert fits.loc["alpha_S", "value"] == pytest.approx(0.25, abs=1e-3)
    assert fits.loc["alpha_N", "consistent"]
    assert not fits.loc["alpha_S", "consistent"]  # 0.25 vs theory 0.2857 with a tight CI


def test_emergence_is_first_step_from_which_the_subtask_stays_learned():
    c = _planted_curves(widths=(10,), n_tasks=3)
    c["loss_bits"] = np.array([[[0.9, 0.9, 0.9], [0.05, 0.9, 0.9], [0.2, 0.05, 0.9], [0.01, 0.01, 0.9]]],
                              dtype=np.float32)
    em = emergence_table([c], np.array([0.6, 0.3, 0.1]), 0.1)
    assert em.learned_step.tolist()[:2] == [1000.0, 100.0] and np.isnan(em.learned_step.iloc[2])


def test_data_grid_adding_one_D_trains_only_that_D(prefect_server, tmp_path):
    store = str(tmp_path / "store")
    base = ("grid.widths=[16, 32, 48, 64]", "data_grid.width=32", "data_grid.steps=100", "data_grid.seeds=[0, 1]")
    out = run_study("sparse-parity", _cfg(*base, "data_grid.data_sizes=[50, 200, 800]"), store)
    assert "alpha_D" in out["results"] and len(out["results"]["alpha_D_ci"]) == 2
    runs = Store(store).read_table(_ref(out, "runs"))
    d_rows = runs[runs.data_size > 0]
    assert set(d_rows.width) == {32} and set(d_rows.seed) == {0, 1} and set(d_rows.data_size) == {50, 200, 800}
    out2 = run_study("sparse-parity", _cfg(*base, "data_grid.data_sizes=[50, 200, 800, 3200]"), store)
    shards = {k: v for k, v in task_states(out2["flow_run_id"]).items() if k.startswith("train-shard")}
    assert shards.pop("train-shard-[(3200, 0), (3200, 1)]") == "Completed"
    assert set(shards.values()) == {"Cached"} and len(shards) == 4
    assert set(_by_task(task_states(out2["flow_run_id"]))["sparse-parity-train-set"]) == {"Cached", "Completed"}


def test_theory_checks_compare_alpha_D_with_alpha_N_over_alpha_N_plus_1():
    from tasks.sparse_parity.analysis import theory_checks

    fits = pd.DataFrame({"quantity": ["alpha_N", "alpha_D", "alpha_S"], "alpha": [0.4] * 3,
                         "value": [0.4, 0.29, 0.5], "ci_lo": [0.35, 0.27, 0.45], "ci_hi": [0.45, 0.31, 0.55]})
    checks = theory_checks(fits).set_index("check")
    row = checks.loc["alpha_D vs alpha_N/(alpha_N+1)"]
    assert row.predicted == pytest.approx(0.4 / 1.4)
    assert row.predicted_ci_lo == pytest.approx(0.35 / 1.35) and row.predicted_ci_hi == pytest.approx(0.45 / 1.45)
    assert bool(row.consistent)
    assert not bool(checks.loc["alpha_S vs alpha/(alpha+1)", "consistent"])  # 0.5 [0.45, 0.55] vs 0.2857
    assert bool(checks.loc["alpha_N vs alpha", "consistent"])


def test_a_deleted_artifact_is_recomputed_not_trusted(prefect_server, tmp_path):
    import shutil

    store = str(tmp_path / "store")
    cfg = _cfg("grid.steps=40", "grid.log_points=5")
    first = run_study("sparse-parity", cfg, store)
    shutil.rmtree(first["artifacts"]["curves_0"]["uri"])  # e.g. a user cleaning up the store
    second = run_study("sparse-parity", cfg, store)
    runs = task_states(second["flow_run_id"])
    shard_states = sorted(s for name, s in runs.items() if name.startswith("train-shard"))
    states = {name: s for name, s in runs.items() if not name.startswith("train-shard")}
    assert shard_states == ["Completed"]  # the stale cache record is passed over: one recomputation, no stale hit
    assert Path(second["artifacts"]["curves_0"]["uri"]).exists()
    # deterministic training: the same content, so everything downstream stays cached and valid
    assert second["artifacts"]["curves_0"]["content_hash"] == first["artifacts"]["curves_0"]["content_hash"]
    assert states[next(k for k in states if k.startswith("runs-table"))] == "Cached"
    third = run_study("sparse-parity", cfg, store)  # healed: the original cache record is sound again
    assert third["task_states"] == {"Cached": sum(second["task_states"].values())}
