"""The qdg flow with several representations under a real Prefect server: each representation is its own cached
stage (adding one runs only its tasks), changing the cluster counts reruns only clustering and what follows, and the
results, report and table artifact of the agreement between representations."""
from __future__ import annotations

import pytest

from fault_helpers import task_states
from schemas.config import load_config
from schemas.qdg import QDGConfig


def _run(cfg, store_root):
    from flows.qdg import FLOW

    state = FLOW(config=cfg, store=store_root, return_state=True)
    return task_states(state.state_details.flow_run_id), state


def _cfg(project_root, *overrides) -> QDGConfig:
    """The tiny qdg config without its null (tests/qdg/test_flows.py and test_null.py test the null)."""
    return load_config(QDGConfig, project_root / "configs" / "qdg" / "tiny.toml", ["null.draws=0", *overrides])


def _ran(states: dict[str, str]) -> set[str]:
    return {k for k, v in states.items() if v == "Completed"}


@pytest.mark.usefixtures("prefect_server")
def test_each_representation_is_its_own_cached_stage(project_root, store_root, store):
    from sklearn.metrics import adjusted_rand_score

    two = "representations=['gradient', 'activations']"
    states, state = _run(_cfg(project_root, two, "clustering.n_clusters=[4, 8]"), store_root)
    state.result(raise_on_failure=True)
    assert {k for k in states if k.startswith(("qdg-units", "qdg-activations"))} == {
        "qdg-units-0-50", "qdg-units-50-100", "qdg-units-100-120", "qdg-activations-0-50", "qdg-activations-50-100",
        "qdg-activations-100-120"}, states

    # 1. three more representations (ablation asked for as the first-order estimate): only their own tasks run; the
    # unit stage, the gradients and the clusterings of the first two come back Cached
    five = "representations=['gradient', 'activations', 'abs_gradient', 'attribution', 'ablation']"
    states, state = _run(_cfg(project_root, five, "ablation_first_order=true", "clustering.n_clusters=[4, 8]"),
                         store_root)
    out = state.result(raise_on_failure=True)
    ran = _ran(states)
    mine = ("qdg-abs_gradient-", "qdg-attribution-", "qdg-ablation-", "qdg-cluster-abs_gradient-",
            "qdg-cluster-attribution-", "qdg-cluster-ablation-")
    assert {k for k in ran if k.startswith(("qdg-gradients", "qdg-units", "qdg-activations", "qdg-cluster-k",
                                            "qdg-cluster-activations"))} == set(), ran
    assert {k for k in ran if k.startswith(mine)} == {
        f"{p}{b}" for p in mine[:3] for b in ("0-50", "50-100", "100-120")} | {
        f"{p}k{k}-s{s}" for p in mine[3:] for k in (4, 8) for s in (0, 1)}, ran
    assert {k for k in ran if not k.startswith((*mine, "qdg-report"))} == {
        *(f"qdg-{t}-{r}" for t in ("similarity", "stability", "size-exponent", "zipf")
          for r in ("abs_gradient", "attribution", "ablation")),
        "qdg-representation-ari"}, ran
    assert len([k for k in ran if k.startswith("qdg-report")]) == 1, ran

    res, arts = out["results"], out["artifacts"]
    assert res["representation"] == "abs_gradient"  # the default primary, listed
    assert set(res["representations"]) == {"gradient", "activations", "abs_gradient", "attribution", "ablation"}
    assert res["representations"]["activations"]["dim"] == res["representations"]["attribution"]["dim"] == 2 * 4 * 48
    assert res["representations"]["abs_gradient"]["dim"] == res["representations"]["gradient"]["dim"] > 1000
    assert res["envelope_slope"] == res["representations"]["abs_gradient"]["envelope_slope"]
    for r in res["representations"].values():
        lo, hi = r["envelope_slope_ci"]
        assert lo <= r["envelope_slope"] <= hi < 0
    # the agreement: every pair, every k, sklearn's ARI of the stored labels
    pairs = {(x["a"], x["b"], x["k"]): x["ari"] for x in res["representation_ari"]}
    assert len(pairs) == 10 * 2
    a = store.read_table(arts["labels_gradient_k8_s0"]).sort_values("row")
    b = store.read_table(arts["labels_attribution_k8_s0"]).sort_values("row")
    assert pairs[("gradient", "attribution", 8)] == pytest.approx(adjusted_rand_score(a.label, b.label))
    block = store.read_zarr(arts["ablation_block_0"])[1]
    assert block["representation"] == "ablation" and block["projection"] == "none"
    report = store.local_dir(arts["report"])
    md = (report / "report.md").read_text()
    assert "headline representation **abs_gradient**" in md and "## Representations" in md
    for name in ("representations.csv", "representation_ari.csv", "clusters.html", "clusters_activations.html",
                 "envelopes.png"):
        assert (report / name).exists(), name
    from prefect.artifacts import Artifact

    table = Artifact.get("qdg-representation-ari")
    assert table is not None and table.type == "table" and "attribution" in str(table.data)

    # 2. only the cluster counts change: clustering and what follows, for every representation; nothing upstream
    states, _ = _run(_cfg(project_root, five, "ablation_first_order=true", "clustering.n_clusters=[4, 6, 8]"),
                     store_root)
    ran = _ran(states)
    assert {k for k in ran if k.startswith("qdg-cluster")} == {
        f"qdg-cluster-{t}k6-s{s}" for t in ("", "activations-", "abs_gradient-", "attribution-", "ablation-")
        for s in (0, 1)}, ran
    assert {k.split("-")[1] for k in ran if not k.startswith("qdg-cluster")} == {
        "stability", "zipf", "representation", "report"}, ran

    # 3. the same config again: everything Cached
    states, _ = _run(_cfg(project_root, five, "ablation_first_order=true", "clustering.n_clusters=[4, 6, 8]"),
                     store_root)
    assert set(states.values()) == {"Cached"}, {k: v for k, v in states.items() if v != "Cached"}


