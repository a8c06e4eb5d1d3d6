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


_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
               "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'4GB' -> 4e9, '512MiB' -> 2**29 (Dask's units: kB/MB/GB powers of 1000, KiB/MiB/GiB powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*", str(text))
    if m is None or m.group(2).lower() not in _BYTE_UNITS:
        raise ValueError(f"not a memory size: {text!r} (e.g. '4GB', '512MiB')")
    return int(float(m.group(1)) * _BYTE_UNITS[m.group(2).lower()])


class SimilarityConfig(StrictModel):
    """C = G G^T with dask.array over the gradient blocks (rows-only chunks), written to Zarr in square chunks.

    Also the Dask settings of the kNN affinity (clustering beyond `ClusteringConfig.dense_max_n`)."""

    chunk_rows: int = Field(2048, ge=1, description="rows per Dask chunk of G (and side of C's Zarr chunks); larger "
                            "blocks run BLAS closer to its peak, smaller ones need less worker memory")
    chunk_dim: int | None = Field(None, ge=1, description="gradient dims per Dask chunk of G (None = whole rows, "
                                  "the rows-only chunking; set it when chunk_rows full rows do not fit a worker)")
    dask_address: str | None = Field(None, description="an existing Dask scheduler (tcp://host:8786; also "
                                     "$QUANTA_DASK_ADDRESS); None = a LocalCluster for this task")
    n_workers: int = Field(2, ge=1, description="LocalCluster worker processes")
    threads_per_worker: int = Field(1, ge=1, description="LocalCluster threads per worker (each runs one block's "
                                    "single-threaded BLAS)")
    memory_limit: str = Field("4GB", description="LocalCluster memory limit per worker (e.g. '2GB'; Dask pauses a "
                              "worker at 80% of it and restarts it at 95%)")

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, v: str) -> str:
        if parse_bytes(v) <= 0:
            raise ValueError(f"memory_limit must be positive (got {v!r})")
        return v

    @property
    def memory_limit_bytes(self) -> int:
        return parse_bytes(self.memory_limit)


class SpectralOptions(StrictModel):
    """The settings one spectral clustering task depends on (so that changing the list of cluster counts or seeds
    leaves the existing (k, seed) tasks `Cached`)."""

    eigen_solver: Literal["auto", "arpack", "lobpcg", "amg", "randomized"] = "auto"
    assign_labels: Literal["kmeans", "discretize", "cluster_qr"] = "cluster_qr"
    n_init: int = Field(10, ge=1)


class ClusteringConfig(StrictModel):
    """Spectral clustering on the affinity A = 1 - arccos(C)/pi, for each k, seeded."""

    n_clusters: list[int] = Field([10, 20, 40], description="cluster counts k (paper figures: 400)")
    seeds: list[int] = Field([0, 1], description="clustering seeds; the first is the result, the others measure "
                             "stability (adjusted Rand index)")
    method: Literal["auto", "dense", "knn"] = Field("auto", description="dense precomputed affinity up to "
                                                    "dense_max_n rows, a sparse kNN affinity beyond (auto)")
    dense_max_n: int = Field(12000, ge=2, description="largest n clustered densely by method='auto' (dense needs "
                             "~28 n^2 bytes: 4 GB at 12,000)")
    knn_neighbors: int = Field(30, ge=2, description="neighbours per row of the sparse affinity, itself included "
                               "(knn method)")
    eigen_solver: Literal["auto", "arpack", "lobpcg", "amg", "randomized"] = Field(
        "auto", description="auto: randomized (scikit-learn's randomized_svd) on the dense affinity, amg (pyamg) on "
        "the kNN affinity; arpack = scikit-learn's exact default")
    assign_labels: Literal["kmeans", "discretize", "cluster_qr"] = Field(
        "cluster_qr", description="labels from the spectral embedding: cluster_qr (deterministic; ~300x faster than "
        "k-means with 10 restarts at 10,000 tokens and k = 400, as accurate on planted clusters) or kmeans (the "
        "paper's, with n_init restarts; then seeds also vary k-means)")
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

    def method_for(self, n: int) -> Literal["dense", "knn"]:
        """The path that clusters n tokens: `method`, or for 'auto' dense up to `dense_max_n`."""
        if self.method != "auto":
            return self.method
        return "dense" if n <= self.dense_max_n else "knn"

    def spectral(self) -> SpectralOptions:
        return SpectralOptions(eigen_solver=self.eigen_solver, assign_labels=self.assign_labels, n_init=self.n_init)


