"""Registry of artifact kinds -> schema (a pandera DataFrameModel for tables, a GroupSpec for Zarr groups).

Each kind has a `version`; bumping it changes every ref's `schema_version`, hence every downstream cache key.
"""
from __future__ import annotations

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


def get_schema(kind: str) -> ArtifactSchema:
    # make sure the study schema modules have registered their kinds
    import schemas.catalog  # noqa: F401

    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown artifact kind {kind!r}; known: {sorted(_REGISTRY)}") from None


def registered_kinds() -> list[str]:
    import schemas.catalog  # noqa: F401

    return sorted(_REGISTRY)
