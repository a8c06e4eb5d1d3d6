"""Training dynamics (paper Figure 11): checkpoints as their own cached tasks, the real
`from_pretrained(name, revision=...)` on hub-style checkpoints the test creates, and the analysis on planted curves."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from schemas import ConfigError
from schemas.config import load_config
from schemas.lm import AnalysisConfig, LMConfig
from tasks.lm.decomposition import MONOGENIC, NONE, POLYGENIC
from tasks.lm.dynamics import checkpoint_plan, dynamics_tables, learned_steps

LN2 = math.log(2)
STEPS = np.array([10, 30, 100, 300, 1000])


def test_learned_step_is_where_the_loss_stays_below_the_threshold():
    bits = np.array([[5, 4, 0.1, 0.1, 0.1], [5, 0.1, 3, 0.1, 0.1], [5, 5, 5, 5, 0.2], [5, 5, 5, 5, 5]], float)
    out = learned_steps(bits * LN2, STEPS, 0.3)
    assert out[:3].tolist() == [100, 300, 1000] and math.isnan(out[3])


def test_dynamics_on_planted_curves_alpha_s_and_the_two_kinds_of_learning():
    sharp = [7.0, 6.5, 6.0, 0.1, 0.05]                       # one drop between steps 100 and 300
    gradual = list(6.0 - 0.6 * np.log(STEPS / STEPS[0]))     # 0.6 nats per e-fold of steps
    loss = np.array([sharp, gradual, [3.0] * 5], dtype=np.float32)
    cfg = AnalysisConfig(bootstrap=0)
    table, fit, tok, attrs = dynamics_tables(loss, STEPS, [f"s{s}" for s in STEPS], cfg)
    assert tok["cls"].tolist() == [MONOGENIC, POLYGENIC, NONE]
    assert attrs["counts"] == {"sharp": 1, "gradual": 1, "learned": 1}
    assert table.mean_loss.to_numpy() == pytest.approx(loss.astype(float).mean(axis=0))
    # alpha_S: minus the log-log slope of the mean loss on step
    slope = np.polyfit(np.log(STEPS), np.log(table.mean_loss.to_numpy()), 1)[0]
    assert fit["value"] == pytest.approx(-slope) and fit["ci_lo"] <= fit["value"] <= fit["ci_hi"]


def test_checkpoint_config_is_validated_and_planned(project_root):
    tiny = project_root / "configs" / "lm" / "tiny.toml"
    cfg = load_config(LMConfig, tiny, ["suite.checkpoint_steps=[5, 20]"])
    assert cfg.suite.dynamics_name() == cfg.suite.sizes[-1].label
    assert checkpoint_plan(cfg.suite) == [("step5", 5), ("step20", 20)]
    assert load_config(LMConfig, tiny).suite.dynamics_name() is None
    for overrides, needle in ((["suite.checkpoint_steps=[20, 5]"], "suite.checkpoint_steps must be increasing"),
                              (["suite.checkpoint_steps=[60]"], "< suite.steps = 60"),
                              (["suite.revisions=['step1']"], "suite.revisions are a pretrained suite's"),
                              (["suite.checkpoint_steps=[5]", "suite.dynamics_model='nope'"], "dynamics_model 'nope'")):
        with pytest.raises(ConfigError, match=needle):
            load_config(LMConfig, tiny, overrides)
    pre = {"suite": {"kind": "pretrained", "models": ["a/b"], "revisions": ["step300", "step1000", "step10"]}}
    assert checkpoint_plan(load_config(LMConfig, data=pre).suite) == [("step10", 10), ("step300", 300),
                                                                      ("step1000", 1000)]
    with pytest.raises(ConfigError, match="each 'step<N>'"):
        load_config(LMConfig, data={"suite": {"kind": "pretrained", "models": ["a/b"], "revisions": ["main"]}})


def _hub_cache(root, repo: str, revisions: dict[str, float]) -> None:
    """A Hugging Face hub cache laid out as the hub client writes it (models--org--name/refs/<revision> -> commit,
    snapshots/<commit>/files), one tiny GPT-NeoX per revision with every weight set to the given value."""
    import torch

    from schemas.lm import ModelSize
    from tasks.lm.suite import neox_config
    from transformers import GPTNeoXForCausalLM

    base = root / ("models--" + repo.replace("/", "--"))
    for i, (rev, value) in enumerate(revisions.items()):
        model = GPTNeoXForCausalLM(neox_config(ModelSize(d_model=8, n_layers=1, n_heads=2), 300, 16))
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(value)
        commit = f"{i + 1:040x}"
        snap = base / "snapshots" / commit
        model.save_pretrained(str(snap), safe_serialization=True)
        (base / "refs").mkdir(parents=True, exist_ok=True)
        (base / "refs" / rev).write_text(commit)


def test_a_pretrained_checkpoint_is_read_by_from_pretrained_at_its_revision(tmp_path, project_root):
    """ModelSource.pretrained(name, revision).load goes through transformers' from_pretrained(name,
    revision=...): offline, the hub client resolves refs/<revision> in its cache to that revision's files."""
    hub = tmp_path / "hub"
    _hub_cache(hub, "local/tiny-neox", {"step10": 0.01, "step20": 0.02})
    code = ("import json; from tasks.lm.model_source import ModelSource\n"
            "out = {}\n"
            "for rev in ('step10', 'step20'):\n"
            "    m, label = ModelSource.pretrained('local/tiny-neox', rev).load(None, 'float32', 'cpu')\n"
            "    out[rev] = [float(m.gpt_neox.embed_in.weight[0, 0]), label]\n"
            "print(json.dumps(out))")
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], cwd=project_root, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["step10"][0] == pytest.approx(0.01) and out["step20"][0] == pytest.approx(0.02)
    assert out["step10"][1] == "local/tiny-neox"
    shutil.rmtree(hub)


