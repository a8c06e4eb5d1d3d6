"""Faults: damaged, truncated and deleted artifacts (found, named, repaired with and without --refresh); kill -9 in
the middle of a write and in the middle of the training grid (no debris trusted or left, no lock or server left)."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil

from fault_helpers import chunk_files, flip_bytes, states_of, task_states
from reliability_cli import ROOT, SP_FAST, SP_TINY, cli_command, subprocess_env

RUN = ["run", "sparse-parity", "--config", SP_TINY, *SP_FAST, "--json"]


def _hashes(out: dict) -> dict[str, str]:
    return {name: a["content_hash"] for name, a in out["artifacts"].items()}


def test_damage_is_found_named_and_healed(prefect_server, quanta, tmp_path):
    store = tmp_path / "store"
    base = quanta(*RUN, "--store", store)
    assert base.rc == 0, base.text[-3000:]
    arts = base.json["artifacts"]

    # three kinds of damage: a truncated chunk (a cache hit sees the size), a deleted artifact, and bytes flipped in
    # place with size and mtime kept (only a re-hash sees it)
    chunk = chunk_files(arts["curves_0"]["uri"])[0]
    with open(chunk, "r+b") as f:
        f.truncate(max(1, chunk.stat().st_size // 2))
    os.remove(arts["fits"]["uri"])
    flip_bytes(arts["emergence"]["uri"])
    found = quanta("store", "verify", "--store", store, "--json")
    assert found.rc == 1, found.text
    bad = {(f["kind"], f["content_hash"][:12]) for f in found.json["bad"]}
    assert bad == {(arts[n]["kind"], arts[n]["content_hash"][:12]) for n in ("curves_0", "fits", "emergence")}, bad
    text = quanta("store", "verify", "--store", store)
    assert text.rc == 1 and "quanta store verify --repair" in text.err
    for n in ("curves_0", "fits", "emergence"):
        assert arts[n]["content_hash"][:12] in text.out

    repaired = quanta("store", "verify", "--repair", "--store", store, "--json")
    assert repaired.rc == 1 and all(f["quarantined_to"] for f in repaired.json["bad"])
    assert quanta("store", "verify", "--store", store).rc == 0

    # a plain rerun recomputes exactly what was quarantined, to the same content
    healed = quanta(*RUN, "--store", store)
    assert healed.rc == 0, healed.text[-3000:]
    states = task_states(healed.json["flow_run_id"])
    assert states_of(states, "train-shard") == ["Completed"], states
    assert states_of(states, "emergence-table") == ["Completed"] and states_of(states, "fit-exponents") == [
        "Completed"], states
    assert states_of(states, "sparse-parity-spec") == ["Cached"] and states_of(states, "runs-table") == ["Cached"]
    assert _hashes(healed.json) == _hashes(base.json)
    assert quanta("store", "verify", "--store", store).rc == 0

    # damage only a re-hash sees, in an artifact a recomputing task reads: the run stops on one line naming it ...
    flip_bytes(arts["runs"]["uri"])
    shutil.rmtree(arts["report"]["uri"])
    stopped = quanta(*RUN, "--store", store)
    assert stopped.rc == 3, stopped.text[-3000:]
    line = [x for x in stopped.err.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and f"sparse_parity.runs@{arts['runs']['content_hash'][:12]}" in line[0], stopped.err
    assert "quanta store verify --repair" in line[0] and "--refresh" in line[0]
    assert "Traceback" not in stopped.text
    # ... and --refresh repairs it: the recomputed, identical content replaces the damaged copy
    refreshed = quanta(*RUN, "--refresh", "--store", store)
    assert refreshed.rc == 0, refreshed.text[-3000:]
    assert set(task_states(refreshed.json["flow_run_id"]).values()) == {"Completed"}
    assert _hashes(refreshed.json) == _hashes(base.json)
    assert quanta("store", "verify", "--store", store).rc == 0


WRITER = """
import sys, time
sys.path.insert(0, sys.argv[2])
import numpy as np
from storage import Store
st = Store(sys.argv[1])
with st.zarr_writer("sparse_parity.spec", attrs={"n_tasks": 2, "n_bits": 4, "k": 3, "alpha": 0.4, "seed": 0}) as w:
    w.group.create_array("subsets", shape=(2, 3), dtype="int64")[...] = np.array([[0, 1, 2], [1, 2, 3]])
    print("writing", flush=True)
    time.sleep(600)
