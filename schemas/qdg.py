"""Contracts of the QDG studies (paper Section 4, second half: quanta discovery with gradients): configs and the
schemas of their artifacts.

qdg:                tokens + token losses + a model of the lm-losses suite ─► selection (Parquet) ─► gradient blocks
                    (Zarr, rows x dim, L2-normalised, optional JL projection) ─► similarity (Zarr n x n, Dask) ─► labels
                    per (k, seed) (Parquet) ─► Zipf fits ─► report
qdg-sparse-parity:  a trained sparse-parity MLP + samples of its learned subtasks ─► the same gradient, similarity and
                    clustering stages ─► adjusted Rand index against the true subtasks
"""
from __future__ import annotations

import re
from typing import Literal

import numpy as np
import pandera.pandas as pa
from pandera.typing import Series
from pydantic import Field, ValidationInfo, field_validator, model_validator

from schemas.arrays import ArraySpec, GroupSpec, finite, in_range
from schemas.config import ReportConfig as BaseReportConfig
from schemas.config import StrictModel, include_section, positive_distinct
from schemas.lm import LMConfig
from schemas.registry import register
from schemas.sparse_parity import SparseParityConfig

# parameters QDG leaves out by default: embeddings, the unembedding and layer norms (paper), by module type; see
# GradientConfig.exclude for name patterns on top of that
DEFAULT_EXCLUDED_MODULES = ("embedding", "unembedding", "layernorm")


# ----------------------------------------------------------------------------------------------- config
class SelectionConfig(StrictModel):
    """Which tokens are clustered: those a chosen model predicts well, minus induction tokens, subsampled."""

    model: str = Field("smallest", description="label of the suite model whose loss selects tokens "
                       "('smallest' = the model with the fewest non-embedding parameters; paper: pythia-70m)")
    max_loss_nats: float = Field(0.1, gt=0, description="keep tokens whose loss is below this (nats; paper: 0.1)")
    exclude_induction: bool = Field(True, description="drop tokens that complete a trigram seen earlier in their "
                                    "document (the paper's induction filter)")
    n_tokens: int = Field(1000, ge=2, description="tokens kept after a seeded subsample (paper: 10,000)")
    seed: int = Field(0, ge=0)


class GradientConfig(StrictModel):
    """Per-token gradients of the loss w.r.t. the model's parameters, flattened and L2-normalised."""

    include: list[str] = Field([], description="regexes on parameter names to keep (empty = every parameter not "
                               "excluded)")
    exclude: list[str] = Field([], description="regexes on parameter names to drop, on top of the modules in "
                               "exclude_modules")
    exclude_modules: list[Literal["embedding", "unembedding", "layernorm"]] = Field(
        list(DEFAULT_EXCLUDED_MODULES), description="parameter groups dropped by module type (paper: all three)")
    projection_dims: int | None = Field(None, description="sparse random (JL) projection to this many dims "
                                        "(None = full gradients; paper follow-ups: 5,000-30,000)")
    projection_seed: int = Field(0, ge=0)
    block_rows: int = Field(256, ge=1, description="tokens per gradient block (each block is one cached task)")
    positions_per_backward: int = Field(32, ge=1, description="target positions whose backward passes are batched "
                                        "together after one forward pass of their window")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("include", "exclude")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"not a regular expression: {pattern!r} ({e})") from None
        return v

    @field_validator("projection_dims")
    @classmethod
    def _dims(cls, v: int | None) -> int | None:
        if v is not None and v <= 0:
            raise ValueError(f"projection_dims must be a positive number of dimensions or omitted (got {v})")
        return v


class SimilarityConfig(StrictModel):
    """C = G G^T with dask.array over the gradient blocks (rows-only chunks), written to Zarr in square chunks."""

    chunk_rows: int = Field(1024, ge=1, description="rows per Dask chunk of G (and side of C's Zarr chunks)")
    dask_address: str | None = Field(None, description="an existing Dask scheduler (tcp://host:8786); None = a "
                                     "LocalCluster for this task")
    n_workers: int = Field(2, ge=1, description="LocalCluster workers")
    memory_limit: str = Field("4GB", description="LocalCluster memory limit per worker (e.g. '2GB')")


class ClusteringConfig(StrictModel):
    """Spectral clustering on the affinity A = 1 - arccos(C)/pi, for each k, seeded."""

    n_clusters: list[int] = Field([10, 20, 40], description="cluster counts k (paper figures: 400)")
    seeds: list[int] = Field([0, 1], description="clustering seeds; the first is the result, the others measure "
                             "stability (adjusted Rand index)")
    method: Literal["auto", "dense", "knn"] = Field("auto", description="dense precomputed affinity up to "
                                                    "dense_max_n rows, a sparse kNN affinity beyond (auto)")
    dense_max_n: int = Field(20000, ge=2)
    knn_neighbors: int = Field(30, ge=2, description="neighbours per row of the sparse affinity (knn method)")
    eigen_solver: Literal["arpack", "lobpcg", "amg"] = Field("arpack", description="amg needs pyamg; used for "
                                                             "large n")
    assign_labels: Literal["kmeans", "discretize", "cluster_qr"] = "kmeans"
    n_init: int = Field(10, ge=1, description="k-means restarts on the spectral embedding (paper: 30)")

    @field_validator("n_clusters")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        v = positive_distinct("n_clusters", v)
        if v[0] < 2:
            raise ValueError(f"n_clusters must be >= 2 (got {v[0]})")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v or any(s < 0 for s in v) or len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct non-negative integers, at least one (got {v})")
        return v


