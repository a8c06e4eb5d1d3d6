"""Every process a run starts dies with it: kill -9 of a `quanta run` as soon as its Dask LocalCluster's first worker
process appears (mid-start-up: the worst moment) leaves no process behind within seconds (the workers, the temporary
Prefect server). Slow (a minute: the tiny lm-losses suite runs first): `make test-slow`."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest

from reliability_cli import ROOT, cli_command, subprocess_env

QDG_TINY = ROOT / "configs/qdg/tiny.toml"


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _is_dask_worker(p: psutil.Process) -> bool:
    try:
        return "multiprocessing" in " ".join(p.cmdline())
    except psutil.Error:
        return False


@pytest.mark.skipif(os.environ.get("QUANTA_SLOW_TESTS") != "1", reason="slow: QUANTA_SLOW_TESTS=1 (make test-slow)")
def test_kill_9_mid_similarity_leaves_no_process(tmp_path):
    home, store = tmp_path / "prefect-home", tmp_path / "store"
    log = tmp_path / "run.log"
    cmd = cli_command("run", "qdg", "--config", QDG_TINY, "--set", "similarity.n_workers=2", "--store", store)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(home), stdout=out, stderr=subprocess.STDOUT)
    seen: dict[int, psutil.Process] = {}
    try:
        t0 = time.monotonic()
        while True:  # until the LocalCluster's first worker process exists
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - t0 < 400, log.read_text()[-3000:]
            kids = _descendants(proc.pid)
            seen.update({p.pid: p for p in kids})
            if any(_is_dask_worker(p) for p in kids):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(list(seen.values()), timeout=10)
        assert not alive, [(p.pid, p.cmdline()) for p in alive if p.is_running()]
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in seen.values():
            if p.is_running():
                p.kill()
