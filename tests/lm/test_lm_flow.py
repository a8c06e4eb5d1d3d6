"""The lm-losses flow end to end under a real Prefect server: results, artifacts, and per-model caching."""
from __future__ import annotations

import numpy as np
import pytest

from fault_helpers import task_states
from schemas.config import load_config
from schemas.lm import LMConfig


def _task_states(flow_run_id) -> dict[str, str]:
    """task run name -> final state name, for one flow run."""
    return task_states(flow_run_id)


def _run(cfg, store_root):
    from flows.lm_losses import FLOW

    state = FLOW(config=cfg, store=store_root, return_state=True)
    return state.state_details.flow_run_id, state.result(raise_on_failure=True)


@pytest.mark.usefixtures("prefect_server")
def test_tiny_flow_end_to_end_and_adding_a_model_computes_only_its_column(project_root, store_root, store):
    full = load_config(LMConfig, project_root / "configs" / "lm" / "tiny.toml")
    first = full.model_copy(deep=True)
    first.suite.sizes = full.suite.sizes[:3]
    run1, out1 = _run(first, store_root)
    states1 = _task_states(run1)
    assert all(s == "Completed" for s in states1.values()), states1
    assert out1["results"]["n_models"] == 3

    run2, out2 = _run(full, store_root)
    states2 = _task_states(run2)
    old, new = [s.label for s in full.suite.sizes[:3]], full.suite.sizes[3].label
    for label in old:  # the models already trained and scored come back from the cache
        assert states2[f"lm-train-{label}"] == "Cached", states2
        assert states2[f"lm-token-losses-{label}"] == "Cached", states2
    assert states2[f"lm-train-{new}"] == "Completed" and states2[f"lm-token-losses-{new}"] == "Completed"
    for name in ("lm-corpus", "lm-train-tokenizer", "lm-tokenize-eval", "lm-tokenize-train"):
        assert any(k.startswith(name) and v == "Cached" for k, v in states2.items()), (name, states2)
    assemble = [v for k, v in states2.items() if k.startswith("lm-assemble-losses")]
    assert assemble == ["Completed"]  # the cheap assembly reruns with the new column

    res = out2["results"]
    for key in ("alpha_N", "alpha_N_ci", "n_tokens", "n_models", "monogenic_fraction", "polygenic_fraction"):
        assert key in res, key
    assert res["n_models"] == 4 and res["n_tokens"] > 1000
    ml = [res["mean_loss"][m] for m in res["models"]]
    assert ml[0] > ml[-1] and res["mean_loss_decreasing"], ml  # mean loss falls with size
    assert res["alpha_N"] > 0 and res["alpha_N_ci"][0] <= res["alpha_N"] <= res["alpha_N_ci"][1]
    assert res["n_params_nonembed"] == sorted(res["n_params_nonembed"])

    arts = out2["artifacts"]
    assert {"documents", "texts", "tokenizer", "eval_tokens", "train_tokens", "token_losses", "scaling", "fits",
            "token_classes", "loss_distribution", "transitions", "alpha_n_resampled", "report"} <= set(arts)
    # both polygenic statistics counted on the same tokens; the paper's is the one used
    assert res["poly_statistic"] == "paper" and set(res["classes_by_statistic"]) == {"paper", "loglog"}
    n_scored = res["n_tokens_scored"]
    assert res["polygenic_fraction"] == pytest.approx(res["classes_by_statistic"]["paper"]["polygenic"] / n_scored)
    # alpha_N by log-log OLS, its document-resampled interval around the estimate of the same data
    lo, hi = res["alpha_N_ci_documents"]
    resampled = store.read_table(arts["alpha_n_resampled"])
    assert lo <= resampled.value.iloc[0] <= hi and set(res["stay_learned_fraction"]) == set(res["models"][:-1])
    dist, _ = store.read_zarr(arts["loss_distribution"])
    assert dist["mean_loss_bits"] == pytest.approx([res["mean_loss"][m] / np.log(2) for m in res["models"]])
    arrays, attrs = store.read_zarr(arts["token_losses"])
    toks, _ = store.read_zarr(arts["eval_tokens"])
    assert arrays["loss"].shape == (toks["ids"].shape[0], 4) and attrs["models"] == res["models"]
    nan_rows = np.flatnonzero(np.isnan(arrays["loss"]).any(axis=1))
    assert nan_rows.tolist() == toks["offsets"][:-1].tolist()  # exactly the first token of each document
    # the first run's three columns are the same artifacts as the second run's
    cols1 = {out1["artifacts"][f"loss_column_{i}"].content_hash for i in range(3)}
    cols2 = {out2["artifacts"][f"loss_column_{i}"].content_hash for i in range(4)}
    assert cols1 < cols2
    # a trained model from the store loads through the same from_pretrained path
    from tasks.lm.model_source import load_causal_lm, model_meta

    mdir = store.local_dir(arts["model_3"])
    model = load_causal_lm(mdir)
    assert model_meta(mdir)["n_params_nonembed"] == res["n_params_nonembed"][3]
    report = store.local_dir(arts["report"])
    assert (report / "report.md").read_text().count("alpha_N") >= 1 and (report / "mean_loss_vs_n.png").exists()
    assert (report / "loss_distribution_paper_axes.png").exists()
    del model


@pytest.mark.usefixtures("prefect_server")
def test_pretrained_suite_from_local_directories(tmp_path, store_root, store):
    """The pretrained path (what runs Pythia) on two tiny GPT-NeoX models saved locally with their tokenizer."""
    import torch
    from transformers import GPTNeoXForCausalLM

    from schemas.lm import ModelSize
    from tasks.lm.suite import neox_config
    from tasks.lm.tokenizer import train_bpe

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * (5 + i))
    tok = train_bpe([p.read_text() for p in docs.iterdir()], 300, 1)
    paths = []
    for d in (8, 16):
        torch.manual_seed(d)
        path = tmp_path / f"neox-{d}"
        GPTNeoXForCausalLM(neox_config(ModelSize(d_model=d, n_layers=1, n_heads=2), 300, 16)).save_pretrained(path)
        tok.save_pretrained(path)
        paths.append(str(path))
    cfg = LMConfig.model_validate({
        "corpus": {"kind": "files", "path": str(docs), "eval_fraction": 0.5},
        "suite": {"kind": "pretrained", "models": paths[::-1], "context_length": 64, "eval_batch_size": 4,
                  "device": "cpu"},
        "analysis": {"bootstrap": 0}, "report": {"plots": False}})
    _, out = _run(cfg, store_root)
    res = out["results"]
    assert res["models"] == paths and res["n_models"] == 2  # ordered by non-embedding N
    assert res["alpha_N_method"] == "two-point" and res["alpha_N_ci"] == [None, None]
    assert "train_tokens" not in out["artifacts"]
    _, attrs = store.read_zarr(out["artifacts"]["loss_column_0"])
    assert attrs["context_length"] == 16  # capped at the model's max_position_embeddings
