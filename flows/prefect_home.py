"""The project's Prefect settings, applied by one explicit call.

`configure_prefect()` must run before `prefect` is first imported (Prefect reads its settings then): the CLI, the
deployments and the test fixtures call it. It only sets environment defaults, so a user's own PREFECT_* variables win.
It also calls `configure_numerics()`: the CPU arithmetic that makes float results the same on every machine.
"""
from __future__ import annotations

import os
from pathlib import Path

from storage.settings import PROJECT_ROOT


def default_prefect_home() -> Path:
    return Path(os.environ.get("QUANTA_PREFECT_HOME") or PROJECT_ROOT / ".prefect")


# MKL's conditional numerical reproducibility (CNR) branch for torch's CPU BLAS (torch's wheel links MKL). Unset,
# MKL dispatches on the CPU and lets alignment and threading change reductions: the same tiny grid trained to other
# losses (1.4e-3 apart) on an AMD EPYC (AVX-512) than on the Intel machine that recorded the golden losses. AVX2 is
# the newest branch every x86 machine this project runs on supports (Intel and AMD, AVX2 or AVX-512), so one value
# gives one code path everywhere; `make bench` measured it no slower on the training grid (BENCHMARKS.md).
# docs/design.md, "Same inputs, same bits", says what this does and does not make reproducible.
MKL_CNR_BRANCH = "AVX2"


def configure_numerics() -> None:
    """Pin MKL's code path (MKL_CBWR) unless the user set one. MKL reads it at its first call, so this must run
    before any torch computation in the process; child processes (Dask workers, `quanta run` subprocesses) inherit
    it."""
    os.environ.setdefault("MKL_CBWR", MKL_CNR_BRANCH)


def configure_prefect() -> None:
    configure_numerics()
    home = default_prefect_home()
    defaults = {
        "PREFECT_HOME": str(home),
        # offline machines: telemetry would only log errors
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # the ephemeral server can take 7-20 s to start on a small machine; its default timeout is 20 s
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        # results (ArtifactRefs only: small) persisted so that caches work across runs
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.3",
        "PREFECT_UI_ENABLED": "true",
        # training shards each use every core through torch's threads: running them one at a time in-process was
        # 15% faster than Prefect's default thread pool on 2 cores. Parallelism across machines: --dask-address.
        "PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS": "1",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    # local result storage under the project's Prefect home (PREFECT_HOME/storage is Prefect's default too)
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(Path(os.environ["PREFECT_HOME"]) / "storage"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
