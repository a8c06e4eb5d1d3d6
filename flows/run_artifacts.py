"""Which artifacts each flow run used, from the Prefect API: the refs in its task runs' results (JSON, see
tasks.caching.RefsJSONSerializer), so a run whose tasks all came back `Cached` still names every artifact it used
(lineage records only name the run that wrote an artifact). Used by `quanta lineage <flow run id>` and
`quanta store gc`; both fall back to the store's lineage records alone when no Prefect API answers.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import warnings
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


class UnreadableRunWarning(UserWarning):
    """A flow run the Prefect API cannot return (its stored parameters cannot be serialised: an integer past 64
    bits, from before configs bounded them): it is skipped, named by its id."""


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
        runs = _readable_flow_runs(client, flow_run_filter, flow_filter)
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


def _readable_flow_runs(client, flow_run_filter, flow_filter) -> list:
    """Every flow run the filters match that the API can return. A page the server fails to send (HTTP 5xx: one
    run's stored parameters cannot be serialised) is read again one run at a time; each run it still cannot send is
    skipped with an UnreadableRunWarning naming it, and the others are returned."""
    from prefect.exceptions import PrefectHTTPStatusError

    def read(limit: int, offset: int) -> list | None:  # None: the server failed on this page
        try:
            return client.read_flow_runs(limit=limit, offset=offset, flow_run_filter=flow_run_filter,
                                         flow_filter=flow_filter)
        except PrefectHTTPStatusError as e:
            if e.response.status_code < 500:
                raise
            return None

    out, offset, unreadable = [], 0, 0
    while True:
        page = read(_PAGE, offset)
        seen = len(page) if page is not None else 0
        if page is None:
            page = []
            for i in range(_PAGE):
                one = read(1, offset + i)
                if one == []:
                    break
                seen += 1
                if one is None:
                    unreadable += 1
                else:
                    page += one
        out += page
        if seen < _PAGE:
            break
        offset += _PAGE
    if unreadable:
        for run_id in _unreadable_run_ids(client, {str(r.id) for r in out}, flow_run_filter, flow_filter):
            warnings.warn(f"flow run {run_id}: the Prefect API cannot read it (its stored parameters cannot be "
                          "serialised); skipped", UnreadableRunWarning, stacklevel=3)
    return out


def _unreadable_run_ids(client, readable: set[str], flow_run_filter, flow_filter) -> list[str]:
    """The ids of the matching runs not in `readable`, from the API's run history (ids and times only, which it can
    always serialise)."""
    body = {"limit": 1000, "offset": 0}
    if flow_run_filter is not None:
        body["flow_runs"] = flow_run_filter.model_dump(mode="json")
    if flow_filter is not None:
        body["flows"] = flow_filter.model_dump(mode="json")
    ids: list[str] = []
    while True:
        page = client._client.post("/ui/flow_runs/history", json=body).json()
        ids += [r["id"] for r in page]
        if len(page) < 1000:
            return [i for i in ids if i not in readable]
        body["offset"] += 1000


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
