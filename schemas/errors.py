"""Errors that name what is wrong: the artifact, the field and the bad value."""
from __future__ import annotations

from typing import Any


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ArtifactValidationError(ValueError):
    """An artifact violates its schema (on write or on read)."""

    def __init__(self, artifact: str, field: str, problem: str, value: Any = None):
        self.artifact = artifact
        self.field = field
        self.problem = problem
        self.value = value
        msg = f"artifact {artifact!r}: field {field!r}: {problem}"
        if value is not None:
            msg += f" (bad value: {_short(value)})"
        super().__init__(msg)


class ConfigError(ValueError):
    """A config (TOML file or --set override) is invalid; raised before anything runs."""
