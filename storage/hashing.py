"""Content hashes of artifacts: what a ref's `content_hash` is, for each format.

Every hash streams (arrays by blocks of rows, tables by record batches, files by chunks), so `quanta store verify`
re-hashes artifacts of any size in bounded memory.

Tables are hashed in a canonical Arrow form, never through pandas internals: the same rows hash the same whether a
text column is `object` or pandas' `string`/`str` dtype, `int64` or nullable `Int64` (no nulls), and whether the
table is a DataFrame about to be written or the Arrow table read back from its Parquet file.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from schemas.jsonable import jsonable

TABLE_HASH_SCHEME = "quanta-arrow-table-v2"
FILE_CHUNK = 1 << 22  # 4 MiB


def hash_arrays(arrays: dict[str, Any], attrs: dict[str, Any] | None = None, block_bytes: int = 1 << 26) -> str:
    """sha256 over (name, dtype, shape, bytes) of each array in name order, plus the JSON of `attrs`.
    Streams along the first axis so it works on zarr arrays larger than memory."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = arrays[name]
        dt = np.dtype(arr.dtype)
        h.update(f"{name}|{dt.str}|{tuple(arr.shape)}|".encode())
        if len(arr.shape) == 0:
            h.update(np.ascontiguousarray(np.asarray(arr[...])).tobytes())
            continue
        row_bytes = max(1, int(np.prod(arr.shape[1:])) * dt.itemsize)
        step = max(1, block_bytes // row_bytes)
        for i in range(0, arr.shape[0], step):
            h.update(np.ascontiguousarray(np.asarray(arr[i:i + step])).tobytes())
    h.update(json.dumps(jsonable(attrs or {}), sort_keys=True).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ tables
def canonical_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type a column is hashed as: large/view strings and binaries as their plain kind, dictionaries
    (pandas categoricals) as their values."""
    if pa.types.is_dictionary(t):
        return canonical_type(t.value_type)
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    return t


class _ColumnHasher:
    """Hashes one column fed batch by batch; the digest does not depend on where the batches split."""

    def __init__(self, name: str, dtype: pa.DataType):
        self.name, self.type = name, canonical_type(dtype)
        self.rows = 0
        self.validity, self.lengths, self.values = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()

    def update(self, arr: pa.Array | pa.ChunkedArray) -> None:
        if isinstance(arr, pa.ChunkedArray):
            for chunk in arr.chunks:
                self.update(chunk)
            return
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if arr.type != self.type:
            arr = arr.cast(self.type)
        self.rows += len(arr)
        self.validity.update(np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=np.uint8).tobytes())
        t = self.type
        if pa.types.is_string(t) or pa.types.is_binary(t):
            self._update_binary(arr.fill_null(b"" if pa.types.is_binary(t) else ""))
        elif pa.types.is_boolean(t):
            self.values.update(np.asarray(arr.fill_null(False).to_numpy(zero_copy_only=False), np.uint8).tobytes())
        elif pa.types.is_temporal(t):
            ints = arr.view(pa.int64() if t.bit_width == 64 else pa.int32())
            self.values.update(ints.fill_null(0).to_numpy(zero_copy_only=False).tobytes())
        elif pa.types.is_integer(t) or pa.types.is_floating(t):
            values = arr.fill_null(0).to_numpy(zero_copy_only=False)
            if values.dtype.kind == "f":  # one NaN bit pattern
                values = np.where(np.isnan(values), np.nan, values).astype(values.dtype)
            self.values.update(np.ascontiguousarray(values).tobytes())
        else:  # nested, decimal, ...: one JSON line per value
            for v in arr.to_pylist():
                self.values.update(json.dumps(v, sort_keys=True, default=str).encode() + b"\n")

    def _update_binary(self, arr: pa.Array) -> None:
        lengths = pc.binary_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
        self.lengths.update(lengths.tobytes())
        if len(arr) == 0:
            return
        _, offsets_buf, data_buf = arr.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
        if data_buf is not None:
            self.values.update(memoryview(data_buf)[int(offsets[0]):int(offsets[-1])])

    def digest(self) -> bytes:
        head = f"{self.name}|{self.type}|{self.rows}|".encode()
        return hashlib.sha256(head + self.validity.digest() + self.lengths.digest() + self.values.digest()).digest()


def hash_arrow_batches(schema: pa.Schema, batches: Iterable[pa.RecordBatch | pa.Table]) -> str:
    """The content hash of a table given as its Arrow schema and a stream of record batches (or tables)."""
    columns = [_ColumnHasher(f.name, f.type) for f in schema]
    for batch in batches:
        for hasher, column in zip(columns, batch.columns):
            hasher.update(column)
    h = hashlib.sha256()
    h.update(json.dumps([TABLE_HASH_SCHEME, [[c.name, str(c.type)] for c in columns]]).encode())
    for c in columns:
        h.update(c.digest())
    return h.hexdigest()


def hash_arrow_table(table: pa.Table) -> str:
    return hash_arrow_batches(table.schema, [table])


def table_to_arrow(df: pd.DataFrame) -> pa.Table:
    """The Arrow table a DataFrame is written as (no index)."""
    return pa.Table.from_pandas(df, preserve_index=False)


def hash_table(df: pd.DataFrame) -> str:
    """The content hash of a DataFrame: that of its Arrow form (`hash_arrow_table`)."""
    return hash_arrow_table(table_to_arrow(df))


# ------------------------------------------------------------------------------------------ directories
def dir_files(fs, root: str, exclude: Iterable[str] = ()) -> list[str]:
    """Paths (relative, '/'-separated) of the files below `root` on fsspec filesystem `fs`, in hashing order (by path
    components), without the top-level names in `exclude`."""
    root = root.rstrip("/")
    skip = set(exclude)
    rels = [p[len(root) + 1:] for p in fs.find(root)]
    return sorted((r for r in rels if r and r not in skip), key=lambda r: r.split("/"))


def hash_dir(path: str | os.PathLike, exclude: Iterable[str] = (), fs=None) -> str:
    """sha256 over (relative path, bytes) of every file below `path` (read in chunks); `fs` is an fsspec filesystem
    (default: the local disk)."""
    fs = fs if fs is not None else fsspec.filesystem("file")
    root = str(path).rstrip("/")
    h = hashlib.sha256()
    for rel in dir_files(fs, root, exclude):
        h.update(rel.encode() + b"\0")
        with fs.open(f"{root}/{rel}", "rb") as fh:
            while chunk := fh.read(FILE_CHUNK):
                h.update(chunk)
    return h.hexdigest()
