"""Config of QDG's representation transforms and graph affinities (issue 23, section 4), shared by `qdg` and
`qdg-sparse-parity`: what is done to a parameter-space representation's raw rows before the JL projection and the L2
norm (`Transform`), and how its kNN graph is weighted and clustered without k (`GraphOptions`). The math is in
tasks/qdg/transforms.py and tasks/qdg/communities.py."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from schemas.config import StrictModel

# how a parameter-space row is cut into blocks for `Transform.normalise`: each parameter tensor (e.g. "0.weight"), or
# each module (the parameters sharing a name up to the last dot: "0.weight" and "0.bias" are module "0")
BlockUnit = Literal["none", "tensor", "module"]
# the affinity a clustering reads: the dense angular A = 1 - arccos(C)/pi of every pair, or the symmetrised
# (union) k-nearest-neighbour graph
Affinity = Literal["dense", "knn"]
# how a sample set is partitioned: spectral clustering at a given k, or Leiden community detection on the kNN graph
# (no k: the number of communities is found)
Clusterer = Literal["spectral", "leiden"]


def check_regexes(patterns: list[str]) -> list[str]:
    """Validator body: every entry compiles as a regular expression (the message names the bad one)."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"not a regular expression: {pattern!r} ({e})") from None
    return patterns


class Transform(StrictModel):
    """A transform of a parameter-space representation's raw rows (gradient, abs_gradient, logit_gradient), applied
    in this order: `keep` (select parameter blocks), then `power` or `support` (element-wise), then `normalise`
    (each block L2-normalised); then the JL projection (if any) and the row's L2 norm. Every step is invariant to a
    positive scale of the row, so a transform of an unprojected representation can be read from its stored unit
    rows. The identity (all defaults) is the representation itself."""

    keep: list[str] = Field([], description="regexes on parameter names: keep only these parameters' blocks (empty "
                            "= all), e.g. ['0\\\\.bias'] for the first layer's biases of the parity MLP")
    power: float | None = Field(None, gt=0, description="element-wise |g|^p (sign-free; p = 1 is |g|); None = the "
                                "values as they are")
    support: bool = Field(False, description="element-wise 1 where |g| > support_threshold x the row's largest |g|, "
                          "else 0 (binary: which parameters the sample touches)")
    support_threshold: float = Field(0.0, ge=0, lt=1, description="relative threshold of `support` (0 = exactly "
                                     "nonzero, right for ReLU; a smooth activation such as GELU needs > 0)")
    normalise: BlockUnit = Field("none", description="L2-normalise each block (a parameter tensor, or a module's "
                                 "parameters) of the row before the row's own L2 norm, so that no layer's size or "
                                 "scale dominates the cosine")

    @field_validator("keep")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        return check_regexes(v)

    @model_validator(mode="after")
    def _one_elementwise(self):
        if self.power is not None and self.support:
            raise ValueError(f"power ({self.power}) and support are two element-wise transforms: ask for one")
        if self.support_threshold > 0 and not self.support:
            raise ValueError(f"support_threshold = {self.support_threshold} is set but support is false")
        return self

    def is_identity(self) -> bool:
        return not self.keep and self.power is None and not self.support and self.normalise == "none"

    def label(self) -> str:
        """A short name (tables, task run names): 'none' for the identity, e.g. 'abs^0.25+tensor-norm',
        'keep(0.bias)+support'."""
        parts = []
        if self.keep:
            parts.append("keep(" + ",".join(p.replace("\\", "") for p in self.keep) + ")")
        if self.power is not None:
            parts.append(f"abs^{self.power:g}")
        if self.support:
            parts.append("support" + (f">{self.support_threshold:g}" if self.support_threshold else ""))
        if self.normalise != "none":
            parts.append(f"{self.normalise}-norm")
        return "+".join(parts) or "none"


class GraphOptions(StrictModel):
    """The kNN graph's settings and Leiden's (one clustering task depends on these, not on the k list)."""

    knn_weighting: Literal["angular", "binary"] = Field(
        "angular", description="edge weights of the kNN graph: the angular affinity 1 - arccos(C)/pi, or 1 (0/1 "
        "graph: only who is whose neighbour)")
    leiden_resolution: float = Field(1.0, gt=0, description="resolution of Leiden's modularity (RB configuration "
                                     "model; 1 = plain modularity): higher finds more, smaller communities")
