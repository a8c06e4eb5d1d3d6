"""The project's Prefect settings, applied by one explicit call.

`configure_prefect()` must run before `prefect` is first imported (Prefect reads its settings then): the CLI, the
deployments and the test fixtures call it. It only sets environment defaults, so a user's own PREFECT_* variables win.
"""
from __future__ import annotations

import os
from pathlib import Path

from storage.settings import PROJECT_ROOT


def default_prefect_home() -> Path:
    return Path(os.environ.get("QUANTA_PREFECT_HOME") or PROJECT_ROOT / ".prefect")


def configure_prefect() -> None:
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
