"""Schedules that run: a real `prefect server start` (its own home and SQLite; unlike the session's test server it
runs the scheduler service), the tiny sparse-parity deployment on a few seconds' interval, and two scheduled runs:
the first Completed with its artifacts in the store, the second all Cached.

- `quanta serve` (no work pool): in the default suite (about 2 minutes).
- `prefect deploy` + a process work pool + `prefect worker start`: slower; runs when QUANTA_SLOW_TESTS=1
  (`make test-slow`).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster_fixture import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TINY = ROOT / "configs/sparse_parity/tiny.toml"
INTERVAL_S = 15
SP = "sparse-parity"


def _scheduler_can_insert_runs() -> bool:
    """Prefect 3.8's scheduler fails on every insert with SQLAlchemy 2.1 ("Can't evaluate bulk DML statement"),
    so no scheduled run is ever created; pyproject.toml pins sqlalchemy<2.1 (`make setup` installs it)."""
    import sqlalchemy

    return tuple(int(p) for p in sqlalchemy.__version__.split(".")[:2]) < (2, 1)


pytestmark = pytest.mark.skipif(not _scheduler_can_insert_runs(), reason=(
    "SQLAlchemy >= 2.1 is installed: Prefect 3.8's scheduler cannot create runs with it; run `make setup` "
    "(pyproject.toml pins sqlalchemy<2.1)"))


def _env(home: Path, **extra) -> dict:
    """A clean Prefect environment: this home, no inherited test-session settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "QUANTA_"))}
    path = os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)
    env.update(PREFECT_HOME=str(home), QUANTA_PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONPATH=path, OMP_NUM_THREADS="1", PREFECT_LOGGING_LEVEL="INFO")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _spawn(cmd: list[str], env: dict, log: Path, cwd: Path = ROOT) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen, sig=signal.SIGINT) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextlib.contextmanager
def prefect_server(tmp: Path, timeout: float = 240) -> Iterator[str]:
    """`prefect server start` on a free loopback port with its own home and SQLite database; yields the API URL.
    The scheduler checks new deployments every 2 s (default 5) so that the test does not wait on it."""
    import httpx

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    home = tmp / "server-home"
    env = _env(home, PREFECT_UI_ENABLED="false",
               PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS=2,
               PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS=5)
    log = tmp / "server.log"
    proc = _spawn([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"prefect server exited:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"prefect server not healthy:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield api
    finally:
        _stop(proc, signal.SIGTERM)


def _scheduled_runs(api: str, timeout: float, logs: list[Path]) -> list:
    """Wait until two runs of the deployment are Completed (or one fails); return them, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(
                any_=["scheduled"])), sort=FlowRunSort.EXPECTED_START_TIME_ASC)
            done = [r for r in runs if r.state and r.state.is_final()]
            failed = [r for r in done if not r.state.is_completed()]
            tail = "\n".join(p.read_text()[-2500:] for p in logs if p.exists())
            assert not failed, f"a scheduled run ended {failed[0].state.name}: {failed[0].state.message}\n{tail}"
            if len(done) >= 2:
                return sorted(done, key=lambda r: r.start_time)[:2]
            assert time.monotonic() < deadline, f"two scheduled runs did not complete in {timeout}s:\n{tail}"
            time.sleep(2)


def _task_states(api: str, flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        trs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return sorted(tr.state.name for tr in trs)


def _check_two_runs(api: str, runs: list, store: Path) -> None:
    first, second = runs
    assert first.auto_scheduled and second.auto_scheduled  # made by the server's scheduler, not by hand
    assert {"quanta", SP, "scheduled"} <= set(first.tags)
    states1, states2 = _task_states(api, first.id), _task_states(api, second.id)
    assert len(states1) >= 6 and set(states1) == {"Completed"}, states1
    assert len(states2) == len(states1) and set(states2) == {"Cached"}, states2
    from storage import Store

    records = Store(store).lineage_index()
    assert {r["flow_run_id"] for r in records} == {str(first.id)}  # the first run wrote it all, the second nothing
    assert {"sparse_parity.spec", "sparse_parity.curves", "sparse_parity.runs", "report"} <= \
        {r["kind"] for r in records}
    report = next(r for r in records if r["kind"] == "report")
    assert (Path(report["uri"]) / "report.md").read_text().startswith("# Sparse parity (tiny)")


def test_served_schedule_runs_then_comes_back_cached(tmp_path):
    store = tmp_path / "store"
    with prefect_server(tmp_path) as api:
        env = _env(tmp_path / "client-home", PREFECT_API_URL=api, QUANTA_STORE=store,
                   QUANTA_SCHEDULE_SPARSE_PARITY=INTERVAL_S, QUANTA_CONFIG_SPARSE_PARITY=TINY,
                   PREFECT_RUNNER_POLL_FREQUENCY=2)
        log = tmp_path / "serve.log"
        serve = _spawn([sys.executable, "-m", "flows.cli", "serve", "--study", SP], env, log)
        try:
            runs = _scheduled_runs(api, 240, [log])
        finally:
            _stop(serve)
        _check_two_runs(api, runs, store)


@pytest.mark.skipif(os.environ.get("QUANTA_SLOW_TESTS") != "1", reason="slow: QUANTA_SLOW_TESTS=1 (make test-slow)")
def test_deployed_schedule_runs_on_a_process_worker(tmp_path):
    store = tmp_path / "store"
    tiny = tomllib.loads(TINY.read_text())
    with prefect_server(tmp_path) as api:
        env = _env(tmp_path / "client-home", PREFECT_API_URL=api, QUANTA_STORE=store,
                   PREFECT_WORKER_QUERY_SECONDS=2)
        logs = []
        for i, cmd in enumerate([
                ["work-pool", "create", "quanta", "--type", "process"],
                ["--no-prompt", "deploy", "--name", f"{SP}/scheduled", "--interval", str(INTERVAL_S),
                 "--params", json.dumps({"config": tiny})]]):
            proc = subprocess.run([str(BIN / "prefect"), *cmd], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        log = tmp_path / "worker.log"
        logs.append(log)
        worker = _spawn([str(BIN / "prefect"), "worker", "start", "--pool", "quanta"], env, log)
        try:
            runs = _scheduled_runs(api, 420, logs)
        finally:
            _stop(worker)
        _check_two_runs(api, runs, store)
