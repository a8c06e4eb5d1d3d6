"""Real Prefect servers for tests: `prefect server start` on a free loopback port with its own home and SQLite
database (the session's test server runs no scheduler and no UI), and clean subprocess environments."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.cluster_fixture import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def clean_env(home: Path, **extra) -> dict:
    """A clean Prefect environment: this home, no inherited test-session settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "QUANTA_"))}
    path = os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)
    env.update(PREFECT_HOME=str(home), QUANTA_PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONPATH=path, OMP_NUM_THREADS="1", PREFECT_LOGGING_LEVEL="INFO")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def spawn(cmd: list[str], env: dict, log: Path, cwd: Path = ROOT) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, sig=signal.SIGINT) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextlib.contextmanager
def prefect_server(tmp: Path, timeout: float = 240, ui: bool = False) -> Iterator[str]:
    """`prefect server start` on a free loopback port with its own home and SQLite database; yields the API URL.
    The scheduler checks new deployments every 2 s (default 5) so that the test does not wait on it; `ui` serves
    the UI as well (`make ui`: http://127.0.0.1:PORT)."""
    import httpx

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    home = tmp / "server-home"
    # the UI asks this server's API (its default is the settings' host and port: 127.0.0.1:4200)
    env = clean_env(home, PREFECT_UI_ENABLED="true" if ui else "false", PREFECT_UI_API_URL=api,
                    PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=port,
                     PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS=2,
                     PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS=5)
    log = tmp / "server.log"
    proc = spawn([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"prefect server exited:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"prefect server not healthy:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield api
    finally:
        stop(proc, signal.SIGTERM)
