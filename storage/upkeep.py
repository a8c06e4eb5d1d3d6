"""Store upkeep: what is in a store (`inventory`), and garbage collection (`plan_gc`, `apply_gc`).

A *run* is a flow run that wrote or used artifacts of the store. What a run needs is everything in the lineage
closure of the artifacts it wrote or used (their inputs, transitively). Garbage collection keeps the runs a retention
rule selects and removes every artifact that no kept run needs, with its lineage record and the Prefect result files
(cache records) that name it; it never removes an artifact a kept run needs.

Which artifacts a run *used* comes from outside the store (the Prefect API: `flows.run_artifacts.run_usage`), since a
run whose tasks were all `Cached` wrote nothing; the store's own records give what each run *wrote*.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pandas as pd
from pydantic import ByteSize

from storage.lineage_graph import upstream_closure

_REF_TAG = "__artifact_ref__"


# ------------------------------------------------------------------------------------------ Prefect result files
def _refs(obj) -> set[tuple[str, str]]:
    if isinstance(obj, dict):
        if set(obj) == {_REF_TAG}:
            return {(obj[_REF_TAG]["content_hash"], obj[_REF_TAG]["uri"])}
        return set().union(*(_refs(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_refs(v) for v in obj)) if obj else set()
    return set()


def _read_result(path) -> tuple[bytes, set[tuple[str, str]] | None]:
    """(raw bytes, refs) of a Prefect result file; refs is None when it is not a quanta task result (JSON refs)."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return b"", set()
    try:
        record = json.loads(raw)
        if isinstance(record, dict) and isinstance(record.get("result"), str):
            if (record.get("metadata") or {}).get("serializer", {}).get("type") == "quanta-refs-json":
                return raw, _refs(json.loads(record["result"]))
    except (ValueError, AttributeError, TypeError, KeyError):
        pass
    return raw, None


def refs_in_result_file(path: str | os.PathLike) -> set[tuple[str, str]]:
    """(content hash, uri) of every ArtifactRef in a quanta task's Prefect result file (JSON refs, see
    tasks.caching.RefsJSONSerializer); nothing for any other or unreadable file."""
    return _read_result(path)[1] or set()


def result_file_names(path: str | os.PathLike, uris: set[str]) -> bool:
    """Whether a Prefect result file names an artifact at one of `uris`: a quanta task result by its refs; any other
    file (e.g. a flow's pickled result) by searching its bytes and its base64-decoded bytes for the uri (nothing is
    unpickled)."""
    raw, refs = _read_result(path)
    if refs is not None:
        return any(u in uris for _, u in refs)
    try:
        blobs = [raw, base64.b64decode(raw, validate=False)]
    except (binascii.Error, ValueError):
        blobs = [raw]
    return any(u.encode() in b for u in uris for b in blobs)


# ------------------------------------------------------------------------------------------ inventory
def _fs_path(uri: str) -> str:
    """The filesystem path of a uri (a local path as is; `memory://x/y` -> `/x/y`)."""
    return fsspec.core.url_to_fs(uri)[1] if "://" in uri else uri


def _size(store, uri: str) -> int:
    path = _fs_path(uri)
    try:
        if store.is_local:
            p = Path(path)
            return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return int(store.fs.du(path, total=True))
    except (OSError, FileNotFoundError):
        return 0


def _parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


INVENTORY_COLUMNS = ["kind", "content_hash", "uri", "bytes", "created_at", "age_days", "producer", "flow_run_id",
                     "study"]


def inventory(store, records: list[dict] | None = None, now: dt.datetime | None = None) -> pd.DataFrame:
    """One row per artifact of the store (columns INVENTORY_COLUMNS), newest first: kind, content hash, uri,
    size on disk (bytes), creation time (UTC, ISO), age (days), producing task, producing flow run and its flow
    (the study)."""
    records = store.lineage_index() if records is None else records
    now = now or dt.datetime.now(dt.timezone.utc)
    rows = []
    for r in records:
        created = _parse_time(r.get("created_at"))
        rows.append({"kind": r.get("kind"), "content_hash": r["content_hash"], "uri": r.get("uri"),
                     "bytes": _size(store, r.get("uri") or ""), "created_at": r.get("created_at"),
                     "age_days": (now - created).total_seconds() / 86400 if created else float("nan"),
                     "producer": r.get("producer"), "flow_run_id": r.get("flow_run_id"),
                     "study": r.get("flow_name")})
    df = pd.DataFrame(rows, columns=INVENTORY_COLUMNS)
    return df.sort_values(["created_at", "kind"], ascending=[False, True], na_position="last").reset_index(drop=True)


def totals_by_kind(inv: pd.DataFrame) -> pd.DataFrame:
    """(kind, artifacts, bytes) per kind, largest first, plus a `total` row."""
    by = inv.groupby("kind", dropna=False).agg(artifacts=("content_hash", "size"), bytes=("bytes", "sum"))
    by = by.sort_values("bytes", ascending=False).reset_index()
    total = pd.DataFrame([{"kind": "total", "artifacts": int(len(inv)), "bytes": int(inv["bytes"].sum())}])
    return pd.concat([by, total], ignore_index=True)


def human_bytes(n: float) -> str:
    """'512B', '1.5MiB': pydantic's ByteSize in binary units."""
    return ByteSize(int(n)).human_readable()


# ------------------------------------------------------------------------------------------ garbage collection
@dataclass
class Run:
    """A flow run as far as the store is concerned: when it started and the artifacts it wrote or used."""

    flow_run_id: str
    started: dt.datetime | None
    hashes: set[str] = field(default_factory=set)
    flow_name: str | None = None


