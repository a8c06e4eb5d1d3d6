"""The alpha sweep (adding an alpha trains only the new one) and the CLI's JSON / lineage commands."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs/sparse_parity/tiny.toml")


def _sweep_toml(tmp_path, alphas) -> str:
    text = Path(TINY).read_text() + f"\n[sweep]\nalphas = {alphas}\n"
    p = tmp_path / f"sweep{len(alphas)}.toml"
    p.write_text(text)
    return str(p)


def _run_json(capsys, *argv) -> dict:
    rc = main(list(argv))
    assert rc == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_adding_an_alpha_trains_only_the_new_one(prefect_server, tmp_path, capsys):
    store = str(tmp_path / "store")
    first = _run_json(capsys, "run", "alpha-sweep", "--config", _sweep_toml(tmp_path, [0.3, 0.6]),
                      "--store", store, "--json")
    assert {e["alpha"] for e in first["results"]["exponents"]} == {0.3, 0.6}
    assert {e["quantity"] for e in first["results"]["exponents"]} >= {"alpha_N", "alpha_S"}
    second = _run_json(capsys, "run", "alpha-sweep", "--config", _sweep_toml(tmp_path, [0.3, 0.6, 0.9]),
                       "--store", store, "--json")
    from flows.running import final_task_states

    runs = final_task_states(second["flow_run_id"])
    shards = [state for name, state in runs if name.startswith("train-shard")]
    assert sorted(shards) == ["Cached", "Cached", "Completed"]
    specs = [state for name, state in runs if name.startswith("sparse-parity-spec")]
    assert sorted(specs) == ["Cached", "Cached", "Completed"]
    theory = {(e["alpha"], e["quantity"]): e["theory"] for e in second["results"]["exponents"]}
    assert theory[(0.9, "alpha_N")] == pytest.approx(0.9)
    assert theory[(0.9, "alpha_S")] == pytest.approx(0.9 / 1.9)
    assert second["task_states"]["Completed"] >= 1 and second["task_states"]["Cached"] >= 2


def test_cli_json_shape_and_lineage(prefect_server, tmp_path, capsys):
    store = str(tmp_path / "store")
    out = _run_json(capsys, "run", "sparse-parity", "--config", TINY, "--store", store, "--json",
                    "--set", "grid.widths=[8, 16, 24, 40]")
    assert set(out) == {"study", "flow_run_id", "store", "artifacts", "results", "task_states"}
    assert {"alpha_N", "alpha_N_ci", "alpha_theory"} <= set(out["results"])
    assert len(out["results"]["alpha_N_ci"]) == 2
    runs_hash = out["artifacts"]["runs"]["content_hash"]
    assert main(["lineage", runs_hash[:10], "--store", store, "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)["chain"]
    kinds = [c["kind"] for c in chain]
    assert kinds[0] == "sparse_parity.runs" and "sparse_parity.curves" in kinds and "sparse_parity.spec" in kinds
    assert chain[0]["producer"] == "runs-table" and chain[0]["flow_run_id"] == out["flow_run_id"]
    spec_hash = out["artifacts"]["spec"]["content_hash"]
    assert main(["lineage", spec_hash[:10], "--store", store, "--down"]) == 0
    text = capsys.readouterr().out
    assert "sparse_parity.fits" in text and "report" in text
    assert main(["lineage", "ffffffffff", "--store", store]) == 2


def test_several_studies_in_one_run_are_all_checked_before_any_work(prefect_server, tmp_path, capsys, monkeypatch):
    """`quanta run A B` (what `make demo` does): each study's config is $QUANTA_CONFIG_<STUDY> or its default; a bad
    config of the second study stops the run before the first does any work; then both run, in order."""
    import torch

    store = tmp_path / "store"
    lm_tiny = ROOT / "configs/lm/tiny.toml"
    monkeypatch.setenv("QUANTA_CONFIG_SPARSE_PARITY", TINY)
    if not torch.cuda.is_available():  # a device this machine lacks, in the second study only
        bad = tmp_path / "lm_cuda.toml"
        bad.write_text(lm_tiny.read_text().replace('device = "cpu"', 'device = "cuda"'))
        monkeypatch.setenv("QUANTA_CONFIG_LM_LOSSES", str(bad))
        assert main(["run", "sparse-parity", "lm-losses", "--store", str(store)]) == 2
        assert "suite.device" in capsys.readouterr().err
        assert not list(store.glob("sparse_parity.*")), "the first study ran before the second was checked"
    monkeypatch.setenv("QUANTA_CONFIG_LM_LOSSES", str(lm_tiny))
    assert main(["run", "sparse-parity", "lm-losses", "--store", str(store), "--json"]) == 0
    outs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [o["study"] for o in outs] == ["sparse-parity", "lm-losses"]
    assert all(o["task_states"].get("Completed") for o in outs)
    assert main(["run", "sparse-parity", "lm-losses", "--config", TINY]) == 2
    assert "--config and --set apply to one study" in capsys.readouterr().err