class ZipfConfig(StrictModel):
    """Rank-frequency analysis of cluster sizes (paper: slope -1.24 vs -(alpha_N + 1) = -1.083)."""

    rank_min: int = Field(1, ge=1, description="first rank of the OLS window")
    rank_max: int | None = Field(None, ge=2, description="last rank of the OLS window (None = the last non-empty "
                                 "cluster)")
    level: float = Field(0.95, gt=0, lt=1)
    bootstrap: int = Field(200, ge=0, description="bootstrap resamples of the MLE exponent (0 = asymptotic CI)")
    mle_xmin: int | None = Field(1, ge=1, description="smallest cluster size in the discrete power-law MLE (None = "
                                 "chosen by KS distance, as the powerlaw package does)")

    @model_validator(mode="after")
    def _window(self):
        if self.rank_max is not None and self.rank_max < self.rank_min + 2:
            raise ValueError(f"rank_max must be >= rank_min + 2 (three points for a slope; got rank_min = "
                             f"{self.rank_min}, rank_max = {self.rank_max})")
        return self


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


def _similarity_checks(arrays, attrs):
    """Square, exactly symmetric, diagonal exactly 1: read block pair by block pair (C may exceed memory)."""
    c = arrays["c"]
    if len(c.shape) != 2 or c.shape[0] != c.shape[1]:
        return "c", "must be square (n x n)", tuple(c.shape)
    if tuple(arrays["row"].shape) != (c.shape[0],):
        return "row", f"must have one entry per row of c ({c.shape[0]})", tuple(arrays["row"].shape)
    n, step = c.shape[0], int(getattr(c, "chunks", (2048,))[0])
    for i in range(0, n, step):
        diag = np.asarray(c[i:i + step, i:i + step])
        if not (np.diagonal(diag) == 1).all():
            j = int(np.flatnonzero(np.diagonal(diag) != 1)[0])
            return "c", f"diagonal must be exactly 1 (row {i + j})", float(np.diagonal(diag)[j])
        for j in range(i, n, step):
            if i == j:
                a = b = diag
            else:
                a, b = np.asarray(c[i:i + step, j:j + step]), np.asarray(c[j:j + step, i:i + step])
            if not np.array_equal(a, b.T):
                r, col = np.argwhere(a != b.T)[0]
                return "c", f"must be symmetric (c[{i + r}, {j + col}] != c[{j + col}, {i + r}])", float(a[r, col])
    return None


SIMILARITY = register(
    "qdg.similarity", "zarr", 1,
    GroupSpec(
        arrays={"c": ArraySpec("float32", ("row", "col"), (finite(), in_range(-1.0, 1.0))),
                "row": ArraySpec("int64", ("row",), (in_range(0),))},
        required_attrs=("n", "dim"),
        group_checks=(_similarity_checks,),
    ),
    "cosine similarity of the normalised gradients, n x n (C = G G^T), clipped to [-1, 1], diagonal 1; `row`: the "
    "selection row of each row/column",
)


def _knn_checks(arrays, attrs):
    import scipy.sparse as sp

    n, indptr, indices = arrays["row"].shape[0], np.asarray(arrays["indptr"][...]), np.asarray(arrays["indices"][...])
    if indptr.shape != (n + 1,) or indptr[0] != 0 or indptr[-1] != indices.shape[0] or (np.diff(indptr) < 0).any():
        return "indptr", f"must be a CSR row pointer: n + 1 = {n + 1} non-decreasing entries from 0 to nnz", None
    if indices.size and indices.max() >= n:
        return "indices", f"must be < n = {n}", int(indices.max())
    a = sp.csr_array((np.asarray(arrays["data"][...]), indices, indptr), shape=(n, n))
    if (a != a.T).nnz:
        return "data", "the affinity must be symmetric", None
    if not np.array_equal(a.diagonal(), np.ones(n, dtype=np.float32)):
        return "data", "every token must be its own neighbour with affinity 1", None
    return None


