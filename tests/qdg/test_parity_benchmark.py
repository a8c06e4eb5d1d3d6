"""The known-quanta benchmark: its statistics (bootstrap interval, purity, baselines, specialisation), the training
regimes (group-lasso fine-tuning, the modular control), and the flow: a representation added to the config computes
only its own stages, a new cluster count only the clusterings and what reads them."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fault_helpers import task_states
from schemas import ConfigError
from schemas.config import load_config
from schemas.qdg import GroupLassoConfig, QDGSparseParityConfig, SpectralOptions
from schemas.sparse_parity import TaskConfig
from tasks.qdg.benchmark import (baseline_labels, baseline_vectors, best_row, bootstrap_interval, purity,
                                 resampled_ari, seed_mean_ari, specialisation)
from tasks.qdg.parity import mlp_from_arrays, sample_subtasks
from tasks.qdg.regimes import group_lasso_finetune, modular_mlp, subtask_loss_bits, unit_group_norms
from tasks.sparse_parity.data import make_spec


@pytest.fixture(scope="module")
def spec():
    return make_spec(TaskConfig(n_tasks=6, n_bits=16, k=3, seed=0))


def test_interval_purity_and_baselines(spec):
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(4), 50)
    noisy = np.where(rng.random(200) < 0.3, rng.integers(0, 4, 200), truth)  # 30% of the labels shuffled
    lo, hi = bootstrap_interval(truth, [noisy, noisy], 300, 0.95, 0)
    est = seed_mean_ari(truth, [noisy])
    assert lo < est < hi and hi - lo < 0.3
    assert bootstrap_interval(truth, [truth], 50, 0.95, 0) == (1.0, 1.0)
    assert np.isnan(bootstrap_interval(truth, [noisy], 0, 0.95, 0)[0])
    from sklearn.metrics import adjusted_rand_score

    for idx in (rng.integers(0, 200, 200), np.arange(200), np.zeros(5, dtype=int)):
        assert resampled_ari(truth, noisy, idx) == pytest.approx(adjusted_rand_score(truth[idx], noisy[idx]))
    pm, pmin = purity(truth, [truth])
    assert pm == pmin == 1.0
    assert 0.25 < purity(truth, [rng.integers(0, 4, 200)])[0] < 0.5
    task, bits, _ = sample_subtasks(spec, np.arange(4), 40, 0)
    opts = SpectralOptions()
    ceiling = baseline_labels(baseline_vectors("control_bits", task, bits, 6, 8, 0), 4, [0, 1], opts)
    assert seed_mean_ari(task, ceiling) == 1.0
    for name in ("task_bits", "random"):
        floor = baseline_labels(baseline_vectors(name, task, bits, 6, 64, 0), 4, [0, 1], opts)
        assert abs(seed_mean_ari(task, floor)) < 0.1, name
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_vectors("nope", task, bits, 6, 8, 0)


def test_specialisation_of_the_modular_model_is_complete_and_of_a_shared_one_is_not(spec):
    learned = [0, 1, 2, 3]
    task, bits, label = sample_subtasks(spec, np.array(learned), 40, 0)
    modular = mlp_from_arrays(modular_mlp(spec, learned))
    frac, used = specialisation(modular, 6, task, bits, label, 3.0, 0.01)
    assert frac == 1.0 and used == 12  # 4 units per subtask, the one with no outgoing weight unused
    shared = modular_mlp(spec, learned)
    shared["w1"][:, :6] = 0  # no gating: every unit sees every subtask's bits through its own subset only
    shared["b1"] += 8.0
    frac, _ = specialisation(mlp_from_arrays(shared), 6, task, bits, label, 3.0, 0.01)
    assert frac < 1.0


def test_group_lasso_shrinks_the_unit_norms_and_keeps_what_is_learned(spec):
    torch.manual_seed(0)
    mlp = mlp_from_arrays(modular_mlp(spec, list(range(6))))  # every subtask learned by its own units
    with torch.no_grad():  # extra useless units that the penalty should switch off
        w1 = torch.cat([mlp[0].weight, 0.3 * torch.randn(8, mlp[0].weight.shape[1])])
        b1 = torch.cat([mlp[0].bias, torch.zeros(8)])
        w2 = torch.cat([mlp[2].weight, 0.3 * torch.randn(2, 8)], dim=1)
    mlp = mlp_from_arrays({"w1": w1.numpy(), "b1": b1.numpy(), "w2": w2.numpy(), "b2": mlp[2].bias.detach().numpy()})
    before = unit_group_norms(mlp).detach().clone()
    trace = group_lasso_finetune(mlp, spec, GroupLassoConfig(lam=1e-2, steps=200), 1e-2, 256, 0)
    after = unit_group_norms(mlp).detach()
    extra = slice(24, 32)
    assert trace[-1] < trace[0] and (after[extra] < 0.05 * before[extra]).all(), after[extra]
    mlp.eval()
    assert (subtask_loss_bits(mlp, spec, 100) < 0.5).all()  # still learned (the penalty costs a little loss)
    with pytest.raises(ValueError, match="group_lasso.lam must be > 0"):
        GroupLassoConfig(lam=0)


@pytest.mark.parametrize("k", [2, 4, 5])
def test_the_modular_control_is_built_for_any_k_and_its_clusters_are_the_subtasks(k):
    from tasks.qdg.parity_representations import parity_representation
    from tasks.qdg.parity import parity_parameter_names
    from schemas.qdg import GradientConfig

    sp = make_spec(TaskConfig(n_tasks=6, n_bits=16, k=k, seed=0))
    learned = [0, 1, 3, 4]
    arrays = modular_mlp(sp, learned)
    assert arrays["w1"].shape[0] == (k + 1) * len(learned)
    mlp = mlp_from_arrays(arrays)
    loss = subtask_loss_bits(mlp, sp, 200)
    assert (loss[learned] < 1e-3).all() and (loss[[2, 5]] > 0.5).all()  # exactly the learned subtasks
    task, bits, label = sample_subtasks(sp, np.array(learned), 40, 0)
    t, b, y = (torch.as_tensor(v) for v in (task, bits, label))
    raw, _ = parity_representation(mlp, 6, t, b, y, "abs_gradient", parity_parameter_names(GradientConfig()), False)
    v = (raw / raw.norm(dim=1, keepdim=True)).double().numpy()
    labels = baseline_labels(v, len(learned), [0], SpectralOptions())
    assert seed_mean_ari(task, labels) == 1.0


def test_best_row_is_a_parameter_space_representation_of_a_trained_model():
    df = pd.DataFrame({"regime": ["study", "study", "modular", "long", "study"],
                       "representation": ["gradient", "activations", "abs_gradient", "ablation", "control_bits"],
                       "transform": ["none"] * 5, "affinity": ["dense"] * 5, "clusterer": ["spectral"] * 5,
                       "kind": ["representation"] * 4 + ["baseline"], "ari": [0.2, 0.9, 1.0, 0.5, 1.0],
                       "ari_lo": [0.1, 0.8, 1.0, 0.4, 1.0], "ari_hi": [0.3, 0.95, 1.0, 0.6, 1.0],
                       "ari_min": [0.2, 0.9, 1.0, 0.5, 1.0], "n_models": [1] * 5})
    assert best_row(df) == {"representation": "ablation", "regime": "long", "transform": "none", "affinity": "dense",
                            "clusterer": "spectral", "ari": 0.5, "ari_ci": [0.4, 0.6], "ari_min": 0.5, "n_models": 1}
    # with means over training seeds, the best mean wins over a single lucky model
    mean = df.iloc[[0]].assign(kind="mean", ari=0.3, ari_lo=0.1, ari_hi=0.5, ari_min=0.2, n_models=3,
                               transform="abs^0.25", affinity="knn")
    best = best_row(pd.concat([df, mean], ignore_index=True))
    assert (best["transform"], best["affinity"], best["ari"], best["n_models"]) == ("abs^0.25", "knn", 0.3, 3)


def test_mean_rows_give_a_t_interval_over_training_seeds():
    from tasks.qdg.benchmark import COLUMNS, mean_rows, t_interval

    lo, hi = t_interval(np.array([0.9, 0.95, 1.0]), 0.95)
    assert lo == pytest.approx(0.95 - 4.302653 * 0.05 / np.sqrt(3), abs=1e-5) and hi > 1.0  # t(2) = 4.30
    assert np.isnan(t_interval(np.array([0.9]), 0.95)[0])
    base = {c: 0.5 for c in COLUMNS} | {"regime": "long", "representation": "abs_gradient", "transform": "none",
                                        "affinity": "knn", "clusterer": "spectral", "kind": "representation",
                                        "k": 10, "n_samples": 500, "n_subtasks": 10, "n_models": 1, "units_used": 9}
    df = pd.DataFrame([base | {"training_seed": s, "ari": a, "ari_min": a} for s, a in ((0, 0.9), (1, 1.0))]
                      + [base | {"training_seed": 0, "regime": "study"}])  # one seed only: no mean row
    m = mean_rows(df, 0.95)
    assert len(m) == 1 and m.iloc[0].ari == pytest.approx(0.95) and m.iloc[0].ari_min == 0.9
    assert m.iloc[0].n_models == 2 and m.iloc[0].training_seed == -1 and m.iloc[0].kind == "mean"


def test_knn_purity_counts_neighbours_of_the_same_subtask():
    from tasks.qdg.benchmark import knn_purity

    truth = np.repeat(np.arange(3), 20)
    v = np.eye(3)[truth] + 0.01 * np.random.default_rng(0).standard_normal((60, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert knn_purity(v @ v.T, truth, 15) == 1.0
    mixed = np.random.default_rng(1).standard_normal((60, 50))
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    assert 0.15 < knn_purity(mixed @ mixed.T, truth, 15) < 0.5  # chance: 19/59 = 0.32


def _tiny(project_root, *overrides) -> QDGSparseParityConfig:
    return load_config(QDGSparseParityConfig, project_root / "configs" / "qdg" / "sparse_parity_tiny.toml",
                       ["compare_label_sign=false", "compare_control_weights=false", "benchmark.bootstrap=50",
                        *overrides])


@pytest.mark.usefixtures("prefect_server")
def test_adding_a_representation_computes_only_its_stages(project_root, store_root, store):
    from flows.qdg_sparse_parity import FLOW

    cfg = _tiny(project_root, "representations=['gradient']", "regimes=['study']")
    state = FLOW(config=cfg, store=store_root, return_state=True)
    res = state.result(raise_on_failure=True)["results"]
    rows = pd.DataFrame(res["benchmark"])
    assert set(rows.representation) == {"gradient", "control_bits", "task_bits", "random"}
    assert rows.set_index("representation").loc["control_bits", "ari"] == 1.0
    g = rows.set_index("representation").loc["gradient"]
    assert g.ari == pytest.approx(res["ground_truth_ari"]) and g.control_ari == pytest.approx(res["control_ari"])
    assert abs(g.control_ari) < 0.1  # unlearned subtasks: at chance
    assert res["best"]["representation"] == "gradient"

    states = task_states(FLOW(config=_tiny(project_root, "representations=['gradient', 'activations']",
                                           "regimes=['study']"), store=store_root,
                              return_state=True).state_details.flow_run_id)
    ran = {k for k, v in states.items() if v != "Cached"}
    # only the new representation's blocks (of the learned and the control samples) ran: no gradient block, no model
    blocks = {k for k in ran if k.startswith("qdg-parity-") and not k.startswith("qdg-parity-benchmark")}
    assert blocks and all(k.startswith("qdg-parity-activations-") for k in blocks), ran
    assert sum(k.startswith("qdg-similarity") for k in ran) == 2, ran
    assert {k.rsplit("-", 1)[0] for k in ran if not k.startswith(("qdg-parity-activations", "qdg-similarity",
                                                                  "qdg-cluster"))} == {
        "qdg-parity-benchmark", "qdg-sparse-parity-report"}, ran
    assert "qdg-ground-truth" not in {k.rsplit("-", 1)[0] for k in ran}

    states = task_states(FLOW(config=_tiny(project_root, "representations=['gradient', 'activations']",
                                           "regimes=['study']", "clustering.n_clusters=[3]"), store=store_root,
                              return_state=True).state_details.flow_run_id)
    ran = {k.rsplit("-", 1)[0] if not k.startswith("qdg-cluster") else k for k, v in states.items() if v != "Cached"}
    assert ran == {"qdg-cluster-k3-s0", "qdg-cluster-k3-s1", "qdg-ground-truth", "qdg-sparse-parity-report"}, ran


@pytest.mark.usefixtures("prefect_server")
def test_a_transform_and_the_knn_graph_in_the_benchmark_are_cached_stages(project_root, store_root, store):
    """A transform, the kNN graph and Leiden on a tiny run: each (transform, affinity, clusterer) is a row with its
    purity and k-NN purity, the modular control is perfect under every one, and a rerun is all Cached."""
    from flows.qdg_sparse_parity import FLOW

    over = ["representations=['abs_gradient']", "regimes=['study', 'modular']", "model.unlearned_control=false",
            "transforms=[{}, {power=0.25, normalise='module'}]", "affinities=['dense', 'knn']",
            "clusterers=['spectral', 'leiden']", "clustering.knn_neighbors=11", "clustering.knn_weighting='binary'",
            "clustering.seeds=[0]"]
    state = FLOW(config=_tiny(project_root, *over), store=store_root, return_state=True)
    res = state.result(raise_on_failure=True)["results"]
    rows = pd.DataFrame(res["benchmark"])
    reps = rows[rows.kind == "representation"]
    assert set(zip(reps["transform"], reps.affinity, reps.clusterer)) == {
        (t, a, c) for t in ("none", "abs^0.25+module-norm") for a, c in
        (("dense", "spectral"), ("knn", "spectral"), ("knn", "leiden"))}
    assert reps.knn_purity.between(0, 1).all() and reps.purity_mean.between(0, 1).all()
    modular = reps[reps.regime == "modular"]
    assert (modular.ari == 1.0).all() and (modular.knn_purity == 1.0).all()
    assert res["best"]["regime"] == "study" and {"transform", "affinity", "clusterer"} <= set(res["best"])
    states = task_states(FLOW(config=_tiny(project_root, *over), store=store_root,
                              return_state=True).state_details.flow_run_id)
    assert {k for k, v in states.items() if v != "Cached"} == set()


def test_bad_representation_and_regime_settings_fail_at_load(project_root):
    with pytest.raises(ConfigError, match="representations.0"):
        _tiny(project_root, "representations=['gradients']")
    with pytest.raises(ConfigError, match="group_lasso.lam must be > 0"):
        _tiny(project_root, "group_lasso.lam=-0.1")
    with pytest.raises(ConfigError, match="regimes must be a non-empty list without repeats"):
        _tiny(project_root, "regimes=['study', 'study']")
