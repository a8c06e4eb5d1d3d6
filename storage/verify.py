"""Is an artifact a ref names still sound in its store? The check a cached result must pass to be trusted."""
from __future__ import annotations

import fsspec

from storage.refs import ArtifactRef


def ref_problem(ref: ArtifactRef) -> str | None:
    """None if the artifact `ref` names is complete in its store (data and lineage record present), else what is
    wrong, e.g. 'is missing from the store'."""
    fs, path = fsspec.core.url_to_fs(ref.uri)
    root = path.rsplit("/", 2)[0]
    if not fs.exists(path):
        return f"is missing from the store ({ref.uri})"
    if not fs.exists(f"{root}/_lineage/{ref.content_hash}.json"):
        return f"has no lineage record, so its write never completed ({ref.uri})"
    return None
