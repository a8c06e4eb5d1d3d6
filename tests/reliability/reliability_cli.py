"""Helpers of the reliability suite: paths, and the `quanta` command line as a subprocess (for kill -9 and
concurrency); conftest.py runs it in this process."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

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


def subprocess_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    """Environment of a `python -m flows.cli` child: this checkout on the path, its own Prefect home, no API URL
    (so it starts its own temporary server), one thread per process (2 cores shared)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "QUANTA_"))}
    env.update(PYTHONPATH=str(ROOT), QUANTA_PREFECT_HOME=str(prefect_home), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


def cli_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *[str(a) for a in argv]]

