"""Which artifacts each flow run used, from the Prefect API: the refs in its task runs' results (JSON, see
tasks.caching.RefsJSONSerializer), so a run whose tasks all came back `Cached` still names every artifact it used
(lineage records only name the run that wrote an artifact). Used by `quanta lineage <flow run id>` and
`quanta store gc`; both fall back to the store's lineage records alone when no Prefect API answers.
"""
from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from storage.upkeep import refs_in_result_file

_PAGE = 200


@dataclass
class RunUsage:
    """One flow run as the Prefect API knows it: name, flow, start time and the refs its tasks returned, as
    (content hash, uri) pairs."""

    flow_run_id: str
    name: str = ""
    flow_name: str = ""
    started: dt.datetime | None = None
    state: str = ""
    refs: set[tuple[str, str]] = field(default_factory=set)


def result_path(task_run) -> Path | None:
    """Where Prefect persisted a task run's result (its cache record), from its state's result metadata."""
    data = task_run.state.data if task_run.state else None
    meta = getattr(data, "metadata", data)
    key = getattr(meta, "storage_key", None) or (meta.get("storage_key") if isinstance(meta, dict) else None)
    if not key:
        return None
    p = Path(key)
    if p.is_absolute():
        return p
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    return Path(os.path.expanduser(str(PREFECT_LOCAL_STORAGE_PATH.value()))) / p


def _paged(read, **kw) -> list:
    out, offset = [], 0
    while True:
        page = read(limit=_PAGE, offset=offset, **kw)
        out += page
        if len(page) < _PAGE:
            return out
        offset += _PAGE


def run_usage(flow_run_ids: list[str] | None = None, flow_names: list[str] | None = None) -> dict[str, RunUsage]:
    """{flow run id: RunUsage} for the given runs (or every run of the given flows, or every run), with the refs in
    its task runs' persisted results. Raises whatever the client raises when no API answers."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId

    flow_run_filter = FlowRunFilter(id=FlowRunFilterId(any_=list(flow_run_ids))) if flow_run_ids else None
    flow_filter = FlowFilter(name=FlowFilterName(any_=list(flow_names))) if flow_names else None
    out: dict[str, RunUsage] = {}
    with get_client(sync_client=True) as client:
        runs = _paged(client.read_flow_runs, flow_run_filter=flow_run_filter, flow_filter=flow_filter)
        flows: dict = {}
        for fr in runs:
            if fr.flow_id not in flows:
                flows[fr.flow_id] = client.read_flow(fr.flow_id).name
            out[str(fr.id)] = RunUsage(str(fr.id), fr.name, flows[fr.flow_id],
                                       fr.start_time or fr.expected_start_time or fr.created,
                                       fr.state.name if fr.state else "")
        ids = list(out)
        for i in range(0, len(ids), 50):
            batch = FlowRunFilter(id=FlowRunFilterId(any_=ids[i:i + 50]))
            for tr in _paged(client.read_task_runs, flow_run_filter=batch):
                path = result_path(tr)
                if path is not None and str(tr.flow_run_id) in out:
                    out[str(tr.flow_run_id)].refs |= refs_in_result_file(path)
    return out


_STORE_COPY = re.compile(r"Store copy: `([^`]+)`")


def latest_report_uri(key: str) -> str | None:
    """The store uri of the newest Prefect report artifact with this key (e.g. `sparse-parity-report`), read from
    the line `publish` writes into it; None when there is no such artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                     sort=ArtifactSort.CREATED_DESC, limit=1)
    if not arts:
        return None
    match = _STORE_COPY.search(str(arts[0].data or ""))
    return match.group(1) if match else None
