"""How every quanta task caches, and how its result is stored.

A task's cache key covers everything that can change its result:
- its inputs: ArtifactRefs (content hashes and schema versions) and plain config values (Prefect's INPUTS);
- its own source (TASK_SOURCE) and the source of the module that defines it **and of every project module that
  module imports, transitively** (a static import graph: editing the sampler a training task calls recomputes
  training; editing only a report module leaves training `Cached`);
- the versions of the numeric libraries whose results it depends on (torch, numpy, scipy, pandas, ...).
Data from outside the store (corpus files, a local model directory) enters through an input that is a content
fingerprint (see `storage.fingerprint`), never through a name alone.

A cached result is trusted only if the artifacts it names are still complete in the store and their files are as
recorded (storage.verify.ref_problem): when one is missing or fails its check, the key moves to a deterministic
successor and the task recomputes (with a warning in the run log). Results are ArtifactRefs serialised as JSON by
`RefsJSONSerializer`; a cached record that names any other serializer (e.g. a tampered file saying "pickle") is
never loaded. `--refresh` is Prefect's own `PREFECT_TASKS_REFRESH_CACHE` setting.

Concurrent runs: the policy's isolation level is SERIALIZABLE with a flock-based lock manager (tasks.run_locks), so
two runs that reach the same task at once compute it once: the second waits, then finds it `Cached`.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal, Optional

from prefect import task
from prefect.cache_policies import TASK_SOURCE, CachePolicy, Inputs
from prefect.serializers import Serializer
from pydantic import Field

from schemas.jsonable import jsonable
from storage import ArtifactRef
from storage.verify import ref_problem
from tasks.run_locks import FlockLockManager

PROJECT_PACKAGES = ("schemas", "storage", "tasks", "flows")
# the libraries whose versions can change a computed number
NUMERIC_LIBRARIES = ("torch", "numpy", "scipy", "pandas", "transformers", "tokenizers", "scikit-learn", "pyamg",
                     "powerlaw")


# ------------------------------------------------------------------------------------------ code and versions
def _module_file(name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.origin and spec.origin.endswith(".py") else None


def _is_project(name: str) -> bool:
    return name.split(".")[0] in PROJECT_PACKAGES


@functools.lru_cache(maxsize=None)
def imported_project_modules(name: str) -> tuple[str, ...]:
    """Project modules that module `name` imports directly (anywhere in its body, lazy imports included), with the
    packages on their way (`from tasks.lm import suite` counts `tasks.lm` and `tasks.lm.suite`)."""
    path = _module_file(name)
    if path is None:
        return ()
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            if not _is_project(t):
                continue
            parts = t.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                mod = ".".join(parts[:i])
                if _module_file(mod) is not None:
                    found.add(mod)
    found.discard(name)
    return tuple(sorted(found))


@functools.lru_cache(maxsize=None)
def import_closure(name: str) -> tuple[str, ...]:
    """`name` and every project module it imports, transitively, sorted."""
    seen, todo = {name}, [name]
    while todo:
        for dep in imported_project_modules(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return tuple(sorted(seen))


@functools.lru_cache(maxsize=None)
def code_hash(name: str) -> str:
    """sha256 over the sources of `name`'s import closure (module names and file contents)."""
    h = hashlib.sha256()
    for mod in import_closure(name):
        path = _module_file(mod)
        h.update(mod.encode() + b"\0")
        if path is not None:
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    out = {}
    for lib in NUMERIC_LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            out[lib] = "absent"
    return out


@dataclass
class ProjectCode(CachePolicy):
    """Cache key part: the source of the task's module and its project imports, plus numeric library versions."""

    def compute_key(self, task_ctx, inputs: Optional[dict[str, Any]], flow_parameters, **kwargs) -> Optional[str]:
        if not task_ctx:
            return None
        libs = json.dumps(library_versions(), sort_keys=True)
        return hashlib.sha256((code_hash(task_ctx.task.fn.__module__) + libs).encode()).hexdigest()


# ------------------------------------------------------------------------------------------ results as JSON
def refs_in(obj: Any) -> list[ArtifactRef]:
    """Every ArtifactRef inside a task result (a ref, or dicts/lists of them)."""
    if isinstance(obj, ArtifactRef):
        return [obj]
    if isinstance(obj, dict):
        return [r for v in obj.values() for r in refs_in(v)]
    if isinstance(obj, (list, tuple)):
        return [r for v in obj for r in refs_in(v)]
    return []


_REF_TAG = "__artifact_ref__"
_ERROR_TAG = "__task_error__"


class RecordedTaskError(Exception):
    """A task's exception as read back from a persisted failed result: its type's name and message only (the class
    is not imported, so a result file cannot make loading it run code)."""

    def __init__(self, type_name: str, message: str):
        self.type_name, self.message = type_name, message
        super().__init__(f"{type_name}: {message}")


def _encode(obj: Any) -> Any:
    if isinstance(obj, ArtifactRef):
        return {_REF_TAG: obj.model_dump(mode="json")}
    if isinstance(obj, BaseException):  # a failed task's result: kept as text
        if isinstance(obj, RecordedTaskError):
            return {_ERROR_TAG: {"type": obj.type_name, "message": obj.message}}
        kind = type(obj)
        return {_ERROR_TAG: {"type": f"{kind.__module__}.{kind.__qualname__}", "message": str(obj)}}
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    return jsonable(obj)


