"""Store upkeep and lineage on real runs: two config versions of the tiny sparse-parity study, `quanta store gc
--keep-last 1` keeps the newer run's whole closure and removes only the older run's own artifacts (and their Prefect
cache files); a rerun after gc is all Cached; a fully cached run still holds on to everything it used; `quanta
lineage` of a flow run and of a report key; the report's lineage artifact and asset events on the server."""
from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

from flows.cli import main
from storage import Store
from storage.upkeep import result_file_names

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs/sparse_parity/tiny.toml")
# the second version: another width grid and another fit section
SECOND = ["grid.widths=[8, 16, 32, 64]", "fit.bootstrap=20", "fit.level=0.9"]


def _cli_json(capsys, *argv) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _run(capsys, store, *overrides) -> dict:
    return _cli_json(capsys, "run", "sparse-parity", "--config", TINY, "--store", store, "--json",
                     *[f"--set={o}" for o in overrides])


def _result_files() -> list[Path]:
    return [p for p in Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"]).iterdir() if p.is_file()]


def test_gc_keeps_the_newest_runs_closure_and_lineage_follows_runs_and_reports(prefect_server, tmp_path, capsys):
    store = str(tmp_path / "store")
    st = Store(store)
    first = _run(capsys, store)
    second = _run(capsys, store, *SECOND)
    first_arts = {a["content_hash"]: a for a in first["artifacts"].values()}
    second_arts = {a["content_hash"]: a for a in second["artifacts"].values()}
    shared = set(first_arts) & set(second_arts)
    # shared: the spec, and the counting-quanta table when both tiny grids learn no subtask (then its rows, "not
    # fitted", are the same content: one content-addressed artifact)
    kinds = {first_arts[h]["kind"] for h in shared}
    assert "sparse_parity.spec" in kinds and kinds <= {"sparse_parity.spec", "sparse_parity.quanta"}, kinds
    # a shared artifact's lineage names the inputs of the run that wrote it (the first): the kept run needs those too
    needed, todo = set(), list(shared)
    while todo:
        h = todo.pop()
        for i in st.lineage(h).get("inputs", []):
            if i["content_hash"] not in needed:
                needed.add(i["content_hash"])
                todo.append(i["content_hash"])
    exclusive = set(first_arts) - shared - needed
    own = set(second_arts)  # what the second run names itself
    second_arts.update({h: first_arts[h] for h in needed & set(first_arts)})
    exclusive_uris = {first_arts[h]["uri"] for h in exclusive}
    assert any(result_file_names(f, exclusive_uris) for f in _result_files())  # their cache records exist

    dry = _cli_json(capsys, "store", "gc", "--keep-last", "1", "--dry-run", "--json", "--store", store)
    assert [r["flow_run_id"] for r in dry["kept_runs"]] == [second["flow_run_id"]]
    assert {r["content_hash"] for r in dry["removed"]} == exclusive
    assert all(Path(first_arts[h]["uri"]).exists() for h in exclusive)  # a dry run removes nothing

    done = _cli_json(capsys, "store", "gc", "--keep-last", "1", "--json", "--store", store)
    assert {r["content_hash"] for r in done["removed"]} == exclusive and done["result_files_removed"] >= len(exclusive)
    left = {r["content_hash"] for r in st.lineage_index()}
    assert left == set(second_arts)  # the second run's closure (the spec the first run wrote included), intact
    assert not any(Path(first_arts[h]["uri"]).exists() for h in exclusive)
    assert not any(result_file_names(f, exclusive_uris) for f in _result_files())
    assert main(["lineage", second["artifacts"]["report"]["content_hash"][:12], "--store", store]) == 0
    assert "(record missing)" not in capsys.readouterr().out

    third = _run(capsys, store, *SECOND)  # after gc: everything it needs is there
    assert set(third["task_states"]) == {"Cached"}, third["task_states"]
    assert third["artifacts"] == second["artifacts"]

    # the newest run is now the fully cached one: it wrote nothing but needs everything, so nothing goes
    again = _cli_json(capsys, "store", "gc", "--keep-last", "1", "--json", "--store", store)
    assert [r["flow_run_id"] for r in again["kept_runs"]] == [third["flow_run_id"]]
    assert again["removed"] == [] and {r["content_hash"] for r in st.lineage_index()} == set(second_arts)

    # lineage of the cached run: everything reused from the second run, nothing written
    lin = _cli_json(capsys, "lineage", third["flow_run_id"], "--store", store, "--format", "json")
    roles = {n["content_hash"]: n["role"] for n in lin["nodes"]}
    assert set(roles) == set(second_arts) and {roles[h] for h in own} == {"reused"}
    assert {roles[h] for h in set(second_arts) - own} <= {"reused", "upstream"}  # the shared artifact's inputs
    lin2 = _cli_json(capsys, "lineage", second["flow_run_id"], "--store", store, "--format", "json")
    # it reused the first run's spec (and the quanta table, whose inputs are upstream of it)
    assert {"produced", "reused"} <= {n["role"] for n in lin2["nodes"]} <= {"produced", "reused", "upstream"}
    assert main(["lineage", second["flow_run_id"], "--store", store, "--format", "mermaid"]) == 0
    mermaid = capsys.readouterr().out
    assert mermaid.startswith("flowchart LR") and "classDef reused" in mermaid

    # a report key names the newest report of that key
    report_hash = second["artifacts"]["report"]["content_hash"]
    by_key = _cli_json(capsys, "lineage", "sparse-parity-report", "--store", store, "--format", "json")
    assert by_key["artifact"]["content_hash"] == report_hash
    assert {n["content_hash"] for n in by_key["nodes"]} == set(second_arts)

    # the report carries its lineage: in the store copy, and as the keyed lineage artifact
    report_md = (Path(second["artifacts"]["report"]["uri"]) / "report.md").read_text()
    assert "```mermaid" in report_md and second["artifacts"]["runs"]["content_hash"][:12] in report_md
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sparse-parity-lineage"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[second["flow_run_id"]])))
    (lineage_art,) = arts
    assert "```mermaid" in lineage_art.data and report_hash[:12] in lineage_art.data
    assert "classDef produced" in lineage_art.data and "classDef reused" in lineage_art.data
    _assert_asset_event(report_hash, second["artifacts"]["report"]["uri"], second["artifacts"]["runs"]["uri"])


def _assert_asset_event(report_hash: str, report_uri: str, runs_uri: str) -> None:
    """The report's materialization reached the server as a Prefect asset event, its inputs as related assets."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
    from prefect.types._datetime import now

    from tasks.reporting import asset_key

    flt = EventFilter(event=EventNameFilter(name=["prefect.asset.materialization.succeeded"]),
                      resource=EventResourceFilter(id=[asset_key(report_uri)]),
                      occurred=EventOccurredFilter(since=now("UTC") - dt.timedelta(hours=1),
                                                   until=now("UTC") + dt.timedelta(hours=1)))
    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            events = client.read_events(filter=flt, limit=50).events
        if events or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert events, "no asset materialization event for the report"
    ev = events[0]
    assert ev.payload["content_hash"] == report_hash
    assert asset_key(runs_uri) in {r.id for r in ev.related if r.role == "asset"}