KNN_AFFINITY = register(
    "qdg.knn_affinity", "zarr", 1,
    GroupSpec(
        arrays={"indptr": ArraySpec("int64", ("ptr",), (in_range(0),)),
                "indices": ArraySpec("int64", ("nnz",), (in_range(0),)),
                "data": ArraySpec("float32", ("nnz",), (finite(), in_range(0.0, 1.0))),
                "row": ArraySpec("int64", ("row",), (in_range(0),))},
        required_attrs=("n", "dim", "neighbors"),
        group_checks=(_knn_checks,),
    ),
    "sparse k-nearest-neighbour affinity A = 1 - arccos(C)/pi (CSR, symmetrised: an edge where either token is "
    "among the other's `neighbors` nearest), never the n x n matrix",
)


class LabelsTable(pa.DataFrameModel):
    """Cluster labels of one clustering (k clusters, one seed); label 0 is the largest cluster, 1 the next, ..."""

    row: Series[int] = pa.Field(ge=0, unique=True)
    label: Series[int] = pa.Field(ge=0)
    k: Series[int] = pa.Field(ge=2, description="number of clusters asked for (constant)")
    seed: Series[int] = pa.Field(ge=0, description="clustering seed (constant)")

    @pa.dataframe_check(error="label must be < k, and k and seed constant")
    def _consistent(cls, df) -> bool:
        return bool((df["label"] < df["k"]).all() and df["k"].nunique() <= 1 and df["seed"].nunique() <= 1)

    class Config:
        strict = True


LABELS = register("qdg.labels", "parquet", 1, LabelsTable, "cluster label of every selected row, for one (k, seed)")


class StabilityTable(pa.DataFrameModel):
    """Adjusted Rand index between the clusterings of two seeds, for each k."""

    k: Series[int] = pa.Field(ge=2)
    seed_a: Series[int] = pa.Field(ge=0)
    seed_b: Series[int] = pa.Field(ge=0)
    ari: Series[float] = pa.Field(ge=-1.0, le=1.0)
    n_tokens: Series[int] = pa.Field(ge=2)

    class Config:
        strict = True


STABILITY = register("qdg.stability", "parquet", 1, StabilityTable, "ARI between clustering seeds, per k")


class ZipfTable(pa.DataFrameModel):
    """Rank-frequency fits of cluster sizes: one row per k (scope 'k') and one for the envelope over k (scope
    'envelope', k = 0). NaN = not measurable (too few clusters, no alpha_N); see `note`."""

    scope: Series[str] = pa.Field(isin=["k", "envelope"])
    k: Series[int] = pa.Field(ge=0)
    n_tokens: Series[int] = pa.Field(ge=1)
    n_nonempty: Series[int] = pa.Field(ge=0, description="non-empty clusters (envelope: its ranks)")
    rank_min: Series[int] = pa.Field(ge=1)
    rank_max: Series[int] = pa.Field(ge=0)
    slope: Series[float] = pa.Field(nullable=True, description="OLS slope of log size vs log rank")
    slope_ci_lo: Series[float] = pa.Field(nullable=True)
    slope_ci_hi: Series[float] = pa.Field(nullable=True)
    slope_r2: Series[float] = pa.Field(nullable=True)
    exponent_mle: Series[float] = pa.Field(nullable=True, description="discrete power-law MLE exponent of the "
                                           "size distribution P(size = x) ~ x^-exponent")
    exponent_mle_ci_lo: Series[float] = pa.Field(nullable=True)
    exponent_mle_ci_hi: Series[float] = pa.Field(nullable=True)
    mle_xmin: Series[float] = pa.Field(nullable=True)
    slope_from_mle: Series[float] = pa.Field(nullable=True, description="-1/(exponent_mle - 1): the rank-frequency "
                                             "slope that exponent implies")
    alpha_N: Series[float] = pa.Field(nullable=True)
    predicted_slope: Series[float] = pa.Field(nullable=True, description="-(alpha_N + 1)")
    predicted_ci_lo: Series[float] = pa.Field(nullable=True)
    predicted_ci_hi: Series[float] = pa.Field(nullable=True)
    consistent: Series[str] = pa.Field(isin=["yes", "no", "n/a"])
    level: Series[float] = pa.Field(gt=0, lt=1)
    note: Series[str]

    class Config:
        strict = True


ZIPF = register("qdg.zipf", "parquet", 1, ZipfTable, "Zipf fits of cluster sizes per k and of their envelope, "
                "against -(alpha_N + 1)")


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
           "ClusteringConfig", "SpectralOptions", "ZipfConfig", "ReportConfig", "ParityModelConfig"]
