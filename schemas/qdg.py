"""Contracts of the QDG studies (paper Section 4, second half: quanta discovery with gradients): configs and the
schemas of their artifacts.

qdg:                tokens + token losses + a model of the lm-losses suite ─► selection (Parquet) ─► gradient blocks
                    (Zarr, rows x dim, L2-normalised, optional JL projection) ─► similarity (Zarr n x n, Dask) ─► labels
                    per (k, seed) (Parquet) ─► Zipf fits ─► report
qdg-sparse-parity:  a trained sparse-parity MLP + samples of its learned subtasks ─► the same gradient, similarity and
                    clustering stages ─► adjusted Rand index against the true subtasks

The configs live in `schemas.qdg_config` and are re-exported here.
"""
from __future__ import annotations

import numpy as np
import pandera.pandas as pa
from pandera.typing import Series

from schemas.arrays import ArraySpec, GroupSpec, finite, in_range
from schemas.registry import register
from schemas.qdg_config import (DEFAULT_EXCLUDED_MODULES, PARAMETER_SPACE_REPRESENTATIONS,  # noqa: F401
                                 REGIMES, REPRESENTATIONS, BenchmarkConfig, ClusteringConfig, GradientConfig,
                                 GroupLassoConfig, LongTrainingConfig, NullConfig, ParityModelConfig, QDGConfig,
                                 QDGSparseParityConfig, Regime, ReportConfig, Representation, SelectionConfig,
                                 SimilarityConfig, SpectralOptions, ZipfConfig)
from schemas.tables import StrictTable


# -------------------------------------------------------------------------------------------- artifacts
class SelectionTable(StrictTable):
    """One row per selected token, in clustering order (`row` 0..n-1)."""

    row: Series[int] = pa.Field(ge=0, unique=True)
    token_index: Series[int] = pa.Field(ge=0, description="index into the tokens artifact's flat ids")
    doc_id: Series[int] = pa.Field(ge=0)
    position: Series[int] = pa.Field(ge=1, description="position in its document (>= 1: position 0 has no "
                                     "prediction)")
    target: Series[int] = pa.Field(ge=0, description="the token id being predicted")
    predicted: Series[int] = pa.Field(ge=0, description="the selection model's argmax prediction")
    loss: Series[float] = pa.Field(ge=0, description="loss (nats) under the selection model")


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


class LabelsTable(StrictTable):
    """Cluster labels of one clustering (k clusters, one seed); label 0 is the largest cluster, 1 the next, ..."""

    row: Series[int] = pa.Field(ge=0, unique=True)
    label: Series[int] = pa.Field(ge=0)
    k: Series[int] = pa.Field(ge=2, description="number of clusters asked for (constant)")
    seed: Series[int] = pa.Field(ge=0, description="clustering seed (constant)")

    @pa.dataframe_check(error="label must be < k, and k and seed constant")
    def _consistent(cls, df) -> bool:
        return bool((df["label"] < df["k"]).all() and df["k"].nunique() <= 1 and df["seed"].nunique() <= 1)


LABELS = register("qdg.labels", "parquet", 1, LabelsTable, "cluster label of every selected row, for one (k, seed)")


class StabilityTable(StrictTable):
    """Adjusted Rand index between the clusterings of two seeds, for each k."""

    k: Series[int] = pa.Field(ge=2)
    seed_a: Series[int] = pa.Field(ge=0)
    seed_b: Series[int] = pa.Field(ge=0)
    ari: Series[float] = pa.Field(ge=-1.0, le=1.0)
    n_tokens: Series[int] = pa.Field(ge=2)


STABILITY = register("qdg.stability", "parquet", 1, StabilityTable, "ARI between clustering seeds, per k")


class ProjectionAgreementTable(StrictTable):
    """Clusters of JL-projected gradients against those of the gradients as configured, per k (same seed)."""

    k: Series[int] = pa.Field(ge=2)
    seed: Series[int] = pa.Field(ge=0)
    projection_dims: Series[int] = pa.Field(ge=1)
    ari: Series[float] = pa.Field(ge=-1.0, le=1.0)
    n_tokens: Series[int] = pa.Field(ge=2)


