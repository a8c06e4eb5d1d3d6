"""Is an artifact sound? The check a cached result must pass to be trusted (`ref_problem`), and the check of a whole
store (`verify_store`, behind `quanta store verify [--repair]`).

`verify_store` re-hashes every artifact from its stored bytes (streaming: any size, directory artifacts too) and
reports, besides damaged artifacts, lineage records that cannot be read and artifacts without a record (a write that
never finished). With `repair`, each bad one is moved to `<store>/_quarantine/<time>/` (data and record), under the
artifact's lock, so the next run recomputes it; debris of dead writers (storage.debris) is removed too.
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import asdict, dataclass, field

from storage import integrity
from storage import lineage as lineage_mod
from storage.refs import ArtifactRef
from storage.store import EXT, Store

QUARANTINE_DIR = "_quarantine"


def ref_problem(ref: ArtifactRef) -> str | None:
    """None if the artifact `ref` names is complete in its store and its files are as recorded (Store.
    artifact_problem: cheap unless their mtimes changed), else what is wrong, e.g. 'is missing from the store'."""
    return Store(ref.uri.rsplit("/", 2)[0]).artifact_problem(ref)


@dataclass
class Finding:
    """One bad thing in a store: an artifact (kind, content hash, uri) or a lineage record file, and what is wrong."""

    what: str  # "artifact" | "record" | "incomplete"
    problem: str
    kind: str | None = None
    content_hash: str | None = None
    uri: str | None = None
    quarantined_to: str | None = None

    def line(self) -> str:
        name = f"{self.kind}@{self.content_hash[:12]}" if self.kind and self.content_hash else self.what
        where = f" ({self.uri})" if self.uri else ""
        done = f" -> quarantined to {self.quarantined_to}" if self.quarantined_to else ""
        return f"BAD {name}{where}: {self.problem}{done}"


@dataclass
class VerifyReport:
    store: str
    checked: int = 0
    bytes: int = 0
    bad: list[Finding] = field(default_factory=list)
    debris: list[str] = field(default_factory=list)
    debris_removed: bool = False
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.bad

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def _artifact_paths(store: Store) -> dict[str, tuple[str, str]]:
    """{content-hash prefix (24 hex): (kind, path)} of every artifact file/dir in the store's kind directories."""
    out = {}
    for kind_dir in store.fs.ls(store.root, detail=False):
        kind = kind_dir.rstrip("/").rsplit("/", 1)[-1]
        if kind.startswith("_") or not store.fs.isdir(kind_dir):
            continue
        for p in store.fs.ls(kind_dir, detail=False):
            name = p.rstrip("/").rsplit("/", 1)[-1]
            stem, _, ext = name.rpartition(".")
            if ext in EXT.values():
                out[stem] = (kind, p.rstrip("/"))
    return out


def _quarantine(store: Store, stamp: str, paths: list[str]) -> str:
    """Move `paths` (inside the store) under `_quarantine/<stamp>/`, keeping their relative layout."""
    base = store._join(QUARANTINE_DIR, stamp)
    for p in paths:
        if not store.fs.exists(p):
            continue
        dest = f"{base}/{p[len(store.root) + 1:]}"
        store.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
        if store.is_local:
            os.replace(p, dest)
        else:
            store.fs.mv(p, dest, recursive=True)
    return base


def _check_record(store: Store, record: dict) -> str | None:
    path = store._path(record["uri"])
    if not store.fs.exists(path):
        return "its data is missing (the lineage record remains)"
    return integrity.rehash_problem(store, record["kind"], path, record["content_hash"],
                                    legacy="manifest" not in record)


def verify_store(store: Store, repair: bool = False) -> VerifyReport:
    """Re-hash every artifact of `store`; with `repair`, quarantine the bad ones and remove dead writers' debris."""
    store.require_existing()
    report = VerifyReport(store=store.url, repaired=repair)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    if store.is_local:
        from storage.debris import debris_candidates, is_debris

        report.debris = [str(p.relative_to(store.root)) for p in debris_candidates(store.root) if is_debris(p)]
        if repair:
            store.clean_debris()
            report.debris_removed = True
    lineage_dir = store._join("_lineage")
    recorded: set[str] = set()
    unreadable: set[str] = set()
    artifacts = _artifact_paths(store)
    for rec_path in sorted(lineage_mod.record_names(store.fs, lineage_dir)):
        try:
            record = store.resolve_record(lineage_mod.load_record(store.fs, rec_path))
        except lineage_mod.UnreadableRecordError as e:
            unreadable.add(rec_path)
            # its artifact (named by the record's file name) is reported with it, once, not also as a write that
            # never finished; --repair quarantines both, so the next run recomputes it
            chash = rec_path.rsplit("/", 1)[-1].removesuffix(".json")
            kind, data = artifacts.get(chash[:24], (None, None))
            finding = Finding("record", str(e) + ("; its artifact cannot be trusted without it" if data else ""),
                              kind, chash if kind else None, store._url(data) if data else rec_path)
            recorded.add(chash[:24])
            if repair:
                finding.quarantined_to = _quarantine(store, stamp, [rec_path, *([data] if data else [])])
            report.bad.append(finding)
            continue
        chash, kind = record["content_hash"], record.get("kind")
        recorded.add(chash[:24])
        report.checked += 1
        report.bytes += int((record.get("manifest") or {}).get("bytes") or 0)
        problem = _check_record(store, record)
        if problem is None:
            continue
        finding = Finding("artifact", problem, kind, chash, record.get("uri"))
        if repair:
            with store.artifact_lock(chash):  # a healer may have replaced it meanwhile: look again
                if _check_record(store, record) is not None:
                    finding.quarantined_to = _quarantine(store, stamp, [store._path(record["uri"]), rec_path])
        report.bad.append(finding)
    for prefix, (kind, path) in sorted(artifacts.items()):
        if prefix in recorded:
            continue
        with store.artifact_lock(prefix):  # a live writer publishes under this lock: wait for it, then look again
            if any(p.rsplit("/", 1)[-1].startswith(prefix) and p not in unreadable
                   for p in lineage_mod.record_names(store.fs, lineage_dir)):
                continue
            finding = Finding("incomplete", "has no lineage record: its write never finished", kind, prefix,
                              store._url(path))
            if repair:
                finding.quarantined_to = _quarantine(store, stamp, [path])
        report.bad.append(finding)
    return report