def runs_from_records(records: list[dict]) -> dict[str, Run]:
    """Runs as the lineage records know them: each flow run that wrote an artifact (or wrote the same content again),
    started at its first write."""
    runs: dict[str, Run] = {}
    for r in records:
        writers = [r] + list(r.get("also_produced_by") or [])
        for w in writers:
            rid = w.get("flow_run_id")
            if not rid:
                continue
            run = runs.setdefault(rid, Run(rid, None, set(), r.get("flow_name") if w is r else None))
            run.hashes.add(r["content_hash"])
            t = _parse_time(w.get("created_at"))
            if t is not None and (run.started is None or t < run.started):
                run.started = t
    return runs


def merge_runs(runs: dict[str, Run], usage: Iterable, records: list[dict]) -> dict[str, Run]:
    """Add what the Prefect API says each run used (objects with flow_run_id, started, flow_name and refs: a set of
    (content hash, uri)), keeping only runs that used an artifact of this store (matched by uri, so a run on another
    store with the same content does not count). The API's start time wins."""
    by_uri = {r.get("uri"): r["content_hash"] for r in records if r.get("uri")}
    out = {k: Run(v.flow_run_id, v.started, set(v.hashes), v.flow_name) for k, v in runs.items()}
    for u in usage:
        used = {by_uri[uri] for _, uri in u.refs if uri in by_uri}
        if not used and u.flow_run_id not in out:
            continue
        run = out.setdefault(u.flow_run_id, Run(u.flow_run_id, None, set(), None))
        run.hashes |= used
        run.started = u.started or run.started
        run.flow_name = run.flow_name or u.flow_name
    return out


@dataclass
class GcPlan:
    keep_runs: list[Run]
    drop_runs: list[Run]
    keep: dict[str, dict]  # content hash -> record: what the kept runs need
    remove: list[dict]  # records of the artifacts to remove


def plan_gc(records: list[dict], runs: dict[str, Run], *, keep_last: int | None = None,
            older_than: dt.timedelta | None = None, now: dt.datetime | None = None) -> GcPlan:
    """Which runs to keep and which artifacts to remove. A run is kept when it is among the `keep_last` newest runs,
    or started less than `older_than` ago (either rule alone when only one is given; at least one is needed).
    Every artifact in the lineage closure of a kept run's artifacts is kept; every other artifact is removed."""
    if keep_last is None and older_than is None:
        raise ValueError("say what to keep: --keep-last N and/or --older-than D")
    if keep_last is not None and keep_last < 0:
        raise ValueError(f"--keep-last must be >= 0, got {keep_last}")
    now = now or dt.datetime.now(dt.timezone.utc)
    oldest = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    ordered = sorted(runs.values(), key=lambda r: (r.started or oldest, r.flow_run_id), reverse=True)
    keep_runs, drop_runs = [], []
    for i, run in enumerate(ordered):
        recent = older_than is not None and run.started is not None and now - run.started < older_than
        newest = keep_last is not None and i < keep_last
        (keep_runs if recent or newest else drop_runs).append(run)
    by_hash = {r["content_hash"]: r for r in records}
    wanted = set().union(*(r.hashes for r in keep_runs)) & set(by_hash) if keep_runs else set()
    keep = upstream_closure(by_hash.get, wanted)
    remove = [r for h, r in sorted(by_hash.items()) if h not in keep]
    return GcPlan(keep_runs, drop_runs, {h: r for h, r in keep.items() if h in by_hash}, remove)


def apply_gc(store, plan: GcPlan, result_dirs: Iterable[str | os.PathLike] = ()) -> dict:
    """Remove the plan's artifacts from the store (lineage record first, so an interrupted gc leaves artifacts that
    are never trusted rather than trusted half-deleted ones), then every file under `result_dirs` (Prefect result
    storage) that names a removed artifact. Returns counts and bytes freed."""
    gone = {r["uri"] for r in plan.remove if r.get("uri")}
    freed, removed = 0, 0
    for r in plan.remove:
        uri = r.get("uri") or ""
        freed += _size(store, uri)
        record_path = f"{store.root}/_lineage/{r['content_hash']}.json"
        if store.fs.exists(record_path):
            store.fs.rm(record_path)
        path = _fs_path(uri)
        if uri and store.fs.exists(path):
            store.fs.rm(path, recursive=True)
        removed += 1
    result_files = 0
    for d in result_dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for f in d.iterdir():
            if f.is_file() and gone and result_file_names(f, gone):
                f.unlink(missing_ok=True)
                result_files += 1
    return {"artifacts_removed": removed, "bytes_freed": freed, "result_files_removed": result_files}


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks", "": "days"}
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "": 86400}
MAX_DURATION_DAYS = 100 * 366  # a cut-off further back than this is a typo (and past ~2,700 years, not a date)


def parse_duration(text: str) -> dt.timedelta:
    """`30d`, `12h`, `90m`, `2w`, `45s`, or a bare number of days; at most MAX_DURATION_DAYS."""
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a duration (e.g. 30d, 12h, 90m, 2w)")
    if float(m.group(1)) * _UNIT_SECONDS[m.group(2)] > MAX_DURATION_DAYS * 86400:
        raise ValueError(f"{text!r} is longer than {MAX_DURATION_DAYS // 366} years (e.g. 30d, 12h, 90m, 2w)")
    return dt.timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
