"""The qdg and qdg-sparse-parity studies end to end under a real Prefect server: results, artifacts, partial reruns,
and bad inputs stopped before work."""
from __future__ import annotations

import numpy as np
import pytest

from fault_helpers import task_states
from schemas import ConfigError, UserInputError
from schemas.config import load_config
from schemas.lm import LMConfig
from schemas.qdg import QDGConfig, QDGSparseParityConfig


def _run(flow, cfg, store_root):
    state = flow(config=cfg, store=store_root, return_state=True)
    return task_states(state.state_details.flow_run_id), state


def _by_prefix(states: dict[str, str], prefix: str) -> dict[str, str]:
    return {k: v for k, v in states.items() if k.startswith(prefix)}


def _qdg_tiny(project_root, *overrides) -> QDGConfig:
    return load_config(QDGConfig, project_root / "configs" / "qdg" / "tiny.toml", list(overrides))


@pytest.mark.usefixtures("prefect_server")
def test_qdg_after_lm_losses_reuses_it_and_reruns_only_what_a_change_touches(project_root, store_root, store):
    from flows.lm_losses import FLOW as LM
    from flows.qdg import FLOW as QDG

    lm_states, _ = _run(LM, load_config(LMConfig, project_root / "configs" / "lm" / "tiny.toml"), store_root)
    assert set(lm_states.values()) == {"Completed"}, lm_states

    # 1. the qdg study finds the lm-losses study's tasks Cached and computes its own
    cfg = _qdg_tiny(project_root)
    states, state = _run(QDG, cfg, store_root)
    out = state.result(raise_on_failure=True)
    lm_part = {k: v for k, v in states.items() if k.startswith("lm-")}
    assert lm_part and set(lm_part.values()) == {"Cached"}, lm_part
    qdg_part = {k: v for k, v in states.items() if k.startswith("qdg-")}
    assert set(qdg_part.values()) == {"Completed"}, qdg_part
    assert set(_by_prefix(states, "qdg-gradients-")) == {"qdg-gradients-0-50", "qdg-gradients-50-100",
                                                         "qdg-gradients-100-120"}
    assert len(_by_prefix(states, "qdg-cluster-k")) == 3 * 2  # each (k, seed) its own task

    res, arts = out["results"], out["artifacts"]
    assert res["n_tokens"] == 120 and res["projection"] == "none" and res["affinity"] == "similarity"
    assert res["n_clusters"] == [4, 8, 16]
    block = store.open_zarr(arts["gradient_block_0"])
    assert res["gradient_dim"] == block.attrs["gradient_dim"] == block["g"].shape[1] > 1000
    lm_fit = store.read_table(arts["lm_fits"]).set_index("quantity").loc["alpha_N"]
    assert res["alpha_N"] == pytest.approx(lm_fit.value)
    assert res["predicted_exponent"] == pytest.approx(lm_fit.value + 1)
    assert res["predicted_exponent_ci"] == pytest.approx([lm_fit.ci_lo + 1, lm_fit.ci_hi + 1])
    for k in ("4", "8", "16"):
        row = res["per_k"][k]
        lo, hi = row["slope_ci"]
        assert row["slope"] < 0 and lo <= row["slope"] <= hi
        assert row["zipf_exponent_mle"] > 1 and row["consistent"] in ("yes", "no")
        assert 0.0 <= res["stability_ari"][k] <= 1.0
    lo, hi = res["envelope_slope_ci"]
    assert lo <= res["envelope_slope"] <= hi < 0
    # three-valued: a tiny null (3 draws) can never make a slope distinguishable from chance
    assert res["consistent"] == "indeterminate" and "null" in res["consistent_rule"]
    assert res["consistent_paper_rule"] in ("yes", "no") and "interval" in res["consistent_rule"]
    env_null = res["null"]["gradient"]["envelope_slope"]
    assert env_null["measured"] == pytest.approx(res["envelope_slope"])
    for kind in ("gaussian", "permuted"):
        lo, hi = env_null[kind]["range"]
        assert env_null[kind]["draws"] == 3 and lo <= env_null[kind]["mean"] <= hi < 0
        assert env_null[kind]["distinguishable"] == "no" and env_null[kind]["p"] >= 0.25
    # the labels partition the selection; the ranked sizes are the Zipf table's
    labels = store.read_table(arts["labels_k8_s0"])
    selection = store.read_table(arts["selection"])
    assert labels["row"].tolist() == selection["row"].tolist() and labels["label"].nunique() == 8
    zipf = store.read_table(arts["zipf"]).set_index(["scope", "k"])
    assert zipf.loc[("k", 8), "n_nonempty"] == 8
    report = store.local_dir(arts["report"])
    for name in ("report.md", "rank_frequency.png", "similarity_sorted.png", "clusters.html", "cluster_losses.csv"):
        assert (report / name).exists(), name
    assert "<mark>" in (report / "clusters.html").read_text()

    # 2. rerun, same config: everything Cached
    states, _ = _run(QDG, cfg, store_root)
    assert set(states.values()) == {"Cached"}, {k: v for k, v in states.items() if v != "Cached"}

    # 3. one more cluster count: only its clusterings and what reads every clustering run
    states, state = _run(QDG, _qdg_tiny(project_root, "clustering.n_clusters=[4, 6, 8, 16]"), store_root)
    ran = {k for k, v in states.items() if v == "Completed"}
    assert {k for k in ran if k.startswith("qdg-cluster")} == {"qdg-cluster-k6-s0", "qdg-cluster-k6-s1"}, ran
    assert {k.rsplit("-", 1)[0] for k in ran if not k.startswith(("qdg-cluster", "qdg-null"))} == {
        "qdg-stability", "qdg-zipf", "qdg-report"}, ran
    assert "6" in state.result()["results"]["per_k"]

    # 3a. more null draws: only the new draws, the null's summary and the report
    states, state = _run(QDG, _qdg_tiny(project_root, "clustering.n_clusters=[4, 6, 8, 16]", "null.draws=4"),
                         store_root)
    ran = {k for k, v in states.items() if v == "Completed"}
    assert {k for k in ran if k.startswith("qdg-null")} == {"qdg-null-gradient-gaussian-3",
                                                            "qdg-null-gradient-permuted-3", "qdg-null"}, ran
    assert {k.rsplit("-", 1)[0] for k in ran if not k.startswith("qdg-null")} == {"qdg-report"}, ran
    assert state.result()["results"]["null"]["gradient"]["envelope_slope"]["gaussian"]["draws"] == 4

    # 3b. full vs JL-projected gradients: the projected blocks, their affinity and clusterings, and the comparison
    states, state = _run(QDG, _qdg_tiny(project_root, "clustering.compare_projection_dims=2000"), store_root)
    ran = {k for k, v in states.items() if v == "Completed"}
    assert {k for k in ran if k.startswith("qdg-gradients")} == {
        "qdg-gradients-jl2000-0-50", "qdg-gradients-jl2000-50-100", "qdg-gradients-jl2000-100-120"}, ran
    assert {k for k in ran if k.startswith("qdg-cluster")} == {"qdg-cluster-jl2000-k4-s0", "qdg-cluster-jl2000-k8-s0",
                                                                "qdg-cluster-jl2000-k16-s0"}, ran
    proj = state.result()["results"]["projection_ari"]
    assert proj["dims"] == 2000 and set(proj["ari"]) == {"4", "8", "16"}
    assert all(-1 <= v <= 1 for v in proj["ari"].values())
    table = store.read_table(state.result()["artifacts"]["projection"])
    assert table.projection_dims.tolist() == [2000] * 3 and table.k.tolist() == [4, 8, 16]

    # 4. more tokens: the selection grows by appending rows; every full gradient block is Cached
    states, state = _run(QDG, _qdg_tiny(project_root, "selection.n_tokens=150"), store_root)
    grads = _by_prefix(states, "qdg-gradients-")
    assert grads == {"qdg-gradients-0-50": "Cached", "qdg-gradients-50-100": "Cached",
                     "qdg-gradients-100-150": "Completed"}, grads
    bigger = store.read_table(state.result()["artifacts"]["selection"])
    assert bigger.iloc[:120].reset_index(drop=True).equals(selection)

    # 5. a selection that cannot be made stops at the selection with one line that says what to change
    states, state = _run(QDG, _qdg_tiny(project_root, "selection.max_loss_nats=0.001"), store_root)
    with pytest.raises(UserInputError, match=r"selection.max_loss_nats = 0.001 selects no token: the lowest loss "
                                             r"under model 'L2-d48' is .* raise selection.max_loss_nats"):
        state.result(raise_on_failure=True)
    assert not _by_prefix(states, "qdg-gradients-")


