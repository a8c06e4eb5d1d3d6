"""The temporary Prefect server of a `quanta run` without a Prefect API: one that dies with its parent.

Prefect's own ephemeral server (`SubprocessASGIServer`) is a child process that outlives a parent killed with
SIGKILL: an orphan that keeps the Prefect home's SQLite database open and its memory, forever. This one is the same
server (the same uvicorn app, settings and environment as Prefect's) started through this module's `__main__`, which
watches its parent: when the parent is gone (its parent pid changes), the server shuts itself down within a second
or so (SIGTERM to itself, then a hard exit after `GRACE_S` if it hangs).

`temporary_api()` starts it when PREFECT_API_URL is unset (else does nothing), points Prefect at it for the block, and
on the way out sends the run's last logs and events before stopping it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from storage.settings import PROJECT_ROOT

GRACE_S = 10.0
POLL_S = 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DyingServer:
    """A Prefect API server in a child process that exits when this process dies (any signal)."""

    def __init__(self):
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self, timeout: float | None = None) -> None:
        """Start the server and wait until it answers. Servers of one Prefect home start one at a time: each applies
        the database migrations at start-up, and two doing it at once on a fresh home race in alembic (one fails with
        "Online migration expected to match one row")."""
        from filelock import FileLock
        from prefect.settings import PREFECT_HOME, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

        limit = timeout or PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        home = Path(PREFECT_HOME.value())
        home.mkdir(parents=True, exist_ok=True)
        with FileLock(home / "server-start.lock", timeout=limit):
            self._start(limit)

    def _start(self, limit: float) -> None:
        import httpx
        from prefect.settings import get_current_settings

        env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
               "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
               "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        # its own session: a signal to this run's process group (Ctrl-C, `timeout`) reaches this process, which stops
        # the server after its own work (flows.interrupts), not the server first under a run still talking to it
        self.process = subprocess.Popen([sys.executable, "-m", "flows.local_server", str(os.getpid()),
                                         str(self.port)], env=env, start_new_session=True)
        t0 = time.monotonic()
        with httpx.Client() as client:
            while time.monotonic() - t0 < limit:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the temporary Prefect server exited with code {self.process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the temporary Prefect server did not answer within {limit:.0f} s")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def _drain_prefect_queues() -> None:
    """Send the logs and events still queued for the API (before the server goes away)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=30, at_exit=False)


@contextlib.contextmanager
def temporary_api() -> Iterator[str | None]:
    """Within the block Prefect talks to a server: PREFECT_API_URL's if set (yields it), else a DyingServer started
    here (yields its URL)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    from prefect.logging import get_logger

    server = DyingServer()
    get_logger("quanta").info("Starting temporary server on %s (it stops with this process)", server.api_url)
    server.start()
    try:
        # PREFECT_UI_URL "": no 'View at <url>' lines pointing at a server without a UI, gone after the run
        with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_UI_URL: ""}):
            try:
                yield server.api_url
            finally:
                _drain_prefect_queues()
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------ the child process
def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down cleanly on SIGTERM
    time.sleep(GRACE_S)
    os._exit(1)


def _serve(parent: int, port: int) -> None:
    if os.getppid() != parent:  # the parent died before we got here
        sys.exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()
    import uvicorn

    uvicorn.run("prefect.server.api.server:create_app", factory=True, host="127.0.0.1", port=port,
                log_level="error", lifespan="on")


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