def _decode(obj: dict) -> Any:
    if set(obj) == {_REF_TAG}:
        return ArtifactRef.model_validate(obj[_REF_TAG])
    if set(obj) == {_ERROR_TAG} and isinstance(obj[_ERROR_TAG], dict):
        return RecordedTaskError(str(obj[_ERROR_TAG].get("type")), str(obj[_ERROR_TAG].get("message")))
    return obj


class RefsJSONSerializer(Serializer):
    """Task results as JSON: ArtifactRefs (tagged) inside plain JSON data (a failed task's exception as its type name
    and message). Loading constructs ArtifactRefs and RecordedTaskErrors and nothing else (no class named in the file
    is imported), so a tampered result file cannot run code."""

    type: Literal["quanta-refs-json"] = Field(default="quanta-refs-json", frozen=True)

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(_encode(obj), sort_keys=True).encode()

    def loads(self, blob: bytes) -> Any:
        return json.loads(blob.decode(), object_hook=_decode)


# ------------------------------------------------------------------------------------------ the cache policy
def _raw_record(store, key: str) -> bytes:
    storage = store.result_storage
    try:
        return storage.read_path(key, _sync=True)  # Prefect's explicit-sync call on storage blocks
    except TypeError:
        return storage.read_path(key)


def untrusted_serializer(raw: bytes) -> str | None:
    """The serializer a persisted result record names, when it is not this project's JSON serializer (None: ours).
    Read with `json` alone: the record is not deserialized, so whatever it names is never imported or run."""
    try:
        doc = json.loads(raw)
        name = doc["metadata"]["serializer"]["type"]
    except Exception:  # noqa: BLE001
        return "(unreadable)"
    return None if name == RefsJSONSerializer().type else str(name)


def _stale_reason(store, key: str) -> str | None:
    """Why the cached record at `key` must not be trusted (None: absent or sound). The raw bytes are checked before
    anything deserializes them: Prefect's own `ResultStore.exists` loads the whole record with the serializer the file
    names, so it is never called on a record this check has not passed."""
    try:
        raw = _raw_record(store, key)
    except Exception:  # noqa: BLE001  (absent or unreadable: Prefect's `exists` says False for both)
        return None
    foreign = untrusted_serializer(raw)
    if foreign is not None:
        return (f"its cached result record names serializer {foreign!r}, not {RefsJSONSerializer().type!r}: "
                "not loading it (a foreign serializer could run code)")
    try:
        record = store.read(key)
    except Exception as e:  # noqa: BLE001  (an unreadable record is never trusted)
        return f"its cached result record is unreadable ({type(e).__name__})"
    for ref in refs_in(record.result):
        problem = ref_problem(ref)
        if problem is not None:
            return f"artifact {ref.short} {problem}"
    return None


@dataclass
class VerifiedCache(CachePolicy):
    """INPUTS + TASK_SOURCE + ProjectCode, whose cached records are trusted only while their artifacts are sound.

    A record whose artifact is missing or fails its check is passed over: the key moves to a deterministic successor
    (so an interrupted heal is found again by the next run) and the task recomputes. Content addressing then puts
    identical content back at the same address, which makes the original record sound again."""

    max_heals: int = 8
    exclude: tuple[str, ...] = ()  # parameters that cannot change the result (e.g. the device a shard runs on)

    def __post_init__(self):
        self.inner = Inputs(exclude=list(self.exclude)) + TASK_SOURCE + ProjectCode()

    def __sub__(self, other: str) -> "VerifiedCache":
        """The same policy without parameter `other` in the key (Prefect's own `-` on a compound policy adds a
        second Inputs part and keeps the first, so the parameter would still count)."""
        return replace(self, exclude=self.exclude + (other,))

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> Optional[str]:
        key = self.inner.compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        if key is None or task_ctx is None or _refreshing(task_ctx):
            return key
        from prefect.logging import get_run_logger
        from prefect.results import get_result_store

        store = get_result_store()
        stale = []  # an artifact damaged again after a heal makes each successor stale too: one warning for all
        for _ in range(self.max_heals):
            reason = _stale_reason(store, key)
            if reason is None:
                break
            stale.append(reason)
            key = hashlib.sha256(f"{key}:healed".encode()).hexdigest()
        if stale:
            again = f" (and {len(stale) - 1} earlier recomputation(s) of it)" if len(stale) > 1 else ""
            get_run_logger(task_ctx).warning("%s: not trusting its cached result: %s%s; recomputing",
                                             task_ctx.task.name, stale[0], again)
        return key


def _refreshing(task_ctx) -> bool:
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE

    flag = task_ctx.task.refresh_cache
    return bool(flag if flag is not None else PREFECT_TASKS_REFRESH_CACHE.value())


# every task transaction holds a lock on its cache key (a second run of the same task waits, then finds it Cached)
LOCKING = {"isolation_level": "SERIALIZABLE", "lock_manager": FlockLockManager()}
CACHE_POLICY = VerifiedCache(**LOCKING)


def quanta_task(fn=None, **kwargs):
    """`@quanta_task` = Prefect `@task` with the project's cache policy and results persisted as JSON refs."""
    options = dict(cache_policy=CACHE_POLICY, persist_result=True, result_serializer=RefsJSONSerializer(), retries=0)
    options.update(kwargs)
    if fn is None:
        return lambda f: task(f, **options)
    return task(fn, **options)