@pytest.mark.parametrize("override, message", [
    ("selection.model=nope", r"selection.model 'nope' is not a model of the suite"),
    ("clustering.n_clusters=[4, 200]", r"clustering.n_clusters must be < selection.n_tokens"),
    ("report.k_shown=5", r"report.k_shown 5 is not one of clustering.n_clusters"),
    ("gradients.include=['(']", r"not a regular expression"),
    ("similarity.memory_limit=lots", r"could not parse value and unit from byte string"),
])
def test_bad_qdg_configs_fail_at_load_naming_the_field(project_root, override, message):
    with pytest.raises(ConfigError, match=message):
        _qdg_tiny(project_root, override)


def test_dense_clustering_beyond_this_machine_fails_before_work(project_root):
    from flows.qdg import preflight as qdg_preflight

    cfg = _qdg_tiny(project_root, "selection.n_tokens=2000000", "clustering.method='dense'")
    with pytest.raises(ConfigError, match=r"dense spectral clustering of 2,000,000 tokens needs .* set "
                                          r"clustering.method = 'knn'"):
        qdg_preflight(cfg)
    qdg_preflight(_qdg_tiny(project_root, "selection.n_tokens=2000000"))  # auto: the kNN path beyond dense_max_n


@pytest.mark.usefixtures("prefect_server")
def test_qdg_sparse_parity_measures_the_clusters_against_the_true_subtasks(project_root, store_root, store):
    from flows.qdg_sparse_parity import FLOW

    cfg = load_config(QDGSparseParityConfig, project_root / "configs" / "qdg" / "sparse_parity_tiny.toml")
    states, state = _run(FLOW, cfg, store_root)
    out = state.result(raise_on_failure=True)
    assert set(states.values()) == {"Completed"}, states
    res, arts = out["results"], out["artifacts"]
    model = store.read_zarr(arts["model"])[0]
    learned = int((model["subtask_loss_bits"] < cfg.model.learned_threshold_bits).sum())
    assert res["n_subtasks"] == learned >= 2 and res["n_samples"] == learned * cfg.model.samples_per_subtask
    table = store.read_table(arts["ground_truth"])
    # plain and aligned on the learned subtasks, the control; k = the true count and 2; two seeds each
    assert set(zip(table.variant, table.samples)) == {("plain", "learned"), ("aligned", "learned"),
                                                     ("plain+control-weights", "learned"), ("plain", "control")}
    # the control clusters as many unlearned subtasks as there are learned ones, or all of them when fewer
    n_control = len(store.read_zarr(arts["samples_control"])[1]["subtasks"])
    assert n_control == min(learned, cfg.sparse_parity.task.n_tasks - learned)
    assert set(table.k) == {2, learned, n_control} and set(table.seed) == {0, 1}
    # the ARIs are the ones sklearn gives for the stored labels against the stored samples
    from sklearn.metrics import adjusted_rand_score

    samples = store.read_zarr(arts["samples_learned"])[0]
    labels = store.read_table(arts["labels_plain_learned_0"]).sort_values("row")
    k = int(labels.k.iloc[0])
    row = table[(table.variant == "plain") & (table.samples == "learned") & (table.k == k) & (table.seed == 0)]
    assert row.ari_subtask.iloc[0] == pytest.approx(adjusted_rand_score(samples["task"], labels.label))
    # the control (unlearned subtasks) is at chance
    assert abs(res["control_ari"]) < 0.1
    for key in ("ground_truth_ari", "ground_truth_ari_aligned", "ground_truth_ari_plain_with_control_weights"):
        assert -1 <= res[key] <= 1, key
    assert res["ground_truth_ari"] == pytest.approx(float(np.mean(res["ground_truth_ari_by_seed"])))
    assert np.isfinite(res["label_ari"])
    report = store.local_dir(arts["report"])
    assert (report / "similarity_plain.png").exists() and (report / "similarity_aligned.png").exists()

    # rerun on another device setting: the same random streams on every device, so every model (and all that
    # follows) comes back Cached; the lineage names the device that trained it
    moved = cfg.model_copy(update={"sparse_parity": cfg.sparse_parity.model_copy(
        update={"grid": cfg.sparse_parity.grid.model_copy(update={"device": "auto"})})})
    again, _ = _run(FLOW, moved, store_root)
    assert set(again.values()) == {"Cached"}, again
    assert store.lineage(arts["model"].content_hash)["params"]["device"] == "cpu"
