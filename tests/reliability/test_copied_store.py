"""A copied store (`cp -a A B`) is a store of its own: its lineage records name its own artifacts (relative to its
root), so `quanta store gc` on the copy keeps what the copy's runs need and removes the copy's files, never the
original's (issue 22, 8). Two tiny real flows, on Prefect's session test server."""
from __future__ import annotations

import json
import subprocess

import numpy as np
from prefect import flow

from storage import ArtifactRef, Store
from tasks.caching import quanta_task

SPEC_ATTRS = {"n_tasks": 2, "n_bits": 4, "k": 3, "alpha": 0.4, "seed": 0}


@quanta_task(name="copied-store-spec")
def spec_task(*, store: str) -> ArtifactRef:
    return Store(store).write_zarr("sparse_parity.spec", {"subsets": np.array([[0, 1, 2], [1, 2, 3]]),
                                                          "probs": np.array([0.7, 0.3])}, SPEC_ATTRS)


@quanta_task(name="copied-store-report")
def report_task(spec: ArtifactRef, *, text: str, store: str) -> ArtifactRef:
    return Store(store).write_dir("report", lambda p: (p / "report.md").write_text(text), inputs=[spec])


@flow(name="copied-store")
def study(text: str, store: str) -> dict:
    spec = spec_task(store=store)
    return {"spec": spec, "report": report_task(spec, text=text, store=store)}


def test_gc_on_a_copied_store_keeps_the_copys_runs_and_removes_only_the_copys_files(prefect_server, quanta, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    first = study("# made on A\n", str(a))
    subprocess.run(["cp", "-a", str(a), str(b)], check=True)
    second = study("# made on B\n", str(b))  # the same spec again (its record notes this run), a new report

    records = {r["content_hash"]: r for r in Store(b).lineage_index()}
    assert all(r["uri"].startswith(f"{b}/") for r in records.values()), [r["uri"] for r in records.values()]
    raw = json.loads((b / "_lineage" / f"{first['report'].content_hash}.json").read_text())
    assert raw["uri"] == f"report/{first['report'].content_hash[:24]}.d"  # relative to the store, as written

    plan = quanta("store", "gc", "--keep-last", "1", "--dry-run", "--json", "--store", b)
    assert plan.rc == 0, plan.text[-3000:]
    removed = {(r["kind"], r["uri"]) for r in plan.json["removed"]}
    b_first_report = str(b / "report" / f"{first['report'].content_hash[:24]}.d")
    assert removed == {("report", b_first_report)}, removed  # the run made on A is the one dropped
    assert plan.json["kept_artifacts"] == 2  # B's report and the spec it needs

    done = quanta("store", "gc", "--keep-last", "1", "--store", b)
    assert done.rc == 0, done.text[-3000:]
    assert not (b / "report" / f"{first['report'].content_hash[:24]}.d").exists()
    assert (a / "report" / f"{first['report'].content_hash[:24]}.d").is_dir()  # the original is untouched
    for root in (a, b):
        assert quanta("store", "verify", "--store", root).rc == 0, root
    assert Store(b).lineage(second["report"].content_hash)["uri"] == second["report"].uri


def test_gc_refuses_a_copied_store_whose_old_records_name_the_original(prefect_server, quanta, tmp_path):
    """Records written before uris were relative name the original's files: gc would delete those."""
    a, b = tmp_path / "a", tmp_path / "b"
    made = study("# old\n", str(a))
    record = a / "_lineage" / f"{made['report'].content_hash}.json"
    old = json.loads(record.read_text())
    record.write_text(json.dumps(dict(old, uri=str(a / old["uri"]))))  # as an older quanta wrote it
    subprocess.run(["cp", "-a", str(a), str(b)], check=True)
    got = quanta("store", "gc", "--keep-last", "0", "--records-only", "--store", b)
    assert got.rc == 2 and "name artifacts outside it" in got.err and str(a / "report") in got.err, got.text
    assert (a / old["uri"]).is_dir() and (b / old["uri"]).is_dir()
