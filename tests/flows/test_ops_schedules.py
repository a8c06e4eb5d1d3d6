"""Schedules that run: a real `prefect server start` (its own home and SQLite; unlike the session's test server it
runs the scheduler service), the tiny sparse-parity deployment on a few seconds' interval, and two scheduled runs:
the first Completed with its artifacts in the store, the second all Cached.

- `quanta serve` (no work pool): in the default suite (about 2 minutes).
- `prefect deploy` + a process work pool + `prefect worker start`: slower; runs when QUANTA_SLOW_TESTS=1
  (`make test-slow`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.prefect_servers import BIN, ROOT, clean_env, prefect_server, spawn, stop

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
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.running import final_task_states

    with temporary_settings({PREFECT_API_URL: api}):
        return sorted(state for _, state in final_task_states(flow_run_id))


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
        env = clean_env(tmp_path / "client-home", PREFECT_API_URL=api, QUANTA_STORE=store,
                   QUANTA_SCHEDULE_SPARSE_PARITY=INTERVAL_S, QUANTA_CONFIG_SPARSE_PARITY=TINY,
                   PREFECT_RUNNER_POLL_FREQUENCY=2)
        log = tmp_path / "serve.log"
        serve = spawn([sys.executable, "-m", "flows.cli", "serve", "--study", SP], env, log)
        try:
            runs = _scheduled_runs(api, 240, [log])
        finally:
            stop(serve)
        _check_two_runs(api, runs, store)


@pytest.mark.skipif(os.environ.get("QUANTA_SLOW_TESTS") != "1", reason="slow: QUANTA_SLOW_TESTS=1 (make test-slow)")
def test_deployed_schedule_runs_on_a_process_worker(tmp_path):
    store = tmp_path / "store"
    tiny = tomllib.loads(TINY.read_text())
    with prefect_server(tmp_path) as api:
        env = clean_env(tmp_path / "client-home", PREFECT_API_URL=api, QUANTA_STORE=store,
                   PREFECT_WORKER_QUERY_SECONDS=2)
        logs = []
        for i, cmd in enumerate([
                ["work-pool", "create", "quanta", "--type", "process"],
                # one run at a time, as `quanta serve` does (limit=1): a 15 s interval must not overlap its runs
                ["work-pool", "set-concurrency-limit", "quanta", "1"],
                ["--no-prompt", "deploy", "--name", "sparse_parity_flow/scheduled", "--interval", str(INTERVAL_S),
                 "--params", json.dumps({"config": tiny})]]):
            proc = subprocess.run([str(BIN / "prefect"), *cmd], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        log = tmp_path / "worker.log"
        logs.append(log)
        worker = spawn([str(BIN / "prefect"), "worker", "start", "--pool", "quanta"], env, log)
        try:
            runs = _scheduled_runs(api, 420, logs)
        finally:
            stop(worker)
        _check_two_runs(api, runs, store)
