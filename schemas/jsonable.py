"""The one JSON form of values that leave the process: lineage records, results, CLI output, Prefect artifacts.

NaN and ±inf become null (JSON has neither), numpy scalars and arrays become Python numbers and lists, pydantic
models their JSON dump, dataclasses the dict of their fields, paths strings, tuples and sets lists.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from pydantic_core import to_jsonable_python


def _fallback(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:  # 0-d tensors
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def jsonable(value: Any, exclude: set[str] | None = None) -> Any:
    """`value` as plain JSON data (dict/list/str/int/float/bool/None), NaN/inf -> None; a dataclass becomes the dict
    of its fields in declaration order, less the names in `exclude`."""
    return to_jsonable_python(value, inf_nan_mode="null", fallback=_fallback, exclude=exclude)
