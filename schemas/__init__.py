"""Data contracts: configs (pydantic) and artifact schemas (pandera tables, Zarr array groups).

This package imports nothing else of the project (dependency direction: schemas <- storage <- tasks <- flows).
"""
from schemas.errors import ArtifactValidationError, ConfigError
from schemas.registry import ArtifactSchema, get_schema, register, registered_kinds

__all__ = [
    "ArtifactValidationError",
    "ConfigError",
    "ArtifactSchema",
    "get_schema",
    "register",
    "registered_kinds",
]
