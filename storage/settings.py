"""Where things live: the project root and the default store root."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_store_root() -> str:
    """`QUANTA_STORE`, else ./quanta-store (relative to the working directory)."""
    return os.environ.get("QUANTA_STORE") or str(Path.cwd() / "quanta-store")
