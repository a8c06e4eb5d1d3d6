"""Lineage records: who produced an artifact, from what, with which parameters, when, with which code."""
from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import platform
import subprocess
import uuid
from pathlib import Path
from typing import Any

from schemas.jsonable import jsonable
from storage.lineage_graph import downstream, resolve, upstream  # noqa: F401  (moved there; importable here too)
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
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with fs.open(tmp, "w") as f:
        f.write(text)
    if is_local_fs(fs):
        os.replace(tmp, path)
    else:
        fs.mv(tmp, path)


def write_record(fs, path: str, record: dict) -> None:
    record = dict(record)
    record.setdefault("also_produced_by", [])
    _atomic_write(fs, path, json.dumps(record, indent=2, sort_keys=True))


def add_producer(fs, path: str, record: dict) -> None:
    """The same content was produced again (e.g. a rerun without cache): remember that producer too."""
    with fs.open(path, "r") as f:
        existing = json.load(f)
    seen = existing.setdefault("also_produced_by", [])
    entry = {k: record.get(k) for k in ("producer", "flow_run_id", "created_at", "code_version")}
    if entry["flow_run_id"] not in {e.get("flow_run_id") for e in seen} | {existing.get("flow_run_id")}:
        seen.append(entry)
        _atomic_write(fs, path, json.dumps(existing, indent=2, sort_keys=True))


def read_record(fs, lineage_dir: str, content_hash: str) -> dict:
    """Find the record of an artifact by full content hash or a unique prefix of it."""
    path = f"{lineage_dir}/{content_hash}.json"
    if not fs.exists(path):
        matches = [p for p in fs.ls(lineage_dir, detail=False) if Path(p).name.startswith(content_hash)]
        if not matches:
            raise KeyError(f"no artifact with content hash {content_hash!r} in the store")
        if len(matches) > 1:
            raise KeyError(f"content hash prefix {content_hash!r} is ambiguous ({len(matches)} artifacts)")
        path = matches[0]
    with fs.open(path, "r") as f:
        return json.load(f)


def all_records(fs, lineage_dir: str) -> list[dict]:
    out = []
    for p in fs.ls(lineage_dir, detail=False):
        if p.endswith(".json") and not p.endswith(".tmp"):
            with fs.open(p, "r") as f:
                out.append(json.load(f))
    return out
