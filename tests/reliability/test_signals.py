"""SIGTERM and SIGINT stop a `quanta run` within seconds, mid-task: exit 128 + the signal, one line on stderr, no
process left (the temporary Prefect server, anything else it started), nothing half-written trusted; the same command
then resumes from the cache. SIGTERM goes to the whole process group, as `timeout` sends it; SIGINT to the process
alone. Slow (a temporary Prefect server per run, twice): `make test-slow`. The mechanism alone (a busy thread that
never looks at signals, a child process) is tested fast."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import sys

import psutil
import pytest

from reliability_cli import ROOT, SP_FAST, SP_TINY, cli_command, subprocess_env

BUSY = """
import subprocess, sys, threading, time
sys.path.insert(0, sys.argv[1])
from flows.interrupts import stop_on_signals

def work():  # like a task's thread: never looks at signals
    while True:
        sum(range(10000))

with stop_on_signals():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    threading.Thread(target=work).start()
    print(child.pid, flush=True)
    while True:
        time.sleep(1)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["term", "int"])
def test_a_signal_stops_busy_threads_and_children_with_one_line(sig):
    proc = subprocess.Popen([sys.executable, "-c", BUSY, str(ROOT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        child = psutil.Process(int(proc.stdout.readline()))
        proc.send_signal(sig)
        rc = proc.wait(timeout=10)
        _, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 128 + sig, (rc, err)
    assert err.strip().splitlines() == [err.strip()] and err.startswith(f"error: stopped by {sig.name}"), err
    _, alive = psutil.wait_procs([child], timeout=10)
    assert not alive


STARTING = """
import subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from flows.interrupts import stop_on_signals

with stop_on_signals():
    # like a Dask worker still starting: plain Python, which prints a KeyboardInterrupt traceback on SIGINT
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; print('ready', flush=True); time.sleep(600)"],
                             stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    print(child.pid, flush=True)
    while True:
        time.sleep(1)
"""


def test_repeated_ctrl_c_to_the_group_prints_one_line_and_no_traceback():
    """Ctrl-C reaches the whole process group, children included, and an impatient user presses it again: the one
    `error:` line, no KeyboardInterrupt traceback from a child (issue 22, 9), every child stopped, exit 130."""
    proc = subprocess.Popen([sys.executable, "-c", STARTING, str(ROOT)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child = psutil.Process(int(proc.stdout.readline()))
        os.killpg(proc.pid, signal.SIGINT)
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=10)
        _, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _, alive = psutil.wait_procs([child], timeout=10)
    assert not alive
    assert rc == 128 + signal.SIGINT, (rc, err)
    assert err.strip().splitlines() == [err.strip()] and err.startswith("error: stopped by SIGINT"), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


@pytest.mark.skipif(os.environ.get("QUANTA_SLOW_TESTS") != "1", reason="slow: QUANTA_SLOW_TESTS=1 (make test-slow)")
@pytest.mark.parametrize("sig,to_group", [(signal.SIGTERM, True), (signal.SIGINT, False)], ids=["term-group", "int"])
def test_a_signal_mid_task_stops_the_run_in_seconds_and_the_rerun_resumes(sig, to_group, tmp_path):
    home, store = tmp_path / "prefect-home", tmp_path / "store"
    out_log, err_log = tmp_path / "out.log", tmp_path / "err.log"
    cmd = cli_command("run", "sparse-parity", "--config", SP_TINY, "--set", "grid.steps=1000000",
                      "--set", "grid.groups_per_shard=1", "--store", store)
    with open(out_log, "wb") as out, open(err_log, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(home), stdout=out, stderr=err,
                                start_new_session=True)
    kids: list[psutil.Process] = []
    try:
        t0 = time.monotonic()
        # the spec task finished, the training shard runs (for minutes: a million steps)
        while "sparse-parity-spec" not in err_log.read_text():
            assert proc.poll() is None, err_log.read_text()[-3000:]
            assert time.monotonic() - t0 < 240, err_log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(2.0)
        kids = psutil.Process(proc.pid).children(recursive=True)
        assert any("flows.local_server" in " ".join(k.cmdline()) for k in kids), [k.cmdline() for k in kids]
        sent = time.monotonic()
        os.killpg(proc.pid, sig) if to_group else proc.send_signal(sig)
        rc = proc.wait(timeout=10)
        assert time.monotonic() - sent < 10
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc == 128 + sig, (rc, err_log.read_text()[-3000:])
    _, alive = psutil.wait_procs(kids, timeout=5)
    assert not alive, [(p.pid, p.cmdline()) for p in alive]
    err = err_log.read_text()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and signal.Signals(sig).name in errors[0], err[-3000:]
    assert err.rstrip().endswith(errors[0]) and "Traceback" not in err and "ConnectError" not in err, err[-3000:]
    assert "Traceback" not in out_log.read_text()

    # the same study again, shorter: the finished spec task comes back Cached, the run completes, the store is sound
    again = subprocess.run(cli_command("run", "sparse-parity", "--config", SP_TINY, *SP_FAST, "--store", store,
                                       "--json"), cwd=ROOT, env=subprocess_env(home), capture_output=True, text=True,
                           timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    states = json.loads(again.stdout.strip().splitlines()[-1])["task_states"]
    assert states.get("Cached", 0) >= 1, states

    from storage import Store
    from storage.verify import verify_store

    assert verify_store(Store(store)).ok
    assert list((store / "_tmp").iterdir()) == []
