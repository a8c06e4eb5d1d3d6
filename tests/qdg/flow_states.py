"""Task states of a flow run, read back from the Prefect server once final (flows.running.final_task_states)."""
from __future__ import annotations

from flows.running import final_task_states


def task_states(flow_run_id) -> dict[str, str]:
    """Task run name -> final state name."""
    return dict(final_task_states(flow_run_id))