PROJECTION_ARI = register("qdg.projection_ari", "parquet", 1, ProjectionAgreementTable,
                          "ARI between the clusters of projected and of full gradients, per k")


class ZipfTable(StrictTable):
    """Rank-frequency fits of cluster sizes: one row per k (scope 'k'), one for the envelope over k (scope
    'envelope', k = 0: the paper's statistic) and, when computed, the calibrated headline (scope 'headline'). NaN = not measurable (too few clusters, no alpha_N); see `note`."""

    scope: Series[str] = pa.Field(isin=["k", "envelope", "headline"], description="headline: the calibrated "
                                  "estimator (tasks.qdg.size_exponent), slope = -exponent")
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


ZIPF = register("qdg.zipf", "parquet", 1, ZipfTable, "Zipf fits of cluster sizes per k and of their envelope, "
                "against -(alpha_N + 1)")


class SizeExponentTable(StrictTable):
    """The headline size exponent e (cluster sizes ∝ rank^-e) of one affinity, from the calibrated estimator
    (tasks.qdg.size_exponent): one row. NaN = not measurable (see `note`); an interval end may be ±inf (the
    observed statistic beyond the simulated range)."""

    estimator: Series[str] = pa.Field(description="the estimator's name (merged_finite_zipf)")
    exponent: Series[float] = pa.Field(nullable=True)
    ci_lo: Series[float] = pa.Field(nullable=True)
    ci_hi: Series[float] = pa.Field(nullable=True)
    level: Series[float] = pa.Field(gt=0, lt=1)
    n_tokens: Series[int] = pa.Field(ge=2)
    k_over: Series[int] = pa.Field(ge=0, description="the over-clustering's k (the largest of the k list)")
    k_chosen: Series[int] = pa.Field(ge=0, description="clusters after merging: the k the data chose")
    n_ranks: Series[int] = pa.Field(ge=0, description="ranks in the fit (clusters of >= min_size rows)")
    min_size: Series[int] = pa.Field(ge=0)
    n_sim: Series[int] = pa.Field(ge=0)
    note: Series[str]

    @pa.dataframe_check(error="ci_lo <= exponent <= ci_hi where they are set")
    def _ordered(cls, df) -> bool:
        ok = df["exponent"].notna() & df["ci_lo"].notna() & df["ci_hi"].notna()
        d = df[ok]
        return bool(((d["ci_lo"] <= d["exponent"]) & (d["exponent"] <= d["ci_hi"])).all())


SIZE_EXPONENT = register("qdg.size_exponent", "parquet", 1, SizeExponentTable,
                         "the calibrated size exponent of the clusters of one affinity, with its interval")


class GroundTruthTable(StrictTable):
    """QDG against the known quanta of sparse parity: one row per clustering (variant, samples, k, seed)."""

    variant: Series[str] = pa.Field(isin=["plain", "aligned", "plain+control-weights", "aligned+control-weights"],
                                    description="plain loss gradients, or multiplied by 2 label - 1; "
                                    "+control-weights: with the first layer's control-bit weights")
    samples: Series[str] = pa.Field(isin=["learned", "control"], description="samples of learned subtasks, or of "
                                    "as many unlearned ones")
    k: Series[int] = pa.Field(ge=2)
    seed: Series[int] = pa.Field(ge=0)
    n_samples: Series[int] = pa.Field(ge=2)
    n_subtasks: Series[int] = pa.Field(ge=2)
    ari_subtask: Series[float] = pa.Field(ge=-1.0, le=1.0, description="adjusted Rand index against the true "
                                          "subtask of each sample")
    ari_label: Series[float] = pa.Field(ge=-1.0, le=1.0, description="adjusted Rand index against the sample's "
                                        "label (0/1)")


GROUND_TRUTH = register("qdg.ground_truth", "parquet", 1, GroundTruthTable,
                        "clusters of sparse-parity gradients against the true subtasks (and the labels)")


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

