"""Helpers of the reliability suite: run the `quanta` command line in this process (fast; Prefect's session test
server) or as a subprocess (for kill -9 and concurrency), and read what it printed."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SP_TINY = ROOT / "configs/sparse_parity/tiny.toml"
LM_TINY = ROOT / "configs/lm/tiny.toml"
# the tiny grid, smaller still: these tests are about faults, not numbers
SP_FAST = ["--set", "grid.steps=40", "--set", "grid.log_points=6", "--set", "fit.bootstrap=0",
           "--set", "report.plots=false"]


@dataclass
class CliResult:
    rc: int
    out: str
    err: str

    @property
    def json(self) -> dict:
        return json.loads(self.out.strip().splitlines()[-1])

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture
def quanta(capfd):
    """quanta(*argv) -> CliResult: `quanta argv...` run in this process, its exit code and captured output."""
    from flows.cli import main

    def run(*argv: str) -> CliResult:
        capfd.readouterr()
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse errors
            rc = int(e.code or 0)
        out, err = capfd.readouterr()
        return CliResult(rc, out, err)

    return run


def subprocess_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    """Environment of a `python -m flows.cli` child: this checkout on the path, its own Prefect home, no API URL
    (so it starts its own temporary server), one thread per process (2 cores shared)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "QUANTA_"))}
    env.update(PYTHONPATH=str(ROOT), QUANTA_PREFECT_HOME=str(prefect_home), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


def cli_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *[str(a) for a in argv]]


def task_states(flow_run_id: str) -> dict[str, str]:
    """Task run name -> state name of one flow run, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                     limit=200)
    return {r.name: r.state.name for r in runs if r.state is not None}


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
