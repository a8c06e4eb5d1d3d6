"""Lineage records: who produced an artifact, from what, with which parameters, when, with which code."""
from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import os
import platform
import re
import subprocess
import uuid
import warnings
from pathlib import Path
from typing import Any

from schemas.jsonable import jsonable
from storage.locks import owner_tag
from storage.settings import PROJECT_ROOT


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit (and '-dirty' when the tree has changes), when available."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("quanta")
    except PackageNotFoundError:
        v = "0+unknown"
    try:
        sha = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
        if sha:
            dirty = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            v += f"+g{sha}" + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return v


def _prefect_context() -> dict[str, Any]:
    """Producer task and flow run, read from Prefect's runtime context when called inside a task."""
    out: dict[str, Any] = {"producer": None, "flow_run_id": None, "flow_name": None, "task_run_id": None}
    try:
        from prefect.context import FlowRunContext, TaskRunContext

        trc = TaskRunContext.get()
        if trc is not None:
            out["producer"] = trc.task.name
            out["task_run_id"] = str(trc.task_run.id)
            out["flow_run_id"] = str(trc.task_run.flow_run_id) if trc.task_run.flow_run_id else None
        frc = FlowRunContext.get()
        if frc is not None and frc.flow_run is not None:
            out["flow_run_id"] = out["flow_run_id"] or str(frc.flow_run.id)
            out["flow_name"] = frc.flow.name if frc.flow else None
    except Exception:  # outside Prefect, or an older API: lineage still records everything else
        pass
    return out


def new_record(kind: str, inputs, params: dict | None) -> dict[str, Any]:
    rec = {
        "kind": kind,
        **_prefect_context(),
        "params": jsonable(params or {}),
        "inputs": [{"kind": r.kind, "content_hash": r.content_hash, "uri": r.uri} for r in inputs],
        "code_version": code_version(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "host": platform.node(),
    }
    if rec["producer"] is None:
        rec["producer"] = os.environ.get("QUANTA_PRODUCER", "direct-call")
    return rec


def is_local_fs(fs) -> bool:
    """Whether an fsspec filesystem is the local disk (where os.replace gives an atomic rename)."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def _atomic_write(fs, path: str, text: str) -> None:
    # the temporary name carries the writer's tag, so a later start can tell a dead writer's debris (storage.debris)
    tmp = f"{path}.{uuid.uuid4().hex}{owner_tag()}.tmp"
    try:
        with fs.open(tmp, "w") as f:
            f.write(text)
        if is_local_fs(fs):
            os.replace(tmp, path)
        else:
            fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


class LineageRecordWarning(UserWarning):
    """A lineage record that cannot be read was skipped."""


class UnreadableRecordError(ValueError):
    """A lineage record exists but is not valid JSON (a truncated write, a damaged disk)."""


def load_record(fs, path: str) -> dict:
    """One lineage record file; UnreadableRecordError (naming the file) when it is not a JSON object."""
    try:
        with fs.open(path, "r") as f:
            record = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise UnreadableRecordError(f"lineage record {path} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(record, dict) or "content_hash" not in record:
        raise UnreadableRecordError(f"lineage record {path} is not a lineage record (no content_hash)")
    return record


def write_record(fs, path: str, record: dict) -> None:
    """Write an artifact's record (atomically). Callers hold the artifact's lock (storage.locks)."""
    record = dict(record)
    record.setdefault("also_produced_by", [])
    _atomic_write(fs, path, json.dumps(record, indent=2, sort_keys=True))


def add_producer(fs, path: str, record: dict) -> None:
    """The same content was produced again (e.g. a rerun without cache): remember that producer too. A
    read-modify-write: callers hold the artifact's lock (storage.locks)."""
    existing = load_record(fs, path)
    seen = existing.setdefault("also_produced_by", [])
    entry = {k: record.get(k) for k in ("producer", "flow_run_id", "created_at", "code_version")}
    if entry["flow_run_id"] not in {e.get("flow_run_id") for e in seen} | {existing.get("flow_run_id")}:
        seen.append(entry)
        _atomic_write(fs, path, json.dumps(existing, indent=2, sort_keys=True))


def is_relative_uri(uri: str) -> bool:
    """Whether a uri in a lineage record is relative to its store's root (`<kind>/<hash prefix>.<ext>`)."""
    return "://" not in uri and not uri.startswith("/")


def _map_uris(record: dict, change) -> dict:
    """The record with `change` applied to its `uri` and to each of its inputs' uris."""
    out = dict(record)
    if "uri" in out:
        out["uri"] = change(out["uri"])
    if isinstance(out.get("inputs"), list):
        out["inputs"] = [dict(i, uri=change(i.get("uri"))) if isinstance(i, dict) else i for i in out["inputs"]]
    return out


def relative_to_root(record: dict, root_url: str) -> dict:
    """The record as written into its store: its `uri` and its inputs' uris under `root_url` made relative to it, so
    that a copied or moved store (`cp -a A B`) names its own artifacts, not A's."""
    prefix = root_url.rstrip("/") + "/"
    return _map_uris(record, lambda u: u[len(prefix):] if isinstance(u, str) and u.startswith(prefix) else u)


def resolved_at_root(record: dict, root_url: str) -> dict:
    """The record as read from the store at `root_url`: relative uris joined to it (records written before uris were
    relative keep their absolute ones)."""
    root = root_url.rstrip("/")
    return _map_uris(record, lambda u: f"{root}/{u}" if isinstance(u, str) and u and is_relative_uri(u) else u)


_HEX = re.compile(r"^[0-9a-f]{1,64}$")


def record_names(fs, lineage_dir: str) -> list[str]:
    """Paths of the record files (`<hash>.json`; temporary files excluded)."""
    return [p for p in fs.ls(lineage_dir, detail=False) if p.endswith(".json")]


def read_record(fs, lineage_dir: str, content_hash: str) -> dict:
    """Find the record of an artifact by full content hash or a unique prefix of it (hex digits only: a name like
    '../x' is refused, so nothing outside the store is read)."""
    key = str(content_hash).strip().lower()
    if not _HEX.match(key):
        raise KeyError(f"{content_hash!r} is not a content hash (or a prefix of one): hex digits only")
    path = f"{lineage_dir}/{key}.json"
    if not fs.exists(path):
        matches = [p for p in record_names(fs, lineage_dir) if Path(p).name.startswith(key)]
        if not matches:
            raise KeyError(f"no artifact with content hash {content_hash!r} in the store")
        if len(matches) > 1:
            raise KeyError(f"content hash prefix {content_hash!r} is ambiguous ({len(matches)} artifacts)")
        path = matches[0]
    return load_record(fs, path)


def all_records(fs, lineage_dir: str, skipped: list[str] | None = None) -> list[dict]:
    """Every readable record. An unreadable one is skipped with a LineageRecordWarning naming its file (and its
    message appended to `skipped`), so one damaged record does not hide the rest of the store."""
    out = []
    for p in sorted(record_names(fs, lineage_dir)):
        try:
            out.append(load_record(fs, p))
        except (UnreadableRecordError, FileNotFoundError) as e:
            msg = f"skipped: {e}" if isinstance(e, UnreadableRecordError) else f"skipped: {p} vanished while read"
            if skipped is not None:
                skipped.append(msg)
            warnings.warn(msg, LineageRecordWarning, stacklevel=2)
    return out
