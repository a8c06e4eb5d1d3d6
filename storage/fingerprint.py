"""Content fingerprints of data from outside the store (corpus files, a local model directory), for cache keys.

A fingerprint covers each file's path (relative to its root), size and modification time, and the sha256 of every
file up to `hash_limit` bytes; so editing a file, adding or removing one changes it, while multi-GB checkpoints are
not read in full on every run (their size and mtime change when they are rewritten)."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

HASH_LIMIT = 8 << 20


def files_fingerprint(files: Iterable[str | os.PathLike], root: str | os.PathLike | None = None,
                      hash_limit: int = HASH_LIMIT) -> str:
    """sha256 over (relative path, size, mtime_ns, content hash if small) of `files`, in the order given."""
    h = hashlib.sha256()
    base = Path(root) if root is not None else None
    for f in files:
        p = Path(f)
        st = p.stat()
        name = str(p.relative_to(base)) if base is not None and p.is_relative_to(base) else str(p)
        h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}|".encode())
        if st.st_size <= hash_limit:
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def dir_fingerprint(path: str | os.PathLike, hash_limit: int = HASH_LIMIT) -> str:
    """The fingerprint of every file below a directory (sorted by relative path)."""
    root = Path(path)
    files = sorted((q for q in root.rglob("*") if q.is_file()), key=lambda q: str(q.relative_to(root)))
    return files_fingerprint(files, root, hash_limit)
