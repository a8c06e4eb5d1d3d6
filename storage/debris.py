"""What a killed writer leaves in a store, and its removal on the next start.

A process killed mid-write (kill -9, OOM, power loss) can leave `_tmp/<name>` (an artifact being built) and
`_lineage/<hash>.json.<name>.tmp` (a record being written; often 0 bytes). Neither is ever trusted (an artifact is
complete only once its lineage record is in place), but they take space, and old versions of the store matched
hash prefixes against the `.tmp` names. `clean_debris` removes an entry only when its writer cannot be at work:
- its name carries a writer tag of this host (storage.locks) and that process is gone (or its pid now belongs to a
  later process): removed at once;
- otherwise (another host's writer, or an untagged name from an older version) only when nothing in it changed for
  `grace_s` seconds (default a day), since a live writer on another machine cannot be asked.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from storage.locks import writer_alive

DEBRIS_GRACE_S = 24 * 3600.0


def _newest_mtime(path: Path) -> float:
    try:
        newest = path.lstat().st_mtime
    except FileNotFoundError:
        return time.time()
    if path.is_dir():
        for dirpath, _, files in os.walk(path):
            for f in files:
                try:
                    newest = max(newest, os.lstat(os.path.join(dirpath, f)).st_mtime)
                except FileNotFoundError:
                    continue
    return newest


def is_debris(path: Path, grace_s: float = DEBRIS_GRACE_S, now: float | None = None) -> bool:
    """Whether a temporary entry belongs to a writer that is gone (see the module docstring)."""
    now = time.time() if now is None else now
    newest = _newest_mtime(path)
    alive = writer_alive(path.name, since=newest)
    if alive is not None:
        return not alive
    return now - newest > grace_s


def debris_candidates(root: str | os.PathLike) -> list[Path]:
    """Temporary entries of a local store: everything in `_tmp/`, and the `.tmp` files in `_lineage/`."""
    base = Path(root)
    out = sorted((base / "_tmp").iterdir()) if (base / "_tmp").is_dir() else []
    if (base / "_lineage").is_dir():
        out += sorted(p for p in (base / "_lineage").iterdir() if p.name.endswith(".tmp"))
    return out


def clean_debris(root: str | os.PathLike, grace_s: float = DEBRIS_GRACE_S) -> list[str]:
    """Remove the debris of dead writers from a local store; returns the removed paths (relative to the root)."""
    removed = []
    now = time.time()
    for path in debris_candidates(root):
        if not is_debris(path, grace_s, now):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # its writer (or another cleaner) just removed it
            continue
        removed.append(str(path.relative_to(root)))
    return removed
