"""Directory artifacts (models, tokenizers, reports) of a remote store, staged on the local disk for the libraries
that read only local directories (transformers' `from_pretrained`, tokenizers).

The local copy lives at `$QUANTA_CACHE/<kind>/<content hash>` (default `~/.cache/quanta`), keyed by content hash, so it
is downloaded once per machine and shared by every store and run that names the same content. A download goes into a
temporary directory beside it, is verified against the content hash, then renamed into place: a crash or a
concurrent download never leaves a half copy that a later reader trusts.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from schemas import ArtifactValidationError
from storage.hashing import hash_dir
from storage.refs import ArtifactRef

# written into a dir artifact by Store.write_dir after its content was hashed: not part of the content hash
_NOT_HASHED = ("lineage.json",)


def cache_root() -> Path:
    """$QUANTA_CACHE, else ~/.cache/quanta."""
    return Path(os.environ.get("QUANTA_CACHE") or Path.home() / ".cache" / "quanta")


def staged_path(ref: ArtifactRef) -> Path:
    return cache_root() / ref.kind / ref.content_hash


def stage_dir(fs, remote_path: str, ref: ArtifactRef) -> Path:
    """A verified local copy of the directory artifact `ref`, whose files are at `remote_path` on the fsspec
    filesystem `fs`; downloaded only when no copy with this content hash is staged yet."""
    final = staged_path(ref)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ref.content_hash[:12]}-{uuid.uuid4().hex[:6]}-", dir=final.parent))
    try:
        local = tmp / "content"
        fs.get(remote_path.rstrip("/") + "/", str(local), recursive=True)
        for name in _NOT_HASHED:
            (local / name).unlink(missing_ok=True)
        got = hash_dir(local)
        if got != ref.content_hash:
            raise ArtifactValidationError(ref.short, "content_hash", f"the copy downloaded from {ref.uri} does not "
                                          "match the ref (artifact was modified after it was written)", got[:12])
        try:
            os.replace(local, final)
        except OSError:
            if not final.is_dir():  # another process staged the same content first: theirs is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
