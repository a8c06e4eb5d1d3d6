"""The artifact store.

Every artifact lives at `<root>/<kind>/<content-hash prefix>.<ext>` and is described by a lineage record
(`<root>/_lineage/<content-hash>.json`, also embedded in the Zarr attrs / Parquet key-value metadata).
Writes go to `<root>/_tmp/<uuid>~<host>~<pid>`, are validated and hashed there, then renamed into place; the lineage
record (with the artifact's manifest: storage.integrity) is written last and is what marks an artifact complete, so a
crash never leaves something a later run trusts.

Publication is safe under concurrent writers (on a local store): it holds the artifact's file lock (storage.locks); a
target that is already there is verified (re-hashed) and kept only if it verifies, else replaced, so two runs that
compute the same content both succeed and a recomputation repairs a damaged copy.

Reads check the ref's schema version, that the artifact is complete and its files are as recorded, and validate it
against its schema; any error while reading the bytes is raised as ArtifactCorruptError naming the artifact, where
it is and the command that repairs it. Opening a Store creates nothing: directories appear with the first write.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import zarr

from schemas import ArtifactCorruptError, ArtifactValidationError, StoreError, get_schema
from schemas.jsonable import jsonable
from storage import integrity
from storage import lineage as lineage_mod
from storage.hashing import hash_arrays, hash_arrow_table, hash_dir, table_to_arrow
from storage.locks import artifact_lock_path, file_lock, owner_tag
from storage.refs import ArtifactRef
from storage.root_check import local_root_problem
from storage.settings import default_store_root
from storage.staging import stage_dir

EXT = {"zarr": "zarr", "parquet": "parquet", "dir": "d", "json": "json"}
_HASH_PREFIX = 24


class ArtifactMissingError(FileNotFoundError):
    """A ref points at an artifact that is not (or not completely) in the store."""


class ZarrWriter:
    """Handle yielded by `Store.zarr_writer`: fill `.group`; after the block, `.ref` is the published ref."""

    def __init__(self, group: zarr.Group):
        self.group = group
        self.ref: ArtifactRef | None = None


class Store:
    """A store root (local directory or fsspec URL) holding validated, content-addressed artifacts."""

    def __init__(self, root: str | os.PathLike | None = None):
        root = str(root) if root is not None else default_store_root()
        if not root.strip():  # `--store "$UNSET"`: not the working directory
            raise StoreError(f"store path {root!r} is empty: give a directory or fsspec URL with --store or "
                             "$QUANTA_STORE")
        try:
            self.fs, path = fsspec.core.url_to_fs(root)
        except (ValueError, ImportError) as e:  # an unknown protocol, or its filesystem package is not installed
            raise StoreError(f"cannot open store {root!r}: {e}") from None
        self.is_local = lineage_mod.is_local_fs(self.fs)
        self.root = os.path.abspath(path) if self.is_local else path.rstrip("/")
        self.url = self.root if self.is_local else f"{self._proto()}://{self.root}"

    def check_root(self, *, writing: bool = True) -> None:
        """StoreError when this root cannot hold a store: it, or the nearest existing directory above it, is a file;
        locally also a path too long for the filesystem, a symlink loop or a dangling symlink on the way, and (when
        `writing`) a place where no directory can be made, such as /proc. Checked before any work, so a run with a
        mistyped --store fails in one line, not in its first write."""
        if self.is_local:
            local_root_problem(self.root, writing=writing)
        path = self.root
        while path and not self.fs.exists(path):
            parent = self.fs._parent(path)
            if parent == path:
                return
            path = parent
        if path and not self.fs.isdir(path):
            where = "is a file" if path == self.root else f"is under {path}, a file"
            raise StoreError(f"store {self.url} {where}, not a store directory; check --store or $QUANTA_STORE")

    def exists(self) -> bool:
        """Whether a store is here (anything was ever written to it)."""
        return self.fs.exists(self._join("_lineage"))

    def _ensure_dirs(self) -> None:
        for d in ("_lineage", "_tmp"):
            self.fs.makedirs(self._join(d), exist_ok=True)

    def repair_hint(self) -> str:
        return (f"repair: `quanta store verify --repair --store {self.url}` (quarantines it; the next run recomputes "
                "it), or rerun with --refresh")

    def _proto(self) -> str:
        p = self.fs.protocol
        return p[0] if isinstance(p, (tuple, list)) else p

    def _join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _url(self, path: str) -> str:
        return path if self.is_local else f"{self._proto()}://{path}"

    def _path(self, uri: str) -> str:
        return fsspec.core.url_to_fs(uri)[1] if "://" in uri else uri

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # ------------------------------------------------------------------------------------------ writing
    def artifact_lock(self, content_hash: str):
        """The lock that publication, lineage updates and repair of this artifact hold (local stores; an fsspec store
        has none: concurrent writers of identical content then both publish it, the last rename wins)."""
        if not self.is_local:
            return contextlib.nullcontext()
        return file_lock(artifact_lock_path(self.root, content_hash))

    def _final_path(self, kind: str, content_hash: str) -> str:
        return self._join(kind, f"{content_hash[:_HASH_PREFIX]}.{EXT[get_schema(kind).format]}")

    def _existing_problem(self, kind: str, final: str, lineage_path: str, content_hash: str) -> str | None:
        """Why the copy already at `final` must not be trusted (None: it is complete and re-hashes to its hash)."""
        if not self.fs.exists(final):
            return "absent"
        if not self.fs.exists(lineage_path):
            return "incomplete (no lineage record: its write never finished)"
        try:
            lineage_mod.load_record(self.fs, lineage_path)
        except lineage_mod.UnreadableRecordError as e:
            return str(e)
        return integrity.rehash_problem(self, kind, final, content_hash)

    def _finalise(self, kind: str, fmt: str, tmp_path: str, content_hash: str, record: dict) -> ArtifactRef:
        schema = get_schema(kind)
        final = self._final_path(kind, content_hash)
        lineage_path = self._join("_lineage", f"{content_hash}.json")
        ref = ArtifactRef(kind=kind, uri=self._url(final), content_hash=content_hash, schema_version=schema.version,
                          inputs=tuple(r["content_hash"] for r in record["inputs"]))
        with self.artifact_lock(content_hash):
            problem = self._existing_problem(kind, final, lineage_path, content_hash)
            if problem is None:  # already complete and verified (content-addressed): keep it, note this producer
                self.fs.rm(tmp_path, recursive=True)
                lineage_mod.add_producer(self.fs, lineage_path, record)
                return ref
            if problem != "absent":
                integrity.notify(f"store: replacing the copy of {ref.short} at {ref.uri}: {problem}")
                self.fs.rm(final, recursive=True)
            self.fs.makedirs(self._join(kind), exist_ok=True)
            if self.is_local:
                os.replace(tmp_path, final)
            else:
                self.fs.mv(tmp_path, final, recursive=True)
            record = dict(record, uri=ref.uri, content_hash=content_hash, schema_version=schema.version,
                          manifest=integrity.take_manifest(self.fs, final, self.is_local))
            lineage_mod.write_record(self.fs, lineage_path, lineage_mod.relative_to_root(record, self.url))
        return ref

    def _tmp(self, fmt: str) -> str:
        self._ensure_dirs()
        return self._join("_tmp", f"{uuid.uuid4().hex}{owner_tag()}.{EXT[fmt]}")

    def write_zarr(self, kind: str, arrays: dict[str, np.ndarray], attrs: dict | None = None, *,
                   inputs: list[ArtifactRef] | tuple = (), params: dict | None = None,
                   chunks: dict[str, tuple[int, ...]] | None = None) -> ArtifactRef:
        """Validate `arrays` against `kind`'s schema, write them as one Zarr group atomically, return its ref."""
        with self.zarr_writer(kind, attrs=attrs, inputs=inputs, params=params) as writer:
            for name, arr in arrays.items():
                arr = np.asarray(arr)
                ch = (chunks or {}).get(name)
                if ch is None:
                    ch = _default_chunks(arr.shape, arr.dtype)
                z = writer.group.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=ch)
                if arr.size:
                    z[...] = arr
        return writer.ref

    @contextlib.contextmanager
    def zarr_writer(self, kind: str, attrs: dict | None = None, *, inputs: list[ArtifactRef] | tuple = (),
                    params: dict | None = None) -> Iterator["ZarrWriter"]:
        """Yield a writer whose `.group` is a fresh Zarr group in a temp location, to fill incrementally (arrays
        larger than memory); on exit it is validated, hashed and moved into place, and `.ref` holds its ref.
        If the body raises, the temp group is deleted and nothing is published."""
        schema = get_schema(kind)
        if schema.format != "zarr":
            raise TypeError(f"artifact kind {kind!r} is {schema.format}, not zarr")
        tmp = self._tmp("zarr")
        group = zarr.open_group(self._zarr_target(tmp), mode="w", zarr_format=3)
        content_attrs = jsonable(attrs or {})
        writer = ZarrWriter(group)
        try:
            yield writer
            arrays = {name: arr for name, arr in group.arrays()}
            schema.schema.validate(f"{kind} (write)", arrays, content_attrs)
            content_hash = hash_arrays(arrays, content_attrs)
            record = lineage_mod.new_record(kind, inputs, params)
            group.attrs.update({**content_attrs, "quanta": jsonable(record)})
            ref = self._finalise(kind, "zarr", tmp, content_hash, record)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm(tmp, recursive=True)
            raise
        writer.ref = ref

    def _zarr_target(self, path: str):
        if self.is_local:
            return zarr.storage.LocalStore(path)
        return zarr.storage.FsspecStore.from_url(self._url(path))

    def write_table(self, kind: str, df: pd.DataFrame, *, inputs: list[ArtifactRef] | tuple = (),
                    params: dict | None = None) -> ArtifactRef:
        """Validate `df` with `kind`'s pandera schema and write it as Parquet atomically."""
        schema = get_schema(kind)
        if schema.format != "parquet":
            raise TypeError(f"artifact kind {kind!r} is {schema.format}, not parquet")
        df = df.reset_index(drop=True)
        _validate_table(schema, df, f"{kind} (write)")
        table = table_to_arrow(df)
        content_hash = hash_arrow_table(table)
        record = lineage_mod.new_record(kind, inputs, params)
        meta = dict(table.schema.metadata or {})
        meta[b"quanta"] = json.dumps(jsonable(record)).encode()
        table = table.replace_schema_metadata(meta)
        tmp = self._tmp("parquet")
        try:
            with self.fs.open(tmp, "wb") as f:
                pq.write_table(table, f)
            return self._finalise(kind, "parquet", tmp, content_hash, record)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm(tmp)
            raise

    def write_dir(self, kind: str, build: Callable[[Path], None], *, inputs: list[ArtifactRef] | tuple = (),
                  params: dict | None = None) -> ArtifactRef:
        """`build(path)` fills a fresh local directory (a report: markdown, PNGs, CSVs); it is published atomically."""
        schema = get_schema(kind)
        if schema.format != "dir":
            raise TypeError(f"artifact kind {kind!r} is {schema.format}, not dir")
        import tempfile

        with tempfile.TemporaryDirectory() as local_tmp:
            build(Path(local_tmp))
            content_hash = hash_dir(Path(local_tmp))
            record = lineage_mod.new_record(kind, inputs, params)
            Path(local_tmp, "lineage.json").write_text(json.dumps(jsonable(record), indent=2))
            tmp = self._tmp("dir")
            if self.is_local:
                shutil.copytree(local_tmp, tmp)
            else:
                self.fs.put(local_tmp, tmp, recursive=True)
            return self._finalise(kind, "dir", tmp, content_hash, record)

    # ------------------------------------------------------------------------------------------ checking
    def artifact_problem(self, ref: ArtifactRef) -> str | None:
        """The cheap check of a cache hit: None when the artifact `ref` names is complete (data and lineage record
        present) and its files are as recorded at publication (the manifest: sizes, then mtimes; when only mtimes
        changed its content is re-hashed, and the manifest renewed if it verifies); else what is wrong."""
        path = self._path(ref.uri)
        if not self.fs.exists(path):
            return f"is missing from the store ({ref.uri})"
        lineage_path = self._join("_lineage", f"{ref.content_hash}.json")
        if not self.fs.exists(lineage_path):
            return f"has no lineage record, so its write never completed ({ref.uri})"
        return self._files_problem(ref, path, lineage_path)

    def _files_problem(self, ref: ArtifactRef, path: str, lineage_path: str, rehash: bool = True) -> str | None:
        """What is wrong with the files (None: as recorded); with `rehash=False`, 'touched' when only mtimes changed
        (the caller re-hashes while reading)."""
        try:
            record = lineage_mod.load_record(self.fs, lineage_path)
        except (lineage_mod.UnreadableRecordError, FileNotFoundError) as e:
            return str(e)
        status = integrity.compare_manifest(self.fs, path, self.is_local, record.get("manifest"))
        if status != "touched" or not rehash:
            return status
        problem = integrity.rehash_problem(self, ref.kind, path, ref.content_hash)
        if problem is None:  # same content, new mtimes (a copied store): renew the manifest, so the next check is cheap
            with self.artifact_lock(ref.content_hash):
                with contextlib.suppress(Exception):
                    record = lineage_mod.load_record(self.fs, lineage_path)
                    record["manifest"] = integrity.take_manifest(self.fs, path, self.is_local)
                    lineage_mod.write_record(self.fs, lineage_path, record)
        return problem

    def _corrupt(self, ref: ArtifactRef, problem: str, field: str = "content") -> ArtifactCorruptError:
        return ArtifactCorruptError(ref.short, field, problem, ref.uri, self.repair_hint())

    @contextlib.contextmanager
    def _reading(self, ref: ArtifactRef) -> Iterator[None]:
        """Any error of the format's reader (zstd, thrift, arrow, zarr, json) becomes an ArtifactCorruptError naming
        the artifact, where it is and how to repair it."""
        try:
            yield
        except (ArtifactCorruptError, ArtifactMissingError, MemoryError, KeyboardInterrupt):
            raise
        except ArtifactValidationError as e:  # stored values that break the schema: damaged too, same repair
            bad = f" (bad value: {e.value!r:.120})" if e.value is not None else ""
            raise self._corrupt(ref, f"fails its schema on read: {e.problem}{bad}", e.field) from e
        except Exception as e:  # noqa: BLE001
            raise self._corrupt(ref, f"cannot be read ({integrity.describe(e)})") from e

    # ------------------------------------------------------------------------------------------ reading
    def _check_ref(self, ref: ArtifactRef, fmt: str, touched: list | None = None):
        """(schema, path) of a readable artifact, else ArtifactMissingError / ArtifactCorruptError. With a `touched`
        list, an artifact whose files only have new mtimes is not re-hashed here: 'touched' is appended and the
        caller verifies the hash while reading (after schema validation, which names a bad field better)."""
        schema = get_schema(ref.kind)
        if schema.format != fmt:
            raise TypeError(f"artifact {ref.short} is {schema.format}, not {fmt}")
        if ref.schema_version != schema.version:
            raise ArtifactValidationError(
                ref.short, "schema_version",
                f"artifact was written with schema v{ref.schema_version}, this code expects v{schema.version}; "
                "rerun the producing study", ref.schema_version)
        path = self._path(ref.uri)
        lineage_path = self._join("_lineage", f"{ref.content_hash}.json")
        if not self.fs.exists(path) or not self.fs.exists(lineage_path):
            raise ArtifactMissingError(
                f"artifact {ref.short} is missing or incomplete at {ref.uri} (store {self.url}); "
                "it was deleted or its write did not finish: rerun with --refresh to recompute it")
        problem = self._files_problem(ref, path, lineage_path, rehash=touched is None)
        if problem == "touched" and touched is not None:
            touched.append(problem)
        elif problem is not None:
            raise self._corrupt(ref, problem)
        return schema, path

    def open_zarr_group(self, path: str) -> zarr.Group:
        """The Zarr group at a path of this store, read-only, unchecked (use `open_zarr` for an artifact)."""
        return zarr.open_group(self._zarr_target(path), mode="r")

    def open_zarr(self, ref: ArtifactRef, *, validate: bool = True, verify_hash: bool | None = None) -> zarr.Group:
        """Open a Zarr artifact read-only after validating it against its schema (values checked chunk by
        chunk). The content hash is re-verified for artifacts under 64 MiB unless `verify_hash` says."""
        touched: list[str] = []
        schema, path = self._check_ref(ref, "zarr", touched)
        verify_hash = True if touched else verify_hash
        with self._reading(ref):
            group = self.open_zarr_group(path)
            arrays = {name: arr for name, arr in group.arrays()}
            attrs = {k: v for k, v in group.attrs.asdict().items() if k != "quanta"}
            if validate:
                schema.schema.validate(f"{ref.short} (read)", arrays, attrs)
            nbytes = sum(a.nbytes for a in arrays.values())
            if verify_hash or (verify_hash is None and nbytes < (64 << 20)):
                got = hash_arrays(arrays, attrs)
                if got != ref.content_hash:
                    raise self._corrupt(ref, f"stored content does not match the ref (now {got[:12]}): the artifact "
                                        "was modified after it was written", "content_hash")
        return group

    def read_zarr(self, ref: ArtifactRef, **kw) -> tuple[dict[str, np.ndarray], dict]:
        """Read a (small) Zarr artifact fully into memory: ({name: ndarray}, attrs)."""
        group = self.open_zarr(ref, **kw)
        with self._reading(ref):
            arrays = {name: arr[...] for name, arr in group.arrays()}
            attrs = {k: v for k, v in group.attrs.asdict().items() if k != "quanta"}
        return arrays, attrs

    def read_table(self, ref: ArtifactRef, *, validate: bool = True) -> pd.DataFrame:
        """Read a Parquet artifact; with `validate`, check it against its schema and its content hash (computed on
        the Arrow table as read, so it does not depend on the pandas version)."""
        touched: list[str] = []
        schema, path = self._check_ref(ref, "parquet", touched)
        validate = validate or bool(touched)
        with self._reading(ref):
            with self.fs.open(path, "rb") as f:
                table = pq.read_table(io.BytesIO(f.read()))
            df = table.to_pandas()
            if validate:
                _validate_table(schema, df, f"{ref.short} (read)")
        if validate:
            got = hash_arrow_table(table)
            if got != ref.content_hash:
                raise self._corrupt(ref, f"stored table does not match the ref (now {got[:12]}): the artifact was "
                                    "modified after it was written", "content_hash")
        return df

    def local_dir(self, ref: ArtifactRef) -> Path:
        _, path = self._check_ref(ref, "dir")
        if not self.is_local:
            return stage_dir(self.fs, path, ref)  # a verified local copy, keyed by content hash (storage/staging.py)
        return Path(path)

    # ------------------------------------------------------------------------------------------ lineage
    def require_existing(self) -> None:
        if not self.exists():
            raise StoreError(f"no quanta store at {self.url} (no _lineage directory there); check --store or "
                             "$QUANTA_STORE")

    def lineage(self, content_hash: str) -> dict:
        """The lineage record of an artifact by content hash or a unique prefix (hex digits only); KeyError when
        there is none (or no store here)."""
        if not self.exists():
            raise KeyError(f"no artifact with content hash {content_hash!r}: no quanta store at {self.url}")
        return self.resolve_record(lineage_mod.read_record(self.fs, self._join("_lineage"), content_hash))

    def lineage_index(self, skipped: list[str] | None = None) -> list[dict]:
        """Every readable lineage record ([] where no store exists: nothing is created); unreadable ones are skipped
        with a warning that names them (and listed in `skipped`)."""
        if not self.exists():
            return []
        return [self.resolve_record(r) for r in lineage_mod.all_records(self.fs, self._join("_lineage"), skipped)]

    def resolve_record(self, record: dict) -> dict:
        """A lineage record of this store as read: uris relative to the root (how they are written) joined to it."""
        return lineage_mod.resolved_at_root(record, self.url)

    def foreign_records(self, records: list[dict]) -> list[dict]:
        """Records (as read) whose artifact uri is not under this root: written by an older quanta into a store that
        was then copied or moved here, so they name the original's files."""
        prefix = self.url.rstrip("/") + "/"
        return [r for r in records if r.get("uri") and not str(r["uri"]).startswith(prefix)]

    def clean_debris(self) -> list[str]:
        """Remove what killed writers left behind (storage.debris); local stores only. Returns the removed paths."""
        if not self.is_local or not self.exists():
            return []
        from storage.debris import clean_debris

        return clean_debris(self.root)


def _default_chunks(shape: tuple[int, ...], dtype, target_bytes: int = 4 << 20) -> tuple[int, ...]:
    """Chunk along the first axis only (rows), ~4 MiB per chunk: aligned with row-blocked Dask reads."""
    if not shape:
        return ()
    itemsize = np.dtype(dtype).itemsize
    row = max(1, int(np.prod(shape[1:])) * itemsize)
    rows = max(1, min(shape[0], target_bytes // row)) if shape[0] else 1
    return (rows, *[max(1, s) for s in shape[1:]])


def _validate_table(schema, df: pd.DataFrame, artifact: str) -> None:
    import pandera.errors as pe

    try:
        schema.schema.validate(df, lazy=True)
    except pe.SchemaErrors as err:
        fc = err.failure_cases
        row = fc.iloc[0]
        column = row.get("column") if "column" in fc else None
        check = row.get("check") if "check" in fc else ""
        value = row.get("failure_case") if "failure_case" in fc else None
        index = row.get("index") if "index" in fc else None
        where = f" at row {index}" if index is not None and not pd.isna(index) else ""
        raise ArtifactValidationError(artifact, str(column or row.get("schema_context", "table")),
                                      f"fails check {check}{where} ({len(fc)} failure(s) in all)", value) from None
