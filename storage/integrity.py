"""Is a stored artifact what its hash says? Two checks, a cheap one and an exact one.

- The **manifest** (taken when an artifact is published, kept in its lineage record): the number of files, their
  total size, and digests of every file's (path, size) and (path, mtime). Comparing it costs a directory listing, so
  every cache hit does it (storage.verify.ref_problem): a truncated, deleted or added file is found at once. When only
  mtimes differ (a copied store, or an edit in place that kept sizes), the exact check decides.
- The **re-hash**: the artifact's content hash recomputed from its stored bytes, streaming (any size). Reads of
  artifacts under 64 MiB do it; `quanta store verify` does it for everything; publication does it to an existing copy
  before trusting it.

Functions here take a `storage.Store` (duck-typed: `fs`, `is_local`, `open_zarr_group`) and lineage records.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

import pyarrow.parquet as pq

from schemas.registry import get_schema
from storage.hashing import hash_arrays, hash_arrow_batches, hash_dir

DIR_RECORD_FILE = "lineage.json"  # written into a dir artifact after its hash: not part of its content
_log = logging.getLogger("quanta.storage")


def notify(message: str) -> None:
    """A warning in the Prefect run log when called inside a run (else the `quanta.storage` logger)."""
    try:
        from prefect.logging import get_run_logger

        get_run_logger().warning(message)
    except Exception:  # noqa: BLE001  (outside a run)
        _log.warning(message)


# ------------------------------------------------------------------------------------------ manifests
def _entries(fs, path: str, is_local: bool) -> list[tuple[str, int, int | None]]:
    """(relative path, size, mtime_ns or None) of every file of an artifact ('' for a single-file artifact)."""
    if is_local:
        if os.path.isfile(path):
            st = os.stat(path)
            return [("", st.st_size, st.st_mtime_ns)]
        out = []
        for dirpath, _, files in os.walk(path):
            for f in files:
                full = os.path.join(dirpath, f)
                st = os.stat(full)
                out.append((os.path.relpath(full, path).replace(os.sep, "/"), st.st_size, st.st_mtime_ns))
        return sorted(out)
    if not fs.isdir(path):
        return [("", int(fs.info(path)["size"]), None)]
    found = fs.find(path, detail=True)
    return sorted((p[len(path.rstrip("/")) + 1:], int(info["size"]), None) for p, info in found.items())


def take_manifest(fs, path: str, is_local: bool) -> dict[str, Any]:
    """The manifest of the artifact at `path` (see the module docstring)."""
    entries = _entries(fs, path, is_local)
    sizes = hashlib.sha256(json.dumps([[p, s] for p, s, _ in entries]).encode()).hexdigest()
    mtimes = (hashlib.sha256(json.dumps([[p, m] for p, _, m in entries]).encode()).hexdigest()
              if is_local else None)
    return {"files": len(entries), "bytes": sum(s for _, s, _ in entries), "sizes": sizes, "mtimes": mtimes}


def compare_manifest(fs, path: str, is_local: bool, recorded: dict | None) -> str | None:
    """None when the files are as recorded; 'touched' when only mtimes differ (content unknown: re-hash to decide);
    else what differs."""
    if not recorded:
        return None  # written before manifests existed: only presence can be checked
    now = take_manifest(fs, path, is_local)
    if (now["files"], now["bytes"]) != (recorded["files"], recorded["bytes"]):
        return (f"its files changed since it was written ({recorded['files']} file(s), {recorded['bytes']} bytes "
                f"then; {now['files']}, {now['bytes']} now)")
    if now["sizes"] != recorded["sizes"]:
        return "the size of one of its files changed since it was written"
    if recorded.get("mtimes") and now["mtimes"] != recorded["mtimes"]:
        return "touched"
    return None


# ------------------------------------------------------------------------------------------ re-hashing
def stored_hash(store, kind: str, path: str) -> str:
    """The content hash recomputed from the bytes stored at `path` (streaming). Raises whatever the format's reader
    raises on damaged bytes."""
    fmt = get_schema(kind).format
    if fmt == "zarr":
        group = store.open_zarr_group(path)
        arrays = {name: arr for name, arr in group.arrays()}
        attrs = {k: v for k, v in group.attrs.asdict().items() if k != "quanta"}
        return hash_arrays(arrays, attrs)
    if fmt == "parquet":
        with store.fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            return hash_arrow_batches(pf.schema_arrow, pf.iter_batches(batch_size=1 << 16))
    if fmt == "dir":
        return hash_dir(path, exclude=(DIR_RECORD_FILE,), fs=store.fs)
    raise TypeError(f"artifact kind {kind!r}: cannot re-hash format {fmt!r}")


def legacy_table_hash(store, path: str) -> str:
    """The table hash of stores written before the canonical Arrow hash (pandas dtype names and
    `hash_pandas_object`); used only to recognise such tables, never to write."""
    import pandas as pd

    with store.fs.open(path, "rb") as f:
        df = pq.read_table(f).to_pandas()
    h = hashlib.sha256()
    h.update(json.dumps([[str(c), str(t)] for c, t in df.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    return h.hexdigest()


def rehash_problem(store, kind: str, path: str, content_hash: str, legacy: bool = False) -> str | None:
    """None when the stored bytes hash to `content_hash`, else what is wrong (unreadable, or another hash). With
    `legacy` (a record written before manifests existed), a table may also match the older table hash."""
    try:
        got = stored_hash(store, kind, path)
        if got != content_hash and legacy and get_schema(kind).format == "parquet":
            got = content_hash if legacy_table_hash(store, path) == content_hash else got
    except Exception as e:  # noqa: BLE001  (any reader error means damaged bytes)
        return f"cannot be read ({describe(e)})"
    if got != content_hash:
        return f"its stored content does not match its hash (now {got[:12]}): it was modified or damaged"
    return None


def describe(e: BaseException, limit: int = 200) -> str:
    """'Type: message' on one line (readers' messages can span several), at most `limit` characters."""
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
