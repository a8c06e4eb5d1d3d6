"""Running a study: its flow in this process (or its tasks on Dask), and the one JSON shape every study prints.

Before any work: the study's preflight (machine and file checks), and the removal of what killed writers left in the
store (storage.debris). Without a Prefect API (PREFECT_API_URL unset) the run gets a temporary server that dies with
this process (flows.local_server), so a killed run leaves no orphan server on the Prefect home's database.
"""
from __future__ import annotations

import contextlib
import json
from collections import Counter

from pydantic import BaseModel

from flows.local_server import temporary_api
from flows.studies import STUDIES
from schemas.jsonable import jsonable
from storage import ArtifactRef, Store


FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
SETTLE_TIMEOUT_S = 30.0


def _read_task_runs(client, flow_run_id) -> list:
    """Every task run (Prefect `TaskRun`) of the flow run and of its subflows (transitively), sorted by name."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    run_ids = [flow_run_id]
    frontier = [flow_run_id]
    while frontier:  # subflows, transitively
        subs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)))
        frontier = [r.id for r in subs]
        run_ids += frontier
    out, offset = [], 0
    while True:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)),
                                     limit=200, offset=offset)
        out += runs
        if len(runs) < 200:
            return sorted(out, key=lambda tr: (tr.name, str(tr.id)))
        offset += 200


def _state_key(runs: list) -> list[tuple[str, str, str]]:
    """(task run name, state type, state name) of each task run; one the server has not yet given a state is
    PENDING."""
    return [(tr.name, tr.state.type.name, tr.state.name) if tr.state is not None else (tr.name, "PENDING", "Pending")
            for tr in runs]


def _settle_seconds() -> float:
    """How long the task run states must stay unchanged to be the final ones. The server records task run states
    from the events the client sends, `batch_size` at a time or every `flush_interval` seconds: with batches of
    one (the default) each is written as it arrives."""
    from prefect.settings import get_current_settings

    recorder = get_current_settings().server.services.task_run_recorder
    return 0.3 if recorder.batch_size <= 1 else float(recorder.flush_interval) + 0.5


def final_task_runs(flow_run_id) -> list:
    """Every task run (Prefect `TaskRun`, with its final `state`: name, type, message) of the flow run and of its
    subflows, from the Prefect API, once they are final. Task runs and their states reach the server as events,
    recorded asynchronously, so a read right after the flow returns can miss the last task runs or show them still
    running: the events still queued in this process are sent first, then the runs are read until every state is
    final and they stay unchanged for a moment (at most SETTLE_TIMEOUT_S). Tests read task runs only through this
    (tests/test_layout.py checks it)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker

    with contextlib.suppress(Exception):
        EventsWorker.drain_all(timeout=30, at_exit=False)
    settle = _settle_seconds()
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    with get_client(sync_client=True) as client:
        runs = _read_task_runs(client, flow_run_id)
        while time.monotonic() < deadline:
            time.sleep(settle)
            again = _read_task_runs(client, flow_run_id)
            if _state_key(again) == _state_key(runs) and all(kind in FINAL_STATES for _, kind, _ in _state_key(runs)):
                break
            runs = again
    return runs


def final_task_states(flow_run_id) -> list[tuple[str, str]]:
    """(task run name, state name) of every task run of the flow run and of its subflows once final (see
    final_task_runs)."""
    return [(name, state) for name, _, state in _state_key(final_task_runs(flow_run_id))]


def task_state_counts(flow_run_id) -> dict[str, int]:
    """State name -> count over the flow run's final task run states (see final_task_states)."""
    return dict(Counter(state for _, state in final_task_states(flow_run_id)))


def study_output(study: str, flow_run_id, store: str, result: dict) -> dict:
    """The one JSON shape every study prints with --json."""
    arts = {name: {"uri": ref.uri, "content_hash": ref.content_hash, "kind": ref.kind}
            for name, ref in result["artifacts"].items() if isinstance(ref, ArtifactRef)}
    return {
        "study": study,
        "flow_run_id": str(flow_run_id),
        "store": store,
        "artifacts": arts,
        "results": jsonable(result.get("results", {})),
        "task_states": task_state_counts(flow_run_id),
    }


def dask_task_runner(address: str):
    """Prefect task runner on Dask: `local` starts a LocalCluster (scheduler and dashboard on 127.0.0.1 only);
    anything else is a scheduler address (tcp://host:8786). Workers must see the same store (a shared path or an
    fsspec URL) and Prefect API."""
    from prefect_dask import DaskTaskRunner

    if address == "local":
        return DaskTaskRunner(cluster_kwargs={"processes": True, "threads_per_worker": 1, "host": "127.0.0.1",
                                              "dashboard_address": "127.0.0.1:8787"})
    return DaskTaskRunner(address=address)


def run_study(study: str, config: BaseModel, store: str, *, refresh: bool = False,
              dask_address: str | None = None) -> dict:
    """Run a study's flow in this process (on PREFECT_API_URL's server, else a temporary one).

    `refresh` recomputes every task: Prefect's own PREFECT_TASKS_REFRESH_CACHE setting, for this run (it travels
    with the run's settings context to Dask workers too). A failed run raises its task's exception (a
    `schemas.UserInputError` for bad input), with the flow run's id in its `flow_run_id` attribute."""
    from prefect.logging import get_logger
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    _, flow = STUDIES[study].load()
    Store(store).check_root()
    STUDIES[study].preflight(config)
    removed = Store(store).clean_debris()
    if removed:
        get_logger("quanta").info("store: removed %d entries left by killed writers: %s", len(removed),
                                  ", ".join(removed[:5]) + (" ..." if len(removed) > 5 else ""))
    if dask_address:
        flow = flow.with_options(task_runner=dask_task_runner(dask_address))
    refreshing = temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}) if refresh else contextlib.nullcontext()
    with temporary_api():
        with refreshing:
            state = flow(config=config, store=store, return_state=True)
        flow_run_id = state.state_details.flow_run_id
        try:
            result = state.result(raise_on_failure=True)
        except Exception as e:
            with contextlib.suppress(Exception):
                e.flow_run_id = str(flow_run_id)
            raise
        return study_output(study, flow_run_id, store, result)


def dumps(obj: dict) -> str:
    return json.dumps(obj, indent=None, sort_keys=False, default=str)