class ZipfConfig(StrictModel):
    """Rank-frequency analysis of cluster sizes (paper: slope -1.24 vs -(alpha_N + 1) = -1.083)."""

    rank_min: int = Field(1, ge=1, description="first rank of the OLS window")
    rank_max: int | None = Field(None, ge=2, description="last rank of the OLS window (None = the last non-empty "
                                 "cluster)")
    level: float = Field(0.95, gt=0, lt=1)
    bootstrap: int = Field(200, ge=0, description="bootstrap resamples of the MLE exponent (0 = asymptotic CI)")


class ReportConfig(BaseReportConfig):
    title: str = "Quanta discovery with gradients"
    clusters_shown: int = Field(8, ge=0, description="largest clusters shown with example contexts")
    examples_per_cluster: int = Field(6, ge=0)
    context_tokens: int = Field(24, ge=1)


class QDGConfig(StrictModel):
    """QDG on the lm-losses study's suite: `lm` is that study's config (inline, or a TOML path in `lm_config`);
    its tasks run first, so after an lm-losses run with the same settings they come back `Cached`."""

    lm: LMConfig
    selection: SelectionConfig = SelectionConfig()
    gradients: GradientConfig = GradientConfig()
    similarity: SimilarityConfig = SimilarityConfig()
    clustering: ClusteringConfig = ClusteringConfig()
    zipf: ZipfConfig = ZipfConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="before")
    @classmethod
    def _lm_config(cls, data, info: ValidationInfo):
        return include_section(data, "lm", "lm_config", (info.context or {}).get("config_dir"))

    @model_validator(mode="after")
    def _cross(self):
        if self.clustering.n_clusters[-1] >= self.selection.n_tokens:
            raise ValueError(f"clustering.n_clusters must be < selection.n_tokens (got k = "
                             f"{self.clustering.n_clusters[-1]} for {self.selection.n_tokens} tokens)")
        labels = ([s.label for s in self.lm.suite.sizes] if self.lm.suite.kind == "trained"
                  else list(self.lm.suite.models))
        if self.selection.model != "smallest" and self.selection.model not in labels:
            raise ValueError(f"selection.model {self.selection.model!r} is not a model of the suite {labels} "
                             "(or 'smallest')")
        return self


class ParityModelConfig(StrictModel):
    """Which model of the sparse-parity study QDG looks into, and how its subtasks are sampled."""

    width: int | None = Field(None, ge=1, description="hidden width (default: the widest of the grid)")
    seed: int | None = Field(None, ge=0, description="training seed (default: the grid's first)")
    learned_threshold_bits: float = Field(0.1, gt=0, description="a subtask counts as learned below this test loss")
    samples_per_subtask: int = Field(50, ge=2, description="samples drawn per learned subtask")
    include_control_weights: bool = Field(False, description="also take gradients w.r.t. the first layer's "
                                          "control-bit columns (their one-hot rows alone separate subtasks "
                                          "trivially; the analogue of the embeddings QDG excludes)")
    align_label_sign: bool = Field(False, description="multiply each sample's loss gradient by +1 (label 1) or -1 "
                                   "(label 0): a binary task's loss gradient is -(1 - p_y)(2y - 1) grad(z_1 - z_0), "
                                   "so samples of one subtask with opposite labels have anti-aligned gradients; "
                                   "aligned, they share the direction of grad(z_1 - z_0) (False = plain QDG)")
    unlearned_control: bool = Field(True, description="also cluster samples of subtasks the model has not learned "
                                    "(a control: expect a low ARI)")
    seed_samples: int = Field(0, ge=0)


class QDGSparseParityConfig(StrictModel):
    """Ground truth for QDG: the quanta of sparse parity are known (its subtasks)."""

    sparse_parity: SparseParityConfig
    model: ParityModelConfig = ParityModelConfig()
    gradients: GradientConfig = GradientConfig(exclude_modules=[])
    similarity: SimilarityConfig = SimilarityConfig()
    clustering: ClusteringConfig = ClusteringConfig(n_clusters=[2], seeds=[0, 1])
    report: ReportConfig = ReportConfig(title="QDG on multitask sparse parity (ground truth)")

    @model_validator(mode="before")
    @classmethod
    def _sparse_parity_config(cls, data, info: ValidationInfo):
        return include_section(data, "sparse_parity", "sparse_parity_config",
                               (info.context or {}).get("config_dir"))