"""


def test_kill_9_mid_write_leaves_debris_the_next_run_removes(prefect_server, quanta, tmp_path):
    store = tmp_path / "store"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store), str(ROOT)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()
    writer.wait()
    tmp_entries = list((store / "_tmp").iterdir())
    assert len(tmp_entries) == 1 and tmp_entries[0].name.endswith(f"~{socket.gethostname()}~{writer.pid}.zarr")
    # and a lineage record cut at its first byte by the same kill, as 0-byte .tmp files are
    stale_record = store / "_lineage" / f"{'a' * 64}.json.{'b' * 32}~{socket.gethostname()}~{writer.pid}.tmp"
    stale_record.touch()
    assert not list(store.glob("sparse_parity.spec/*")), "nothing half-written is published"
    assert quanta("store", "verify", "--store", store).rc == 0  # debris is not damage: reported, not trusted
    run = quanta(*RUN, "--store", store)
    assert run.rc == 0, run.text[-3000:]
    assert list((store / "_tmp").iterdir()) == [] and not stale_record.exists()
    assert quanta("store", "verify", "--store", store).rc == 0


def test_kill_9_mid_grid_leaves_no_server_no_lock_and_nothing_trusted_half_written(tmp_path):
    from tasks.run_locks import FlockLockManager

    home, store = tmp_path / "prefect-home", tmp_path / "store"
    log = tmp_path / "run.log"
    # a million steps: minutes of training at any speed, so the kill lands mid-shard
    cmd = cli_command("run", "sparse-parity", "--config", SP_TINY, "--set", "grid.steps=1000000",
                      "--set", "grid.groups_per_shard=1", "--store", store)

    def held_locks():
        return [p for p in (home / "locks").glob("*.lock") if FlockLockManager(home / "locks").is_locked(p.stem)]

    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(home), stdout=out, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        # training: the shard's task holds its cache key's lock (the spec task's lock lasts a fraction of a second)
        while not ("Beginning flow run" in log.read_text() and held_locks() and (time.sleep(1.0) or held_locks())):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - t0 < 240, log.read_text()[-3000:]
            time.sleep(0.2)
        servers = [c for c in psutil.Process(proc.pid).children() if "flows.local_server" in " ".join(c.cmdline())]
        assert len(servers) == 1, [c.cmdline() for c in psutil.Process(proc.pid).children()]
        assert held_locks(), "the running task holds its cache key's lock"
        assert "Task run 'train-shard" not in log.read_text(), "the shard was still training when killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(servers, timeout=30)
        assert not alive, "the temporary Prefect server outlived its killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
    locks = FlockLockManager(home / "locks")
    assert not [p.name for p in (home / "locks").glob("*.lock") if locks.is_locked(p.stem)]
    from storage import Store
    from storage.verify import verify_store

    report = verify_store(Store(store))
    assert report.ok, report.bad  # whatever was published before the kill is complete and sound


def test_one_truncated_lineage_record_is_named_and_the_rest_still_shown(quanta, tmp_path):
    import pandas as pd

    from storage import Store

    st = Store(tmp_path / "store")
    row = {"model_id": ["m1"], "width": [4], "n_params": [100], "data_size": [-1], "seed": [0], "alpha": [0.4],
           "step": [1], "mean_loss": [1.0], "subtasks_learned": [0]}
    parent = st.write_table("sparse_parity.runs", pd.DataFrame(row))
    child = st.write_table("sparse_parity.runs", pd.DataFrame({**row, "seed": [1]}), inputs=[parent])
    record = tmp_path / "store" / "_lineage" / f"{parent.content_hash}.json"
    record.write_text(record.read_text()[:30])  # cut by a full disk or a kill
    got = quanta("lineage", child.content_hash[:12], "--store", st.url)
    assert got.rc == 0, got.text
    assert str(record) in got.err and "unreadable" in got.err
    assert child.content_hash[:12] in got.out and "Traceback" not in got.text


def test_an_artifact_damaged_again_after_a_heal_is_warned_about_once(prefect_server, quanta, tmp_path, caplog):
    """Each heal moves a task's cache key to a successor; damage after a heal makes both records stale, and the run
    says so once, not once per record (issue 22, 9: the cache warning printed 2-3 times)."""
    store = tmp_path / "store"
    base = quanta(*RUN, "--store", store)
    assert base.rc == 0, base.text[-3000:]
    fits = base.json["artifacts"]["fits"]["uri"]
    for _ in range(2):
        os.remove(fits)
        caplog.clear()  # the run log's records (the terminal's copy depends on what earlier tests did to stderr)
        with caplog.at_level(logging.WARNING, logger="prefect"):
            again = quanta(*RUN, "--store", store)
        assert again.rc == 0, again.text[-3000:]
    warned = [r.getMessage() for r in caplog.records if "not trusting its cached result" in r.getMessage()]
    assert len(warned) == 1 and "fit-exponents" in warned[0] and "1 earlier recomputation" in warned[0], warned
