"""Store upkeep without a Prefect server: lineage graphs and their renderings, the store's inventory and the gc plan,
result-file scanning, and staging the dir artifacts of a remote store."""
from __future__ import annotations

import base64
import datetime as dt
import json
import pickle
import uuid

import numpy as np
import pandas as pd
import pytest

from schemas import ArtifactValidationError
from storage import Store
from storage import lineage_graph as G
from storage import upkeep as U

SPEC_ATTRS = {"n_tasks": 2, "n_bits": 4, "k": 3, "alpha": 0.4, "seed": 0}
UTC = dt.timezone.utc


def _spec(store, seed=0):
    return store.write_zarr("sparse_parity.spec", {"subsets": np.array([[0, 1, 2], [1, 2, 3]]),
                                                   "probs": np.array([0.7, 0.3])}, dict(SPEC_ATTRS, seed=seed))


def _runs(store, spec, loss=1.0):
    df = pd.DataFrame({"model_id": ["m1"], "width": [4], "n_params": [100], "data_size": [-1], "seed": [0],
                       "alpha": [0.4], "step": [1], "mean_loss": [loss], "subtasks_learned": [0]})
    return store.write_table("sparse_parity.runs", df, inputs=[spec])


def _report(store, inputs, text="# r\n"):
    return store.write_dir("report", lambda p: (p / "report.md").write_text(text), inputs=inputs)


@pytest.fixture
def chain(store):
    spec = _spec(store)
    runs = _runs(store, spec)
    rep = _report(store, [runs, spec])
    return store, spec, runs, rep


