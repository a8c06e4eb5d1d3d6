"""`--json`'s task_states are read after every task run's state is final on the server (task run states reach it as
events, recorded asynchronously): they add up to the tasks the flow ran, and a rerun is all `Cached`."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from fault_helpers import task_states
from reliability_cli import ROOT, SP_FAST, SP_TINY, cli_command, subprocess_env

RUN = ["run", "sparse-parity", "--config", SP_TINY, *SP_FAST, "--json"]
FINAL = {"Completed", "Cached", "Failed", "Crashed", "Cancelled"}


def test_task_states_are_final_and_add_up_on_a_run_and_its_rerun(prefect_server, quanta, tmp_path):
    store = tmp_path / "store"
    first = quanta(*RUN, "--store", store)
    assert first.rc == 0, first.text[-3000:]
    states = first.json["task_states"]
    n_tasks = sum(states.values())
    assert set(states) <= FINAL and states.get("Completed") == n_tasks, states
    again = quanta(*RUN, "--store", store)
    assert again.rc == 0, again.text[-3000:]
    assert again.json["task_states"] == {"Cached": n_tasks}, again.json["task_states"]
    assert sorted(task_states(again.json["flow_run_id"]).values()) == ["Cached"] * n_tasks


@pytest.mark.skipif(os.environ.get("QUANTA_SLOW_TESTS") != "1", reason="slow: QUANTA_SLOW_TESTS=1 (make test-slow)")
def test_task_states_wait_for_a_server_that_records_them_late(tmp_path):
    """The temporary server writes task run states in batches (every 2 s): the counts still come out final."""
    env = subprocess_env(tmp_path / "home", PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE="1000",
                         PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL="2")
    outs = []
    for _ in range(2):
        got = subprocess.run(cli_command(*RUN, "--store", tmp_path / "store"), cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=400)
        assert got.returncode == 0, got.stderr[-3000:]
        outs.append(json.loads(got.stdout.strip().splitlines()[-1])["task_states"])
    n_tasks = outs[0].get("Completed", 0)
    assert n_tasks >= 5 and outs == [{"Completed": n_tasks}, {"Cached": n_tasks}], outs
