"""Errors that name what is wrong: the artifact, the field and the bad value.

`UserInputError` is the base of every error that a user's input causes (a config, a file, a device, a store path)
rather than a bug: `quanta` prints such an error as one line and exits with code 2 (`EXIT_USER_ERROR`), wherever it
is raised, before the work or inside a flow's task. Study code defines its own subclasses (CorpusError, DeviceError).
"""
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


class ArtifactCorruptError(ArtifactValidationError):
    """A stored artifact's bytes are damaged or were modified (unreadable, wrong size, wrong hash). The message names
    the artifact (kind@hash), where it is, what is wrong and the command that repairs it."""

    def __init__(self, artifact: str, field: str, problem: str, uri: str, repair: str):
        self.uri = uri
        self.repair = repair
        super().__init__(artifact, field, f"{problem} (at {uri}); {repair}")


EXIT_USER_ERROR = 2


class UserInputError(ValueError):
    """Bad input from the user (not a bug): the message is one line that names the field, file or value."""


class ConfigError(UserInputError):
    """A config (TOML file or --set override) is invalid, or the machine cannot run it; raised before anything runs."""


class StoreError(UserInputError):
    """A store path or URL that cannot be used: no store there (for a read-only command), an unknown protocol."""