def test_graph_of_a_report_renders_as_mermaid_dot_json_and_text(chain, capsys):
    store, spec, runs, rep = chain
    records = store.lineage_index()
    # a file inside the dir artifact, and the kind, both name the report
    assert G.resolve(records, rep.uri + "/report.md")["content_hash"] == rep.content_hash
    assert G.resolve(records, "report")["content_hash"] == rep.content_hash
    nodes = G.upstream_closure(store.lineage, [rep.content_hash])
    assert set(nodes) == {spec.content_hash, runs.content_hash, rep.content_hash}
    graph = G.graph_of(nodes)
    assert set(graph.edges) == {(spec.content_hash, runs.content_hash), (runs.content_hash, rep.content_hash),
                                (spec.content_hash, rep.content_hash)}
    assert graph.ordered() == [spec.content_hash, runs.content_hash, rep.content_hash]  # inputs first
    mermaid = graph.to_mermaid()
    assert mermaid.splitlines()[0] == "flowchart LR" and mermaid.count("-->") == 3
    assert f'a{spec.content_hash[:16]}["sparse_parity.spec<br/>{spec.content_hash[:12]}' in mermaid
    dot = graph.to_dot()
    assert dot.startswith("digraph lineage {") and dot.count("->") == 3 and dot.rstrip().endswith("}")

    from flows.cli import main

    for fmt, check in (("mermaid", lambda out: out.strip() == mermaid),
                       ("dot", lambda out: set(dot.splitlines()) <= set(out.splitlines()) and "label=" in out),
                       ("json", lambda out: {(e["input"], e["output"]) for e in json.loads(out)["edges"]}
                        == set(graph.edges))):
        assert main(["lineage", rep.uri + "/report.md", "--store", store.url, "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert check(out), (fmt, out)
    assert main(["lineage", spec.content_hash[:10], "--store", store.url, "--down", "--format", "mermaid"]) == 0
    down = capsys.readouterr().out
    assert down.count("-->") == 3 and rep.content_hash[:12] in down


def test_records_of_a_flow_run_and_a_missing_input(store):
    spec = _spec(store)
    records = [dict(r, flow_run_id="11111111-2222-3333-4444-555555555555") for r in store.lineage_index()]
    assert [r["content_hash"] for r in G.produced_by_run(records, records[0]["flow_run_id"])] == [spec.content_hash]
    assert G.is_flow_run_id(records[0]["flow_run_id"]) and not G.is_flow_run_id(spec.content_hash[:36])
    orphan = {"kind": "sparse_parity.runs", "content_hash": "f" * 64, "uri": "x", "inputs": [
        {"kind": "sparse_parity.spec", "content_hash": "e" * 64, "uri": "gone"}]}
    nodes = G.upstream_closure({orphan["content_hash"]: orphan}.get, [orphan["content_hash"]])
    assert nodes["e" * 64]["producer"] == "(record missing)"


def _run(rid: str, started: dt.datetime, *hashes: str) -> U.Run:
    return U.Run(rid, started, set(hashes), "sparse-parity")


def test_gc_plan_keeps_the_closure_of_kept_runs_only(store):
    spec = _spec(store)
    old_runs, new_runs = _runs(store, spec, 1.0), _runs(store, spec, 0.5)
    old_rep, new_rep = _report(store, [old_runs], "# old\n"), _report(store, [new_runs], "# new\n")
    orphan = _spec(store, seed=7)  # written outside any run
    records = store.lineage_index()
    now = dt.datetime(2026, 1, 10, tzinfo=UTC)
    runs = {"old": _run("old", now - dt.timedelta(days=9), spec.content_hash, old_runs.content_hash,
                        old_rep.content_hash),
            "new": _run("new", now - dt.timedelta(hours=1), new_runs.content_hash, new_rep.content_hash)}
    plan = U.plan_gc(records, runs, keep_last=1, now=now)
    assert [r.flow_run_id for r in plan.keep_runs] == ["new"]
    # the spec was written by the dropped run, but the kept run's artifacts were computed from it
    assert set(plan.keep) == {spec.content_hash, new_runs.content_hash, new_rep.content_hash}
    assert {r["content_hash"] for r in plan.remove} == {old_runs.content_hash, old_rep.content_hash,
                                                        orphan.content_hash}
    # --older-than keeps every run younger than it; combined with --keep-last, a run kept by either rule stays
    assert [r.flow_run_id for r in U.plan_gc(records, runs, older_than=dt.timedelta(days=10), now=now).keep_runs] \
        == ["new", "old"]
    assert [r.flow_run_id for r in U.plan_gc(records, runs, keep_last=0, older_than=dt.timedelta(days=1),
                                             now=now).keep_runs] == ["new"]
    with pytest.raises(ValueError, match="--keep-last"):
        U.plan_gc(records, runs)

    done = U.apply_gc(store, plan)
    assert done["artifacts_removed"] == 3 and done["bytes_freed"] > 0
    left = {r["content_hash"] for r in store.lineage_index()}
    assert left == set(plan.keep)
    assert store.read_table(new_runs).mean_loss.tolist() == [0.5]
    assert U.parse_duration("12h") == dt.timedelta(hours=12) and U.parse_duration("2") == dt.timedelta(days=2)
    with pytest.raises(ValueError, match="not a duration"):
        U.parse_duration("soon")


def test_result_files_name_artifacts_by_refs_or_by_bytes_never_by_unpickling(tmp_path, store):
    from tasks.caching import RefsJSONSerializer

    spec = _spec(store)
    task_result = tmp_path / "task"
    task_result.write_text(json.dumps({"metadata": {"serializer": {"type": "quanta-refs-json"}},
                                       "result": RefsJSONSerializer().dumps({"spec": spec}).decode()}))
    assert U.refs_in_result_file(task_result) == {(spec.content_hash, spec.uri)}
    assert U.result_file_names(task_result, {spec.uri}) and not U.result_file_names(task_result, {"/elsewhere"})
    flow_result = tmp_path / "flow"  # a flow's result: a base64 pickle, searched as bytes
    flow_result.write_bytes(base64.b64encode(pickle.dumps({"artifacts": {"spec": spec.model_dump()}})))
    assert U.refs_in_result_file(flow_result) == set()
    assert U.result_file_names(flow_result, {spec.uri}) and not U.result_file_names(flow_result, {"/elsewhere"})


def test_inventory_lists_every_artifact_with_size_and_totals(chain, capsys):
    store, spec, runs, rep = chain
    inv = U.inventory(store)
    assert list(inv.columns) == U.INVENTORY_COLUMNS and len(inv) == 3
    assert (inv["bytes"] > 0).all() and inv.loc[inv.kind == "report", "uri"].item() == rep.uri
    totals = U.totals_by_kind(inv)
    assert totals.iloc[-1].to_dict() == {"kind": "total", "artifacts": 3, "bytes": int(inv["bytes"].sum())}

    from flows.cli import main

    assert main(["store", "ls", "--store", store.url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {a["content_hash"] for a in out["artifacts"]} == {spec.content_hash, runs.content_hash, rep.content_hash}
    assert main(["store", "ls", "--store", store.url]) == 0
    text = capsys.readouterr().out
    assert "3 artifacts" in text and "sparse_parity.runs" in text and "total" in text
    assert main(["store", "gc", "--store", store.url]) == 2  # nothing said about what to keep
    assert "--keep-last" in capsys.readouterr().err


def test_dir_artifacts_of_a_remote_store_are_staged_verified_and_reused(tmp_path, monkeypatch):
    import fsspec

    monkeypatch.setenv("QUANTA_CACHE", str(tmp_path / "cache"))
    store = Store(f"memory://quanta-{uuid.uuid4().hex}")
    ref = store.write_dir("report", lambda p: ((p / "report.md").write_text("# staged\n"),
                                               (p / "sub").mkdir(), (p / "sub" / "a.bin").write_bytes(b"\x00\x01")))
    local = store.local_dir(ref)
    assert local == tmp_path / "cache" / "report" / ref.content_hash
    assert (local / "report.md").read_text() == "# staged\n" and (local / "sub" / "a.bin").read_bytes() == b"\x00\x01"
    assert not (local / "lineage.json").exists()  # not part of the content
    assert store.local_dir(ref) == local  # staged once per content hash
    assert [p.name for p in local.parent.iterdir()] == [ref.content_hash]  # no temp leftovers

    # a remote copy that no longer matches its hash is refused, and nothing is staged
    other = store.write_dir("report", lambda p: (p / "report.md").write_text("# other\n"))
    fs, path = fsspec.core.url_to_fs(other.uri)
    with fs.open(path + "/report.md", "w") as f:
        f.write("# tampered\n")
    with pytest.raises(ArtifactValidationError, match="field 'content'.*changed since it was written"):
        store.local_dir(other)
    assert sorted(p.name for p in local.parent.iterdir()) == [ref.content_hash]