class ParityBenchmarkTable(StrictTable):
    """The known-quanta benchmark (qdg-sparse-parity): one row per (regime, training seed, representation or
    baseline, transform, affinity, clusterer), and per training-seed group a `mean` row; see tasks.qdg.benchmark for
    each column's definition."""

    regime: Series[str] = pa.Field(isin=list(REGIMES))
    training_seed: Series[int] = pa.Field(ge=-1, description="the model's training seed (-1: a mean row)")
    representation: Series[str] = pa.Field(isin=[*REPRESENTATIONS, "control_bits", "task_bits", "random"])
    transform: Series[str] = pa.Field(description="Transform.label() ('none' = the representation itself)")
    affinity: Series[str] = pa.Field(isin=["dense", "knn"])
    clusterer: Series[str] = pa.Field(isin=["spectral", "leiden"])
    kind: Series[str] = pa.Field(isin=["representation", "baseline", "mean"])
    k: Series[int] = pa.Field(ge=1, description="clusters: the sampled subtasks (spectral) or found (leiden)")
    n_samples: Series[int] = pa.Field(ge=2)
    n_subtasks: Series[int] = pa.Field(ge=2)
    ari: Series[float] = pa.Field(ge=-1.0, le=1.0, description="ARI against the true subtasks (mean: over models)")
    ari_lo: Series[float] = pa.Field(nullable=True, description="bootstrap over samples (one model) or t-interval "
                                     "over training seeds (mean)")
    ari_hi: Series[float] = pa.Field(nullable=True)
    ari_min: Series[float] = pa.Field(ge=-1.0, le=1.0, description="the smallest ARI over the models")
    n_models: Series[int] = pa.Field(ge=1)
    label_ari: Series[float] = pa.Field(ge=-1.0, le=1.0)
    control_ari: Series[float] = pa.Field(ge=-1.0, le=1.0, nullable=True, description="on unlearned subtasks")
    purity_mean: Series[float] = pa.Field(ge=0.0, le=1.0)
    purity_min: Series[float] = pa.Field(ge=0.0, le=1.0)
    knn_purity: Series[float] = pa.Field(ge=0.0, le=1.0, description="fraction of each sample's nearest "
                                         "neighbours (benchmark.purity_neighbors) in its own subtask, mean")
    specialised: Series[float] = pa.Field(ge=0.0, le=1.0, nullable=True, description="fraction of used units "
                                          "whose ablation hurts one subtask far more than the others")
    units_used: Series[int] = pa.Field(ge=0)

    @pa.dataframe_check(error="ari_lo <= ari_hi where the interval is set")
    def _interval(cls, df) -> bool:
        both = df["ari_lo"].notna() & df["ari_hi"].notna()
        return bool((df.loc[both, "ari_lo"] <= df.loc[both, "ari_hi"]).all())


# ------------------------------------------------------------------------- qdg: representations over MLP units
def _unit_checks(arrays, attrs):
    n, width = arrays["a"].shape
    for name in ("dlogit", "dloss"):
        if tuple(arrays[name].shape) != (n, width):
            return name, f"must have the shape of a ({n} x {width})", tuple(arrays[name].shape)
    for name in ("row", "loss"):
        if tuple(arrays[name].shape) != (n,):
            return name, f"must have one entry per row of a ({n})", tuple(arrays[name].shape)
    if sum(int(w) for w in attrs["widths"]) != width:
        return "a", f"must have sum(widths) = {sum(int(w) for w in attrs['widths'])} columns", width
    rows = np.asarray(arrays["row"][...])
    if rows.size > 1 and (np.diff(rows) <= 0).any():
        return "row", "selection rows must be strictly increasing", rows.tolist()[:10]
    return None


UNIT_BLOCK = register(
    "qdg.unit_block", "zarr", 1,
    GroupSpec(
        arrays={
            "a": ArraySpec("float32", ("row", "unit"), (finite(),)),
            "dlogit": ArraySpec("float32", ("row", "unit"), (finite(),)),
            "dloss": ArraySpec("float32", ("row", "unit"), (finite(),)),
            "row": ArraySpec("int64", ("row",), (in_range(0),)),
            "loss": ArraySpec("float32", ("row",), (finite(), in_range(0.0))),
        },
        required_attrs=("model", "layers", "widths", "context_length"),
        group_checks=(_unit_checks,),
    ),
    "per token of a block of selected rows, every MLP hidden unit of every layer (after the activation function, "
    "at the position that predicts the token): its activation a, d(target logit)/da and d(loss)/da",
)


