"""Task states of a flow run, read back from the Prefect server."""
from __future__ import annotations

import time


def task_states(flow_run_id) -> dict[str, str]:
    """Task run name -> final state name. Task states reach the API as events, recorded asynchronously: wait (up
    to a minute) until none is still shown as pending or running."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                         limit=200)
            states = {r.name: r.state.name if r.state is not None else "Pending" for r in runs}
            if not {"Pending", "Running", "Scheduled"} & set(states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(0.2)