@pytest.mark.parametrize("overrides, message", [
    (["representations=['gradient', 'nope']"], r"representations.1: Input should be 'gradient'"),
    (["representations=['ablation']"], r"representations: 'ablation' on a language model is only the first-order"),
    (["representations=['gradient']", "primary='activations'"], r"primary 'activations' is not one of"),
    (["representations=['activations']", "clustering.compare_projection_dims=100"],
     r"compare_projection_dims .* 'activations' is over MLP units"),
    (["representations=['gradient', 'gradient']"], r"representations must be distinct"),
])
def test_bad_representation_configs_fail_at_load_naming_the_field(project_root, overrides, message):
    from schemas import ConfigError

    with pytest.raises(ConfigError, match=message):
        _cfg(project_root, *overrides)


def test_the_default_is_every_representation_that_applies(project_root):
    cfg = load_config(QDGConfig, project_root / "configs" / "qdg" / "paper.toml")
    assert cfg.chosen_representations() == ["gradient", "abs_gradient", "activations"]
    bare = QDGConfig(lm=cfg.lm)
    assert bare.chosen_representations() == ["gradient", "abs_gradient", "activations", "logit_gradient",
                                             "attribution"]
    assert bare.primary_representation() == "abs_gradient"
    assert QDGConfig(lm=cfg.lm, ablation_first_order=True).chosen_representations()[-1] == "ablation"


@pytest.mark.usefixtures("prefect_server")
def test_a_transform_and_the_knn_graph_on_a_language_model_are_cached_stages(project_root, store_root, store):
    """config.transform on the parameter-space representations (read from the stored unit rows) and a 0/1 kNN graph
    at a small n: every module's block of a transformed row has the same norm, |g|^p makes gradient and
    abs_gradient the same rows, the graph is binary, and a rerun is all Cached."""
    import numpy as np

    from tasks.qdg.transforms import block_groups

    overrides = ["representations=['gradient', 'abs_gradient']", "transform={power=0.25, normalise='module'}",
                 "clustering.method='knn'", "clustering.knn_neighbors=10", "clustering.knn_weighting='binary'",
                 "clustering.n_clusters=[4]", "clustering.seeds=[0]"]
    states, state = _run(_cfg(project_root, *overrides), store_root)
    arts = state.result(raise_on_failure=True)["artifacts"]
    for r in ("gradient", "abs_gradient"):
        assert {k for k in states if k.startswith(f"qdg-{r}-abs^0.25")} == {
            f"qdg-{r}-abs^0.25+module-norm-{b}" for b in ("0-50", "50-100", "100-120")}, states
        assert f"qdg-knn-affinity-{r}" in states
    assert not any(k.startswith("qdg-similarity") for k in states)
    arrays, attrs = store.read_zarr(arts["abs_gradient_block_0"])
    assert attrs["transform"] == "abs^0.25+module-norm" and attrs["representation"] == "abs_gradient"
    g = np.asarray(arrays["g"], dtype=np.float64)
    groups = block_groups(attrs["parameters"], attrs["parameter_sizes"], "module")
    norms = np.stack([np.sqrt(sum((g[:, a:b] ** 2).sum(1) for a, b in grp)) for grp in groups], axis=1)
    assert len(groups) > 2 and np.allclose(norms, 1 / np.sqrt(len(groups)), atol=1e-4)  # every module alike
    assert (g >= 0).all()
    np.testing.assert_allclose(g, store.read_zarr(arts["gradient_block_0"])[0]["g"], atol=1e-6)
    knn = store.read_zarr(arts["affinity_abs_gradient"])[0]
    assert set(np.unique(knn["data"]).tolist()) == {1.0}

    states, state = _run(_cfg(project_root, *overrides), store_root)
    state.result(raise_on_failure=True)
    assert _ran(states) == set(), _ran(states)
