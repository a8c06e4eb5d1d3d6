"""Registry of artifact kinds -> schema (a pandera DataFrameModel for tables, a GroupSpec for Zarr groups).

A kind is named `<module>.<name>` (or just `<module>`) and is registered by `schemas/<module>.py`, which
`get_schema` imports on first use: the store finds any kind's schema without a central list of studies.
Each kind has a `version`; bumping it changes every ref's `schema_version`, hence every downstream cache key.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Literal

from schemas.arrays import GroupSpec


@dataclass(frozen=True)
class ArtifactSchema:
    kind: str
    format: Literal["parquet", "zarr", "json", "dir"]
    version: int
    schema: Any = None  # pandera DataFrameModel class (parquet), GroupSpec (zarr), pydantic model (json), None
    description: str = ""


_REGISTRY: dict[str, ArtifactSchema] = {}


def register(kind: str, format: str, version: int, schema: Any = None, description: str = "") -> ArtifactSchema:
    if format == "zarr" and not isinstance(schema, GroupSpec):
        raise TypeError(f"zarr artifact kind {kind!r} needs a GroupSpec schema")
    entry = ArtifactSchema(kind=kind, format=format, version=version, schema=schema, description=description)
    existing = _REGISTRY.get(kind)
    if existing is not None and (existing.version, existing.format) != (version, format):
        raise ValueError(f"artifact kind {kind!r} registered twice with different versions/formats")
    _REGISTRY[kind] = entry
    return entry


def schema_module(kind: str) -> str:
    """The module that registers `kind`: 'sparse_parity.curves' -> 'schemas.sparse_parity'."""
    return f"schemas.{kind.split('.', 1)[0]}"


def get_schema(kind: str) -> ArtifactSchema:
    if kind not in _REGISTRY:
        try:
            importlib.import_module(schema_module(kind))
        except ModuleNotFoundError as e:
            if e.name != schema_module(kind):
                raise
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown artifact kind {kind!r}; known: {registered_kinds()}") from None


def registered_kinds() -> list[str]:
    """Every kind of every schema module in this package."""
    import schemas

    for info in pkgutil.iter_modules(schemas.__path__):
        importlib.import_module(f"schemas.{info.name}")
    return sorted(_REGISTRY)
