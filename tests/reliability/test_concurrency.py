"""Two identical runs at once, on one store and one Prefect home, each with its own temporary Prefect server on the
home's SQLite database: every task is computed once (the other run waits for it and finds it Cached), both runs
return the same artifacts, the store verifies, and neither output shows a database error."""
from __future__ import annotations

import json
import subprocess

from reliability_cli import ROOT, SP_FAST, SP_TINY, cli_command, subprocess_env

TROUBLE = ("database is locked", "OperationalError", "Traceback", "| ERROR", "Crashed", "Failed(")


def test_two_identical_runs_at_once_compute_each_task_once(tmp_path):
    home, store = tmp_path / "prefect-home", tmp_path / "store"
    cmd = cli_command("run", "sparse-parity", "--config", SP_TINY, *SP_FAST, "--store", store, "--json")
    logs = [tmp_path / f"run{i}.log" for i in (1, 2)]
    procs = []
    for log in logs:
        with open(log, "wb") as out:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(home), stdout=out,
                                          stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=540) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n=====\n".join(t[-3000:] for t in texts)
    for text in texts:
        bad = [line for line in text.splitlines() if any(t in line for t in TROUBLE)]
        assert not bad, bad[:10]
    outs = [json.loads(t.strip().splitlines()[-1]) for t in texts]
    assert outs[0]["artifacts"] == outs[1]["artifacts"]
    assert outs[0]["results"] == outs[1]["results"]
    states = [o["task_states"] for o in outs]
    n_tasks = sum(states[0].values())
    assert sum(states[1].values()) == n_tasks
    # each task computed by exactly one of the two runs; the other found it Cached (after waiting, if it had to)
    assert states[0].get("Completed", 0) + states[1].get("Completed", 0) == n_tasks, states
    assert states[0].get("Cached", 0) + states[1].get("Cached", 0) == n_tasks, states

    from storage import Store
    from storage.verify import verify_store

    report = verify_store(Store(store))
    assert report.ok and report.checked == len(outs[0]["artifacts"]), report
    assert list((store / "_tmp").iterdir()) == []
