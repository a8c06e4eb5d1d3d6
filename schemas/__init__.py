"""Data contracts: configs (pydantic) and artifact schemas (pandera tables, Zarr array groups).

This package imports nothing else of the project (dependency direction: schemas <- storage <- tasks <- flows).
"""
from schemas.errors import (EXIT_USER_ERROR, ArtifactCorruptError, ArtifactValidationError, ConfigError, StoreError,
                            UserInputError)
from schemas.registry import ArtifactSchema, get_schema, register, registered_kinds

__all__ = [
    "ArtifactCorruptError",
    "ArtifactValidationError",
    "ConfigError",
    "EXIT_USER_ERROR",
    "StoreError",
    "UserInputError",
    "ArtifactSchema",
    "get_schema",
    "register",
    "registered_kinds",
]
