"""Helpers shared by tests that damage artifacts and look at which tasks reran."""
from __future__ import annotations

import os
from pathlib import Path


def task_states(flow_run_id: str) -> dict[str, str]:
    """Task run name -> final state name of one flow run (and its subflows), from the Prefect API."""
    from flows.running import final_task_states

    return dict(final_task_states(flow_run_id))


def task_runs(flow_run_id: str) -> dict:
    """Task run name -> final Prefect `State` (type, name, message) of one flow run (and its subflows)."""
    from flows.running import final_task_runs

    return {tr.name: tr.state for tr in final_task_runs(flow_run_id)}


def states_of(states: dict[str, str], prefix: str) -> list[str]:
    return sorted(v for k, v in states.items() if k.startswith(prefix))


def flip_bytes(path: str | Path, keep_mtime: bool = True) -> None:
    """Damage a file without changing its size (and by default its mtime): only a re-hash can tell. A Parquet file
    is damaged in its first column's data page."""
    st = os.stat(path)
    at = st.st_size // 2
    if str(path).endswith(".parquet"):
        import pyarrow.parquet as pq

        col = pq.ParquetFile(path).metadata.row_group(0).column(0)
        at = col.data_page_offset + col.total_compressed_size - 6
    with open(path, "r+b") as f:
        f.seek(at)
        chunk = f.read(4)
        f.seek(at)
        f.write(bytes(b ^ 0xFF for b in chunk))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def chunk_files(zarr_dir: str | Path) -> list[Path]:
    return sorted(p for p in Path(zarr_dir).rglob("*") if p.is_file() and p.name != "zarr.json")
