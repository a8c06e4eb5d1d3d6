"""Schemas for array artifacts (Zarr groups): named arrays with dtype, named dims and value checks.

A `GroupSpec` describes a Zarr group: each member array has an `ArraySpec` (dtype kind, dims by name, value
checks) and the group may have cross-array checks (e.g. "curves.loss has one row per model"). Validation works
on any mapping of name -> array-like (numpy arrays on write, zarr arrays on read); value checks run chunk by
chunk along the first axis so a large array never needs to fit in memory at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from schemas.errors import ArtifactValidationError

# A value check gets a numpy block and returns None if fine, else (problem, bad value).
ValueCheck = Callable[[np.ndarray], "tuple[str, Any] | None"]


def finite() -> ValueCheck:
    def check(block: np.ndarray):
        if np.issubdtype(block.dtype, np.floating):
            bad = ~np.isfinite(block)
            if bad.any():
                return "must be finite", block[bad][0].item()
        return None

    check.__name__ = "finite"
    return check


def finite_or_nan() -> ValueCheck:
    """Allows NaN (meaning 'no value'), forbids +-inf."""

    def check(block: np.ndarray):
        if np.issubdtype(block.dtype, np.floating):
            bad = np.isinf(block)
            if bad.any():
                return "must be finite or NaN", block[bad][0].item()
        return None

    check.__name__ = "finite_or_nan"
    return check


def in_range(lo: float | None = None, hi: float | None = None, *, hi_exclusive: bool = False) -> ValueCheck:
    def check(block: np.ndarray):
        vals = block[~np.isnan(block)] if np.issubdtype(block.dtype, np.floating) else block.ravel()
        if lo is not None and vals.size and (vals < lo).any():
            return f"must be >= {lo}", vals[vals < lo][0].item()
        if hi is not None and vals.size:
            over = vals >= hi if hi_exclusive else vals > hi
            if over.any():
                return f"must be {'<' if hi_exclusive else '<='} {hi}", vals[over][0].item()
        return None

    check.__name__ = f"in_range({lo}, {hi})"
    return check


def monotone_nondecreasing() -> ValueCheck:
    def check(block: np.ndarray):
        flat = np.asarray(block).ravel()
        if flat.size > 1:
            d = np.diff(flat)
            if (d < 0).any():
                i = int(np.argmax(d < 0))
                return f"must be non-decreasing (drops at index {i + 1})", flat[i + 1].item()
        return None

    check.__name__ = "monotone_nondecreasing"
    return check


@dataclass(frozen=True)
class ArraySpec:
    """One array of a group: `dtype` is a numpy dtype kind ('f', 'i', 'u', 'b') or an exact dtype string."""

    dtype: str
    dims: tuple[str, ...]
    checks: tuple[ValueCheck, ...] = ()
    whole: bool = False  # run checks on the whole array at once (e.g. monotone), not per chunk
    optional: bool = False


@dataclass(frozen=True)
class GroupSpec:
    arrays: Mapping[str, ArraySpec]
    required_attrs: tuple[str, ...] = ()
    # cross-array checks: get (arrays, attrs) and return None or (field, problem, value)
    group_checks: tuple[Callable[[Mapping[str, Any], Mapping[str, Any]], "tuple[str, str, Any] | None"], ...] = ()

    def validate(self, artifact: str, arrays: Mapping[str, Any], attrs: Mapping[str, Any] | None = None,
                 block_rows: int = 1 << 16) -> None:
        attrs = attrs or {}
        for key in self.required_attrs:
            if key not in attrs:
                raise ArtifactValidationError(artifact, f"attrs.{key}", "required attribute is missing")
        extra = sorted(set(arrays) - set(self.arrays))
        if extra:
            raise ArtifactValidationError(artifact, extra[0], "array not in schema", extra)
        dim_sizes: dict[str, tuple[int, str]] = {}
        for name, spec in self.arrays.items():
            if name not in arrays:
                if spec.optional:
                    continue
                raise ArtifactValidationError(artifact, name, "required array is missing")
            arr = arrays[name]
            dt = np.dtype(arr.dtype)
            ok = dt.kind == spec.dtype if len(spec.dtype) == 1 else dt == np.dtype(spec.dtype)
            if not ok:
                raise ArtifactValidationError(artifact, name, f"dtype must be {spec.dtype}", str(dt))
            if len(arr.shape) != len(spec.dims):
                raise ArtifactValidationError(
                    artifact, name, f"must have {len(spec.dims)} dims {spec.dims}", tuple(arr.shape))
            for dim, size in zip(spec.dims, arr.shape):
                if dim in dim_sizes and dim_sizes[dim][0] != size:
                    other_size, other = dim_sizes[dim]
                    raise ArtifactValidationError(
                        artifact, name, f"dim {dim!r} has size {size} but {other!r} has {other_size}", size)
                dim_sizes.setdefault(dim, (size, name))
            if not spec.checks:
                continue
            if spec.whole or len(arr.shape) == 0:
                blocks = [np.asarray(arr[...])]
            else:
                n = arr.shape[0]
                row_elems = int(np.prod(arr.shape[1:])) or 1
                step = max(1, block_rows * 64 // row_elems)
                blocks = (np.asarray(arr[i:i + step]) for i in range(0, n, step))
            for block in blocks:
                for check in spec.checks:
                    res = check(block)
                    if res is not None:
                        problem, value = res
                        raise ArtifactValidationError(artifact, name, problem, value)
        for gcheck in self.group_checks:
            res = gcheck(arrays, attrs)
            if res is not None:
                fld, problem, value = res
                raise ArtifactValidationError(artifact, fld, problem, value)
