"""Which causal LM a task reads: one value, `ModelSource`, that is either a trained suite's `lm.model` artifact or a
pretrained model (a hub name or a local directory, at a revision, with the content fingerprint that keys the cache),
and how every task loads one (`load_causal_lm`: transformers `from_pretrained`, safetensors only, no remote code).

It travels as one task input from the flows to token losses, token selection, gradients and unit values, so no call
site passes four loose values (`model`, `model_name`, `revision`, `fingerprint`) that must agree.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from storage import ArtifactRef, Store
from storage.fingerprint import dir_fingerprint


def quiet_transformers() -> None:
    """No progress bars from transformers' weight loading/saving in task logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


CHECKPOINTS_DIR = "checkpoints"  # inside a trained lm.model: checkpoints/step<N>/, each a save_pretrained dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_causal_lm(name_or_path: str | Path, revision: str | None = None, dtype: str = "float32",
                   device: str | torch.device = "cpu"):
    """A causal LM by hub name (e.g. EleutherAI/pythia-70m, revision step143000) or local directory, in eval
    mode on `device`. Safetensors weights only and `trust_remote_code=False`: loading never runs foreign code."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(
        str(name_or_path), revision=revision, use_safetensors=True, trust_remote_code=False,
        dtype=DTYPES[dtype])
    return model.to(device).eval()


def model_meta(path: str | os.PathLike) -> dict:
    """The quanta_model.json a trained suite model carries (its size's name, parameter counts, loss curve)."""
    f = Path(path) / "quanta_model.json"
    return json.loads(f.read_text()) if f.exists() else {}


def model_fingerprint(name_or_path: str, revision: str | None) -> str:
    """What identifies a pretrained model (or its tokenizer) for caching: for a local directory, the content
    fingerprint of its files (storage.fingerprint: sizes, mtimes, hashes of the small ones); for a hub model,
    name@revision (a hub revision such as step143000 names immutable files)."""
    p = Path(os.path.expanduser(name_or_path))
    if p.is_dir():
        return f"dir:{dir_fingerprint(p)}"
    return f"hub:{name_or_path}@{revision or 'main'}"


class ModelSource(BaseModel):
    """A trained `lm.model` artifact (`ref`, optionally at a checkpoint `revision` it saved while training:
    `checkpoints/<revision>/` inside it) or a pretrained model (`name` at `revision`, keyed by `fingerprint`):
    exactly one of `ref` and `name`. Build one with `ModelSource.trained(ref[, revision])` or
    `ModelSource.pretrained(name, revision)` (which fingerprints a local directory's files)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ref: ArtifactRef | None = None
    name: str | None = None
    revision: str | None = None
    fingerprint: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSource":
        if (self.ref is None) == (self.name is None):
            raise ValueError("a ModelSource is a trained lm.model ref or a pretrained name: give exactly one")
        if self.ref is not None and self.fingerprint is not None:
            raise ValueError("a trained ModelSource is its lm.model ref (and a checkpoint revision), no fingerprint")
        if self.name is not None and not self.fingerprint:
            raise ValueError(f"the pretrained ModelSource {self.name!r} needs its fingerprint "
                             "(use ModelSource.pretrained)")
        return self

    @classmethod
    def trained(cls, ref: ArtifactRef, revision: str | None = None) -> "ModelSource":
        return cls(ref=ref, revision=revision)

    @classmethod
    def pretrained(cls, name: str, revision: str | None = None) -> "ModelSource":
        return cls(name=name, revision=revision, fingerprint=model_fingerprint(name, revision))

    @property
    def inputs(self) -> list[ArtifactRef]:
        """The store artifacts this model is (lineage inputs of what it computes)."""
        return [self.ref] if self.ref is not None else []

    @property
    def identity(self) -> str:
        """The model's content: the lm.model's content hash, or the pretrained model's fingerprint."""
        if self.ref is not None:
            return self.ref.content_hash + (f"@{self.revision}" if self.revision else "")
        return str(self.fingerprint)

    def params(self) -> dict:
        """How the model is named in an artifact's recorded parameters."""
        return {"model_name": self.name, "revision": self.revision, "fingerprint": self.fingerprint}

    def load(self, st: Store, dtype: str, device: str | torch.device):
        """(model in eval mode on `device`, its label): a trained model's label is the suite size it was trained as
        (its metadata's name), a pretrained model's its name."""
        if self.ref is not None:
            path = st.local_dir(self.ref)
            label = model_meta(path).get("name", self.ref.short)
            if self.revision is not None:
                ckpt = path / CHECKPOINTS_DIR / self.revision
                if not ckpt.is_dir():
                    raise ValueError(f"model {label} has no checkpoint {self.revision!r} (it saved "
                                     f"{sorted(p.name for p in (path / CHECKPOINTS_DIR).glob('*'))})")
                return load_causal_lm(ckpt, dtype=dtype, device=device), f"{label}@{self.revision}"
            return load_causal_lm(path, dtype=dtype, device=device), label
        return load_causal_lm(self.name, revision=self.revision, dtype=dtype, device=device), self.name
