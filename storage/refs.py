"""ArtifactRef: the small, JSON-serialisable handle that tasks pass to each other instead of data."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ArtifactRef(BaseModel):
    """Points at one validated artifact in the store.

    Prefect's cache keys hash task inputs; since a ref carries the artifact's content hash and schema version,
    a changed upstream artifact (or a bumped schema) changes every downstream key, and nothing else does.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str = Field(description="artifact kind, e.g. 'sparse_parity.curves' (see schemas.registry)")
    uri: str = Field(description="location under the store root (local path or fsspec URL)")
    content_hash: str = Field(description="sha256 of the artifact's content (data, not metadata)")
    schema_version: int
    inputs: tuple[str, ...] = Field((), description="content hashes of the artifacts it was computed from")

    @property
    def short(self) -> str:
        return f"{self.kind}@{self.content_hash[:12]}"
