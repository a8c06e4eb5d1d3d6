"""Coordination between processes that share a store: file locks, and tags that say who wrote a temporary file.

Locks are `filelock.FileLock`s: an `flock` on a lock file, released by the kernel when the holder exits, so a process
killed with SIGKILL never leaves a lock behind (a lock *file* stays; it is not a lock). Two lock objects exclude each
other even in one thread, so code must not take the same lock twice.

Temporary names carry their writer's tag (`~host~pid`), so a later start can tell a dead writer's debris from a live
writer's work in progress (storage.debris).
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterator

import filelock

LOCKS_DIR = "_locks"
_OWNER = re.compile(r"~([A-Za-z0-9._-]+)~(\d+)(?:\.[A-Za-z0-9]+)*$")


def owner_tag() -> str:
    """`~host~pid` of this process, for temporary file names."""
    return f"~{socket.gethostname()}~{os.getpid()}"


def owner_of(name: str) -> tuple[str, int] | None:
    """(host, pid) from a name made with `owner_tag()` (before any extensions), else None."""
    m = _OWNER.search(name)
    return (m.group(1), int(m.group(2))) if m else None


def pid_alive(pid: int, since: float | None = None) -> bool:
    """Whether process `pid` (on this host) is alive; with `since` (a POSIX time), whether the process that has that
    pid now already existed then (a pid reused by a later process does not count as the writer)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    if since is None:
        return True
    try:
        import psutil

        return psutil.Process(pid).create_time() <= since + 1.0
    except Exception:  # noqa: BLE001  (psutil missing or the process just ended: judge by the pid alone)
        return True


def writer_alive(name: str, since: float | None = None) -> bool | None:
    """For a tagged temporary name: True/False when its writer ran on this host, None when that cannot be known
    (another host, or an untagged name)."""
    owner = owner_of(name)
    if owner is None or owner[0] != socket.gethostname():
        return None
    return pid_alive(owner[1], since)


@contextlib.contextmanager
def file_lock(path: str, timeout: float = -1) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created with its parent directory) for the block; `timeout` < 0 waits."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lock = filelock.FileLock(path, timeout=timeout, thread_local=False)
    with lock:
        yield


def artifact_lock_path(root: str, content_hash: str) -> str:
    """The lock guarding publication, lineage updates and repair of the artifacts whose hash starts like this one
    (256 buckets: few lock files, and publication holds a lock only for moments)."""
    return os.path.join(root, LOCKS_DIR, f"{content_hash[:2]}.lock")
