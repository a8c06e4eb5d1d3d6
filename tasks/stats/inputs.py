"""Input checks shared by every fit: 1-D positive finite arrays, equal lengths, a confidence level.

Errors are `FitError`s whose message names the array (e.g. the CSV column) and the 0-based row of the bad value.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from schemas.errors import UserInputError


class FitError(UserInputError):
    """Bad input for a fit (non-finite, non-positive, too few points) or a fit that failed."""


def check_level(level: float) -> float:
    level = float(level)
    if not (0.0 < level < 1.0):
        raise FitError(f"level must be in (0, 1); got {level}")
    return level


def as_1d(values: Any, name: str, *, positive: bool = True) -> np.ndarray:
    """Convert to a 1-D float array; reject NaN/inf (and non-positive values if ``positive``)."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise FitError(f"{name} must be numeric: {exc}") from None
    if arr.ndim > 1 and arr.size == max(arr.shape):
        arr = arr.reshape(-1)  # a column or row vector
    if arr.ndim != 1:
        raise FitError(f"{name} must be a 1-D array; got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        raise FitError(f"{name} contains non-finite value {arr[i]} at row {i}")
    if positive:
        bad = np.flatnonzero(arr <= 0)
        if bad.size:
            i = int(bad[0])
            raise FitError(f"{name} contains non-positive value {arr[i]} at row {i}")
    return arr


def same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        desc = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise FitError(f"inputs must have the same length: {desc}")
    return next(iter(lengths.values()))


def counts_array(counts: Any, name: str = "counts") -> np.ndarray:
    c = as_1d(counts, name, positive=False)
    bad = np.flatnonzero(c < 0)
    if bad.size:
        i = int(bad[0])
        raise FitError(f"{name} contains negative value {c[i]} at row {i}")
    return c
