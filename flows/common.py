"""What every study flow shares: the study registry, running a flow, and the CLI's JSON result shape."""
from __future__ import annotations

import importlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from storage import ArtifactRef
from storage.settings import PROJECT_ROOT


@dataclass(frozen=True)
class Study:
    name: str
    module: str  # flows module defining `FLOW` and `CONFIG`
    default_config: str  # relative to the project root

    def load(self):
        mod = importlib.import_module(self.module)
        return mod.CONFIG, mod.FLOW


STUDIES: dict[str, Study] = {
    "sparse-parity": Study("sparse-parity", "flows.sparse_parity", "configs/sparse_parity/demo.toml"),
    "alpha-sweep": Study("alpha-sweep", "flows.alpha_sweep", "configs/sparse_parity/alpha_sweep_demo.toml"),
    "lm-losses": Study("lm-losses", "flows.lm_losses", "configs/lm/demo.toml"),
}


def available_studies() -> list[str]:
    out = []
    for name, study in STUDIES.items():
        try:
            importlib.import_module(study.module)
            out.append(name)
        except ModuleNotFoundError:
            continue
    return out


def task_state_counts(flow_run_id) -> dict[str, int]:
    """State name -> count over the flow run's task runs (and those of its subflows), from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    counts: Counter[str] = Counter()
    with get_client(sync_client=True) as client:
        run_ids = [flow_run_id]
        frontier = [flow_run_id]
        while frontier:  # subflows, transitively
            subs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)))
            frontier = [r.id for r in subs]
            run_ids += frontier
        offset = 0
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)),
                                         limit=200, offset=offset)
            for tr in runs:
                if tr.state is not None:
                    counts[tr.state.name] += 1
            if len(runs) < 200:
                break
            offset += 200
    return dict(counts)


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if hasattr(v, "item") and callable(v.item):
        return _json_value(v.item())
    if isinstance(v, BaseModel):
        return v.model_dump(mode="json")
    return v


def study_output(study: str, flow_run_id, store: str, result: dict) -> dict:
    """The one JSON shape every study prints with --json."""
    arts = {name: {"uri": ref.uri, "content_hash": ref.content_hash, "kind": ref.kind}
            for name, ref in result["artifacts"].items() if isinstance(ref, ArtifactRef)}
    return {
        "study": study,
        "flow_run_id": str(flow_run_id),
        "store": store,
        "artifacts": arts,
        "results": _json_value(result.get("results", {})),
        "task_states": task_state_counts(flow_run_id),
    }


def dask_task_runner(address: str):
    """Prefect task runner on Dask: `local` starts a LocalCluster; anything else is a scheduler address
    (tcp://host:8786). Workers must see the same store (a shared path or an fsspec URL) and Prefect API."""
    from prefect_dask import DaskTaskRunner

    if address == "local":
        return DaskTaskRunner(cluster_kwargs={"processes": True, "threads_per_worker": 1})
    return DaskTaskRunner(address=address)


def run_study(study: str, config: BaseModel, store: str, *, refresh: bool = False,
              dask_address: str | None = None) -> dict:
    """Run a study's flow in this process (local/ephemeral Prefect API unless PREFECT_API_URL is set)."""
    _, flow = STUDIES[study].load()
    if dask_address:
        flow = flow.with_options(task_runner=dask_task_runner(dask_address))
    state = flow(config=config, store=store, refresh=refresh, return_state=True)
    flow_run_id = state.state_details.flow_run_id
    result = state.result(raise_on_failure=True)
    return study_output(study, flow_run_id, store, result)


def default_config_path(study: str) -> Path:
    return PROJECT_ROOT / STUDIES[study].default_config


def dumps(obj: dict) -> str:
    return json.dumps(obj, indent=None, sort_keys=False, default=str)


# ------------------------------------------------------------------------------------ calling cached tasks
def _refs_in(obj) -> list[ArtifactRef]:
    if isinstance(obj, ArtifactRef):
        return [obj]
    if isinstance(obj, dict):
        return [r for v in obj.values() for r in _refs_in(v)]
    if isinstance(obj, (list, tuple)):
        return [r for v in obj for r in _refs_in(v)]
    return []


def _missing(result) -> list[ArtifactRef]:
    from storage.store import ref_is_complete

    return [r for r in _refs_in(result) if not ref_is_complete(r)]


def _heal(task, args, kwargs, result):
    """A cached result whose artifact was deleted (or never completed) is recomputed, not trusted."""
    missing = _missing(result)
    if not missing:
        return result
    from prefect import get_run_logger

    get_run_logger().warning("%s: cached result names missing artifact(s) %s; recomputing", task.name,
                             ", ".join(r.short for r in missing))
    return task.with_options(refresh_cache=True)(*args, **kwargs)


def call(task, *args, refresh: bool = False, **kwargs):
    """Run a task (cached unless `refresh`); if its cached result names an artifact that is no longer complete in
    the store, run it again with a fresh cache so downstream tasks never read a missing artifact."""
    result = (task.with_options(refresh_cache=True) if refresh else task)(*args, **kwargs)
    return result if refresh else _heal(task, args, kwargs, result)


class Pending:
    """`submit(...)`'s handle: `.result()` waits, then heals like `call`."""

    def __init__(self, task, args, kwargs, refresh: bool):
        self.task, self.args, self.kwargs, self.refresh = task, args, kwargs, refresh
        self.future = (task.with_options(refresh_cache=True) if refresh else task).submit(*args, **kwargs)

    def result(self):
        result = self.future.result()
        return result if self.refresh else _heal(self.task, self.args, self.kwargs, result)


def submit(task, *args, refresh: bool = False, **kwargs) -> Pending:
    """Submit a task to the flow's task runner (threads, or Dask with --dask-address)."""
    return Pending(task, args, kwargs, refresh)
