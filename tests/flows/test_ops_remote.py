"""Every study runs on a store at an fsspec URL: the tiny lm-losses study on `memory://` (its models and tokenizer
are staged into a local cache keyed by content hash), the tiny sparse-parity study too (its report's lineage read
back from the memory store), and a diverging LM training run fails its task, naming the
model and the learning rate, with nothing stored."""
from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest

from fault_helpers import task_runs
from schemas.config import load_config
from schemas.lm import LMConfig
from storage import Store

ROOT = Path(__file__).resolve().parents[2]
LM_TINY = ROOT / "configs/lm/tiny.toml"
# two sizes are enough to show both paths (train, then score from the staged model)
SMALL = ["suite.sizes=[{d_model = 8, n_layers = 1, n_heads = 2}, {d_model = 32, n_layers = 2, n_heads = 4}]"]


def test_lm_losses_runs_on_a_memory_store(prefect_server, tmp_path, monkeypatch):
    from flows.running import run_study

    monkeypatch.setenv("QUANTA_CACHE", str(tmp_path / "cache"))
    url = f"memory://quanta-{uuid.uuid4().hex}"
    out = run_study("lm-losses", load_config(LMConfig, LM_TINY, SMALL), url)
    arts = out["artifacts"]
    assert all(a["uri"].startswith("memory://") for a in arts.values())
    assert out["task_states"] == {"Completed": out["task_states"]["Completed"]}
    res = out["results"]
    assert res["n_models"] == 2 and res["n_tokens_scored"] > 1000
    assert all(math.isfinite(v) and v > 0 for v in res["mean_loss"].values())
    # the tokenizer and each trained model were read back through a verified local copy, one per content hash
    staged = {p.parent.name: p.name for p in (tmp_path / "cache").glob("*/*")}
    assert staged.get("lm.tokenizer") == arts["tokenizer"]["content_hash"]
    assert {p.name for p in (tmp_path / "cache" / "lm.model").iterdir()} == {
        arts["model_0"]["content_hash"], arts["model_1"]["content_hash"]}
    st = Store(url)
    assert {r["kind"] for r in st.lineage_index()} >= {"lm.model", "lm.loss_column", "lm.token_losses", "report"}


def test_sparse_parity_runs_on_a_memory_store_and_its_lineage_reads_back(prefect_server, tmp_path, monkeypatch,
                                                                          capsys):
    from flows.cli import main
    from flows.running import run_study
    from schemas.sparse_parity import SparseParityConfig

    monkeypatch.setenv("QUANTA_CACHE", str(tmp_path / "cache"))
    url = f"memory://quanta-{uuid.uuid4().hex}"
    cfg = load_config(SparseParityConfig, ROOT / "configs/sparse_parity/tiny.toml", ["grid.steps=60"])
    out = run_study("sparse-parity", cfg, url)
    report = out["artifacts"]["report"]
    assert report["uri"].startswith("memory://") and out["results"]["final_loss_by_width"]
    md = Store(url).local_dir(_ref(report, url)) / "report.md"  # staged from the memory store
    assert "```mermaid" in md.read_text()
    assert main(["lineage", "report", "--store", url, "--format", "json"]) == 0
    nodes = {n["kind"] for n in json.loads(capsys.readouterr().out)["nodes"]}
    assert nodes == {"report", "sparse_parity.runs", "sparse_parity.fits", "sparse_parity.emergence",
                     "sparse_parity.step_test", "sparse_parity.quanta", "sparse_parity.curves", "sparse_parity.spec"}


def _ref(art: dict, url: str):
    from storage import ArtifactRef

    return ArtifactRef(**art, schema_version=Store(url).lineage(art["content_hash"])["schema_version"])


def test_a_diverging_training_run_fails_its_task_naming_model_and_lr(prefect_server, tmp_path):
    from flows.lm_losses import FLOW

    cfg = load_config(LMConfig, LM_TINY, SMALL + ["suite.lr=1e30", "suite.warmup_steps=0"])
    state = FLOW(config=cfg, store=str(tmp_path / "store"), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"model L1-d8 diverged.*learning rate 1e\+30"):
        state.result()
    states = task_runs(state.state_details.flow_run_id)  # once final: a read right after the flow can miss runs
    train = states["lm-train-L1-d8"]
    assert train.is_failed() and "learning rate 1e+30" in train.message
    assert not any(s.is_completed() for name, s in states.items() if name.startswith("lm-train-L"))
    assert "lm.model" not in {r["kind"] for r in Store(tmp_path / "store").lineage_index()}