@pytest.mark.usefixtures("prefect_server")
def test_a_trained_suite_scores_its_checkpoints_each_as_its_own_task(project_root, store_root, store):
    from tests.lm.test_lm_flow import _run, _task_states

    tiny = project_root / "configs" / "lm" / "tiny.toml"
    cfg = load_config(LMConfig, tiny, ["suite.checkpoint_steps=[5, 20]"])
    run1, out = _run(cfg, store_root)
    res, arts = out["results"], out["artifacts"]
    assert res["dynamics_steps"] == [5, 20, 60]
    arrays, attrs = store.read_zarr(arts["checkpoint_losses"])
    big = cfg.suite.sizes[-1].label
    assert attrs["checkpoints"] == [f"{big}@step5", f"{big}@step20", big]
    # the final checkpoint is the suite's own column for that model
    losses, lattrs = store.read_zarr(arts["token_losses"])
    np.testing.assert_array_equal(arrays["loss"][:, -1], losses["loss"][:, lattrs["models"].index(big)])
    # a checkpoint is not the final model: it predicts worse on average
    assert np.nanmean(arrays["loss"][:, 0]) > np.nanmean(arrays["loss"][:, -1])
    assert res["alpha_S_ci"][0] <= res["alpha_S"] <= res["alpha_S_ci"][1]
    assert set(res["dynamics_counts"]) == {"sharp", "gradual", "learned"}
    report = store.local_dir(arts["report"])
    assert (report / "training_dynamics.png").exists()
    # one more checkpoint: only the dynamics model retrains (it saves them); the other sizes and columns are Cached
    more = load_config(LMConfig, tiny, ["suite.checkpoint_steps=[5, 10, 20]"])
    run2, out2 = _run(more, store_root)
    states = _task_states(run2)
    for size in cfg.suite.sizes[:-1]:
        assert states[f"lm-train-{size.label}"] == "Cached", states
    assert states[f"lm-train-{big}"] == "Completed" and out2["results"]["dynamics_steps"] == [5, 10, 20, 60]
