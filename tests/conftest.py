"""Test setup: a private Prefect home, and one real Prefect test server for the whole session."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# before anything imports prefect: a private Prefect home (results, cache keys) for this test session
_HOME = tempfile.mkdtemp(prefix="quanta-test-prefect-")
os.environ["QUANTA_PREFECT_HOME"] = _HOME
os.environ["PREFECT_HOME"] = _HOME
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(Path(_HOME) / "storage")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("QUANTA_STORE", None)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from flows.prefect_home import configure_prefect  # noqa: E402

configure_prefect()  # the project's Prefect settings, before anything imports prefect


@pytest.fixture(scope="session")
def prefect_server():
    """A real local Prefect server (SQLite in a temp dir) shared by every flow test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def store_root(tmp_path) -> str:
    return str(tmp_path / "store")


@pytest.fixture
def store(store_root):
    from storage import Store

    return Store(store_root)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT
