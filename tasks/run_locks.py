"""Task-level locks between concurrent runs: a Prefect `LockManager` on `flock` files (filelock).

With the cache policy's `isolation_level="SERIALIZABLE"`, Prefect holds a lock on a task's cache key from the start
of its transaction to its commit. When two runs reach the same task at once, the second waits for the first and then
finds its cached result (`Cached`) instead of computing it a second time.

Why not Prefect's own FileSystemLockManager: its lock files carry no expiry unless a hold timeout is given, so a run
killed with SIGKILL while holding one blocks every later run forever, and a reader can catch a lock file between its
creation and its first write (empty JSON, an exception). An `flock` is released by the kernel when its holder dies,
whatever kills it. Lock files live in `<PREFECT_HOME>/locks/<cache key>.lock`; they are empty and stay (removing a
lock file under contention would break mutual exclusion).
"""
from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Optional

import anyio
import filelock
from prefect.locking.protocol import LockManager

_SAFE_KEY = re.compile(r"[^A-Za-z0-9._-]")


class FlockLockManager(LockManager):
    """Prefect LockManager whose locks are flocks on `<directory>/<key>.lock` (default `<PREFECT_HOME>/locks`, read
    when first used). `hold_timeout` is not needed: a dead holder's lock is released by the kernel."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory is not None else None
        self._held: dict[str, tuple[str, filelock.FileLock]] = {}
        self._mutex = threading.Lock()

    def __getstate__(self) -> dict:  # sent to Dask workers with the task: no held locks, no mutex
        return {"directory": self.directory}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"])

    def __eq__(self, other) -> bool:
        return isinstance(other, FlockLockManager) and other.directory == self.directory

    def __hash__(self) -> int:
        return hash(("FlockLockManager", self.directory))

    def lock_path(self, key: str) -> Path:
        if self.directory is not None:
            base = self.directory
        else:
            from prefect.settings import get_current_settings

            base = Path(get_current_settings().home) / "locks"
        base.mkdir(parents=True, exist_ok=True)
        return base / f"{_SAFE_KEY.sub('_', key)}.lock"

    def acquire_lock(self, key: str, holder: str, acquire_timeout: Optional[float] = None,
                     hold_timeout: Optional[float] = None) -> bool:
        if self.is_lock_holder(key, holder):
            return True
        lock = filelock.FileLock(self.lock_path(key), thread_local=False)
        try:
            lock.acquire(timeout=-1 if acquire_timeout is None else acquire_timeout)
        except filelock.Timeout:
            return False
        with self._mutex:
            self._held[key] = (holder, lock)
        return True

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: Optional[float] = None,
                            hold_timeout: Optional[float] = None) -> bool:
        return await anyio.to_thread.run_sync(self.acquire_lock, key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        with self._mutex:
            entry = self._held.get(key)
            if entry is None or entry[0] != holder:
                raise ValueError(f"No lock held by {holder} for transaction with key {key}")
            del self._held[key]
        entry[1].release()

    def is_locked(self, key: str) -> bool:
        if key in self._held:
            return True
        probe = filelock.FileLock(self.lock_path(key), thread_local=False)
        try:
            probe.acquire(timeout=0)
        except filelock.Timeout:
            return True
        probe.release()
        return False

    def is_lock_holder(self, key: str, holder: str) -> bool:
        entry = self._held.get(key)
        return entry is not None and entry[0] == holder

    def wait_for_lock(self, key: str, timeout: Optional[float] = None) -> bool:
        probe = filelock.FileLock(self.lock_path(key), thread_local=False)
        try:
            probe.acquire(timeout=-1 if timeout is None else timeout)
        except filelock.Timeout:
            return False
        probe.release()
        return True

    async def await_for_lock(self, key: str, timeout: Optional[float] = None) -> bool:
        return await anyio.to_thread.run_sync(self.wait_for_lock, key, timeout)