# -------------------------------------------------------------------------------------------- artifacts
class SelectionTable(pa.DataFrameModel):
    """One row per selected token, in clustering order (`row` 0..n-1)."""

    row: Series[int] = pa.Field(ge=0, unique=True)
    token_index: Series[int] = pa.Field(ge=0, description="index into the tokens artifact's flat ids")
    doc_id: Series[int] = pa.Field(ge=0)
    position: Series[int] = pa.Field(ge=1, description="position in its document (>= 1: position 0 has no "
                                     "prediction)")
    target: Series[int] = pa.Field(ge=0, description="the token id being predicted")
    predicted: Series[int] = pa.Field(ge=0, description="the selection model's argmax prediction")
    loss: Series[float] = pa.Field(ge=0, description="loss (nats) under the selection model")

    class Config:
        strict = True


SELECTION = register("qdg.selection", "parquet", 1, SelectionTable, "tokens selected for QDG, in clustering order")


def _unit_rows(arrays, attrs):
    g = arrays["g"]
    step = max(1, (1 << 24) // max(1, g.shape[1] if len(g.shape) == 2 else 1))
    for i in range(0, g.shape[0], step):
        block = np.asarray(g[i:i + step], dtype=np.float64)
        norms = np.sqrt((block ** 2).sum(axis=1))
        bad = np.flatnonzero(np.abs(norms - 1.0) > 1e-3)
        if bad.size:
            return "g", f"rows must be L2-normalised (row {i + int(bad[0])} has norm {norms[bad[0]]:.6g})", None
    rows = np.asarray(arrays["row"][...])
    if rows.size > 1 and (np.diff(rows) <= 0).any():
        return "row", "selection rows must be strictly increasing", rows.tolist()[:10]
    return None


GRADIENT_BLOCK = register(
    "qdg.gradient_block", "zarr", 1,
    GroupSpec(
        arrays={
            "g": ArraySpec("float32", ("row", "dim"), (finite(),)),
            "row": ArraySpec("int64", ("row",), (in_range(0),)),
            "norm": ArraySpec("float32", ("row",), (finite(), in_range(0.0))),
            "loss": ArraySpec("float32", ("row",), (finite(), in_range(0.0))),
        },
        required_attrs=("model", "dim", "projection"),
        group_checks=(_unit_rows,),
    ),
    "per-token loss gradients of a block of selected rows: L2-normalised rows, pre-normalisation norms, the loss",
)


def _square(arrays, attrs):
    c = arrays["c"]
    if len(c.shape) == 2 and c.shape[0] != c.shape[1]:
        return "c", "must be square (n x n)", tuple(c.shape)
    return None


SIMILARITY = register(
    "qdg.similarity", "zarr", 1,
    GroupSpec(
        arrays={"c": ArraySpec("float32", ("row", "col"), (finite(), in_range(-1.001, 1.001)))},
        required_attrs=("n", "dim"),
        group_checks=(_square,),
    ),
    "cosine similarity of the normalised gradients, n x n (C = G G^T)",
)


class LabelsTable(pa.DataFrameModel):
    """Cluster labels of one clustering (k clusters, one seed)."""

    row: Series[int] = pa.Field(ge=0, unique=True)
    label: Series[int] = pa.Field(ge=0)

    class Config:
        strict = True


LABELS = register("qdg.labels", "parquet", 1, LabelsTable, "cluster label of every selected row, for one (k, seed)")


PARITY_MODEL = register(
    "qdg.parity_model", "zarr", 1,
    GroupSpec(
        arrays={
            "w1": ArraySpec("float32", ("hidden", "input"), (finite(),)),
            "b1": ArraySpec("float32", ("hidden",), (finite(),)),
            "w2": ArraySpec("float32", ("out", "hidden"), (finite(),)),
            "b2": ArraySpec("float32", ("out",), (finite(),)),
            "subtask_loss_bits": ArraySpec("float32", ("task",), (finite(), in_range(0.0))),
        },
        required_attrs=("width", "seed", "n_tasks", "n_bits", "steps"),
    ),
    "one trained sparse-parity MLP (depth 1) and its final per-subtask test loss",
)

PARITY_SAMPLES = register(
    "qdg.parity_samples", "zarr", 1,
    GroupSpec(
        arrays={
            "task": ArraySpec("int64", ("row",), (in_range(0),)),
            "bits": ArraySpec("uint8", ("row", "bit"), (in_range(0, 1),)),
            "label": ArraySpec("int64", ("row",), (in_range(0, 1),)),
            "learned": ArraySpec("bool", ("row",)),
        },
        required_attrs=("n_tasks", "n_bits"),
    ),
    "samples of sparse-parity subtasks (the true quanta), in clustering order",
)

__all__ = ["QDGConfig", "QDGSparseParityConfig", "SelectionConfig", "GradientConfig", "SimilarityConfig",
           "ClusteringConfig", "ZipfConfig", "ReportConfig", "ParityModelConfig"]