class RepresentationAgreementTable(StrictTable):
    """Adjusted Rand index between the clusterings of two representations of the same tokens, per k (first seed)."""

    k: Series[int] = pa.Field(ge=2)
    seed: Series[int] = pa.Field(ge=0)
    a: Series[str] = pa.Field(isin=list(REPRESENTATIONS))
    b: Series[str] = pa.Field(isin=list(REPRESENTATIONS))
    ari: Series[float] = pa.Field(ge=-1.0, le=1.0)
    n_tokens: Series[int] = pa.Field(ge=2)

    @pa.dataframe_check(error="a pair of two different representations, each pair and k once")
    def _pairs(cls, df) -> bool:
        return bool((df["a"] != df["b"]).all() and not df.duplicated(["k", "seed", "a", "b"]).any())


PARITY_BENCHMARK = register("qdg.parity_benchmark", "parquet", 2, ParityBenchmarkTable,
                            "representation x training regime -> ARI against the true subtasks, with intervals, "
                            "baselines and per-unit specialisation")


REPRESENTATION_ARI = register("qdg.representation_ari", "parquet", 1, RepresentationAgreementTable,
                              "ARI between the clusterings of two representations, per k")

class NullDrawTable(StrictTable):
    """One draw of a QDG null: each statistic the pipeline computes, on structure-free rows (tasks/qdg/null.py)."""

    statistic: Series[str] = pa.Field(unique=True, description="envelope_slope, slope_k{k}, exponent_mle_k{k}, "
                                      "stability_k{k}")
    value: Series[float] = pa.Field(nullable=True, description="NaN: not measurable on this draw")


NULL_DRAW = register("qdg.null_draw", "parquet", 1, NullDrawTable, "the QDG statistics of one draw of a null")


class NullTable(StrictTable):
    """Every measured QDG statistic beside its null: mean and central range of the draws, empirical p-value."""

    representation: Series[str] = pa.Field(description="a representation, or 'a vs b' for an agreement")
    null: Series[str] = pa.Field(isin=["gaussian", "permuted", "permutation"])
    statistic: Series[str]
    measured: Series[float] = pa.Field(nullable=True)
    null_mean: Series[float] = pa.Field(nullable=True)
    null_lo: Series[float] = pa.Field(nullable=True)
    null_hi: Series[float] = pa.Field(nullable=True)
    p: Series[float] = pa.Field(nullable=True, ge=0, le=1, description="two-sided empirical p-value")
    distinguishable: Series[str] = pa.Field(isin=["yes", "no", "n/a"])
    draws: Series[int] = pa.Field(ge=0)


class FrequencyTable(StrictTable):
    """Size exponents of one frequency-sampled qdg-sparse-parity run against the known one (tasks/qdg/frequency.py)."""

    regime: Series[str]
    representation: Series[str]
    estimator: Series[str] = pa.Field(isin=["merged_finite_zipf", "rank_slope", "powerlaw_mle", "true_labels"])
    measured: Series[float] = pa.Field(nullable=True)
    ci_lo: Series[float] = pa.Field(nullable=True)
    ci_hi: Series[float] = pa.Field(nullable=True)
    k: Series[int] = pa.Field(ge=0)
    note: Series[str]
    true_exponent: Series[float] = pa.Field(gt=0)
    covers: Series[bool]
    n: Series[int] = pa.Field(ge=2)
    level: Series[float] = pa.Field(gt=0, lt=1)


FREQUENCY = register("qdg.frequency", "parquet", 1, FrequencyTable,
                     "size exponents of frequency-sampled subtasks against the true one")


NULL = register("qdg.null", "parquet", 1, NullTable, "measured QDG statistics beside their nulls")

__all__ = ["QDGConfig", "QDGSparseParityConfig", "SelectionConfig", "GradientConfig", "SimilarityConfig",
           "ClusteringConfig", "SpectralOptions", "ZipfConfig", "ReportConfig", "ParityModelConfig"]
