"""Content hashes of artifacts: what a ref's `content_hash` is, for each format."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schemas.jsonable import jsonable


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


def hash_table(df: pd.DataFrame) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([[str(c), str(t)] for c, t in df.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    return h.hexdigest()


def hash_dir(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()
