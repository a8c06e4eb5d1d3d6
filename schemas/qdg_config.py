"""Configs of the QDG studies (`qdg`, `qdg-sparse-parity`); their artifact schemas are in `schemas.qdg`, which
re-exports these names."""
from __future__ import annotations

from typing import Literal

from pydantic import ByteSize, Field, ValidationInfo, field_validator, model_validator

from schemas.config import ReportConfig as BaseReportConfig
from schemas.config import MAX_TRAINING_STEPS, StrictModel, include_section, positive_distinct
from schemas.lm import LMConfig
from schemas.qdg_transform import Affinity, Clusterer, GraphOptions, Transform, check_regexes
from schemas.sparse_parity import SparseParityConfig

# parameters QDG leaves out by default: embeddings, the unembedding and layer norms (paper), by module type; see
# GradientConfig.exclude for name patterns on top of that
DEFAULT_EXCLUDED_MODULES = ("embedding", "unembedding", "layernorm")

# What QDG clusters, per sample or token (issue: QDG you can trust). Each is written as the same validated
# `qdg.gradient_block` kind (rows x dims, optionally JL-projected, L2-normalised), so similarity, kNN and clustering
# stay one path:
# - gradient: the loss gradient w.r.t. the parameters (the paper's C)
# - abs_gradient: its element-wise absolute value (the paper code's C_abs: sign-free), taken before any projection
# - activations: the hidden (MLP) activations at the sample/token (the paper code's activation baseline)
# - logit_gradient: the gradient of the target's logit (binary: z1 - z0) w.r.t. the parameters: no label sign, no
#   (1 - p) scaling
# - attribution: per hidden unit, activation x d(target logit)/d(unit) (one number per unit and layer), APD-style
# - ablation: per hidden unit, the change in the loss when that unit is zeroed (exact for the parity MLP; for LMs
#   the first-order estimate -a * dL/da)
Representation = Literal["gradient", "abs_gradient", "activations", "logit_gradient", "attribution", "ablation"]
REPRESENTATIONS: tuple[str, ...] = ("gradient", "abs_gradient", "activations", "logit_gradient", "attribution",
                                    "ablation")
# the representations that live in parameter space (the benchmark's goal is stated for these)
PARAMETER_SPACE_REPRESENTATIONS: tuple[str, ...] = ("gradient", "abs_gradient", "logit_gradient", "attribution",
                                                    "ablation")


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
        return check_regexes(v)

    @field_validator("projection_dims")
    @classmethod
    def _dims(cls, v: int | None) -> int | None:
        if v is not None and v <= 0:
            raise ValueError(f"projection_dims must be a positive number of dimensions or omitted (got {v})")
        return v


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
    memory_limit: ByteSize = Field(ByteSize(4 * 10**9), description="LocalCluster memory limit per worker: bytes, "
                                   "or a size such as '2GB' or '512MiB' (GB = 10^9 bytes, GiB = 2^30, as Dask reads "
                                   "them); Dask pauses a worker at 80% of it and restarts it at 95%")

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, v: ByteSize) -> ByteSize:
        if v <= 0:
            raise ValueError(f"memory_limit must be positive (got {int(v)} bytes)")
        return v


class SpectralOptions(StrictModel):
    """The settings one spectral clustering task depends on (so that changing the list of cluster counts or seeds
    leaves the existing (k, seed) tasks `Cached`). `ClusteringConfig` is these plus the study's k, seeds and
    method; `ClusteringConfig.spectral()` hands a task only these."""

    eigen_solver: Literal["auto", "arpack", "lobpcg", "amg", "randomized"] = Field(
        "auto", description="auto: randomized (scikit-learn's randomized_svd) on the dense affinity, amg (pyamg) on "
        "the kNN affinity; arpack = scikit-learn's exact default")
    assign_labels: Literal["kmeans", "discretize", "cluster_qr"] = Field(
        "cluster_qr", description="labels from the spectral embedding: cluster_qr (deterministic; ~300x faster than "
        "k-means with 10 restarts at 10,000 tokens and k = 400, as accurate on planted clusters) or kmeans (the "
        "paper's, with n_init restarts; then seeds also vary k-means)")
    n_init: int = Field(10, ge=1, description="k-means restarts on the spectral embedding (paper: 30)")


# bytes per entry of a dense clustering of n rows (n^2 entries): C, the affinity and scikit-learn's working copies
DENSE_BYTES_PER_ENTRY = 28


class ClusteringConfig(SpectralOptions, GraphOptions):
    """Spectral clustering on the affinity A = 1 - arccos(C)/pi, for each k, seeded (the spectral settings are
    `SpectralOptions`' fields, at the same level of the config: `clustering.eigen_solver`)."""

    n_clusters: list[int] = Field([10, 20, 40], description="cluster counts k (paper figures: 400)")
    seeds: list[int] = Field([0, 1], description="clustering seeds; the first is the result, the others measure "
                             "stability (adjusted Rand index)")
    method: Literal["auto", "dense", "knn"] = Field("auto", description="dense precomputed affinity up to "
                                                    "dense_max_n rows, a sparse kNN affinity beyond (auto)")
    dense_max_n: int = Field(12000, ge=2, description="largest n clustered densely by method='auto' (dense needs "
                             f"~{DENSE_BYTES_PER_ENTRY} n^2 bytes: 4 GB at 12,000)")
    knn_neighbors: int = Field(30, ge=2, description="neighbours per row of the sparse affinity, itself included "
                               "(knn method)")
    compare_projection_dims: int | None = Field(
        None, ge=1, description="also cluster the gradients JL-projected to this many dims (first seed, every k) and "
        "report the adjusted Rand index against the clusters of the gradients as configured (None = no comparison; "
        "it computes the gradients a second time)")

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
        """The part of this config one (k, seed) clustering task depends on."""
        return SpectralOptions(**{name: getattr(self, name) for name in SpectralOptions.model_fields})

    def graph(self) -> GraphOptions:
        """The kNN graph's weighting and Leiden's resolution."""
        return GraphOptions(**{name: getattr(self, name) for name in GraphOptions.model_fields})


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


class NullConfig(StrictModel):
    """The null beside every QDG statistic: the same pipeline on structure-free inputs (tasks/qdg/null.py)."""

    draws: int = Field(20, ge=0, le=1000, description="draws of each null kind per representation, each its own "
                       "cached task (0 = no null; a p-value below 1 - level needs >= 1/(1 - level) - 1 draws: 19 at "
                       "0.95)")
    kinds: list[Literal["gaussian", "permuted"]] = Field(
        ["gaussian", "permuted"], description="gaussian: isotropic Gaussian rows of the representation's dimension; "
        "permuted: the representation with each column permuted across rows")
    level: float = Field(0.95, gt=0, lt=1, description="the null's central range and the p-value threshold (1 - level)")
    seed: int = Field(0, ge=0, description="seed of the null draws (independent of every other seed)")
    representations: list[Representation] | None = Field(
        None, description="the representations that get a null (None = every one clustered); a representation "
        "without one has consistent = indeterminate")
    permutation_draws: int = Field(200, ge=0, le=100000, description="label permutations for the null of the ARI "
                                   "between representations")

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"null.kinds must not repeat (got {v})")
        return v


class ReportConfig(BaseReportConfig):
    title: str = "Quanta discovery with gradients"
    clusters_shown: int = Field(8, ge=0, description="largest clusters shown with example contexts")
    examples_per_cluster: int = Field(6, ge=0)
    context_tokens: int = Field(24, ge=1)
    k_shown: int | None = Field(None, ge=2, description="the cluster count whose clusters the report shows "
                                "(None = the largest of clustering.n_clusters)")
    heatmap_rows: int = Field(600, ge=10, description="rows of the sorted similarity heatmap (an evenly spaced "
                              "subset of the tokens when there are more)")


# qdg (language models): the representation its headline results (results' envelope slope, the report's first
# section) use when `primary` is not set and it is listed; change it here. `gradient` stays "the paper's method".
DEFAULT_PRIMARY_REPRESENTATION = "abs_gradient"
# qdg's representations over MLP hidden units (one number per unit and layer: never JL-projected); the others are
# over the parameters (gradient, abs_gradient, logit_gradient: `gradients.projection_dims` applies to those only)
LM_UNIT_REPRESENTATIONS: tuple[str, ...] = ("activations", "attribution", "ablation")


class QDGConfig(StrictModel):
    """QDG on the lm-losses study's suite: `lm` is that study's config (inline, or a TOML path in `lm_config`);
    its tasks run first, so after an lm-losses run with the same settings they come back `Cached`."""

    representations: list[Representation] | None = Field(
        None, description="what is clustered, each its own cached stage (see REPRESENTATIONS; None = every one that "
        "applies: all but 'ablation', which on a language model needs ablation_first_order = true)")
    primary: Representation | None = Field(
        None, description="the representation of the headline results (None = DEFAULT_PRIMARY_REPRESENTATION when "
        "listed, else the first of `representations`)")
    ablation_first_order: bool = Field(
        False, description="allow 'ablation' on a language model as the first-order estimate -a * dL/da of zeroing "
        "each MLP unit (exact ablation would take one forward pass per unit and token)")
    transform: Transform = Field(Transform(), description="applied to every parameter-space representation "
                                 "(gradient, abs_gradient, logit_gradient) before the projection: see "
                                 "schemas.qdg_transform.Transform (default: the identity)")
    lm: LMConfig
    selection: SelectionConfig = SelectionConfig()
    gradients: GradientConfig = GradientConfig()
    similarity: SimilarityConfig = SimilarityConfig()
    clustering: ClusteringConfig = ClusteringConfig()
    zipf: ZipfConfig = ZipfConfig()
    null: NullConfig = NullConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="before")
    @classmethod
    def _lm_config(cls, data, info: ValidationInfo):
        context = info.context or {}
        return include_section(data, "lm", "lm_config", context.get("config_dir"), context.get("config_path"))

    def chosen_representations(self) -> list[str]:
        """`representations`, or every one that applies (in REPRESENTATIONS order)."""
        if self.representations is not None:
            return list(self.representations)
        return [r for r in REPRESENTATIONS if r != "ablation" or self.ablation_first_order]

    def primary_representation(self) -> str:
        reps = self.chosen_representations()
        if self.primary is not None:
            return self.primary
        return DEFAULT_PRIMARY_REPRESENTATION if DEFAULT_PRIMARY_REPRESENTATION in reps else reps[0]

    def _check_representations(self) -> None:
        reps = self.chosen_representations()
        if not reps or len(set(reps)) != len(reps):
            raise ValueError(f"representations must be distinct, at least one (got {reps})")
        if "ablation" in reps and not self.ablation_first_order:
            raise ValueError("representations: 'ablation' on a language model is only the first-order estimate "
                             "-a * dL/da: set ablation_first_order = true to ask for it, or drop 'ablation'")
        if self.primary is not None and self.primary not in reps:
            raise ValueError(f"primary {self.primary!r} is not one of representations {reps}")
        primary = self.primary_representation()
        if self.clustering.compare_projection_dims is not None and primary in LM_UNIT_REPRESENTATIONS:
            raise ValueError(f"clustering.compare_projection_dims compares the primary representation with its JL "
                             f"projection, but {primary!r} is over MLP units and never projected: set primary to "
                             "a parameter-space one (gradient, abs_gradient, logit_gradient) or drop it")

    @model_validator(mode="after")
    def _cross(self):
        self._check_representations()
        if self.null.representations is not None and not set(self.null.representations) <= set(
                self.chosen_representations()):
            raise ValueError(f"null.representations {self.null.representations} must be among representations "
                             f"{self.chosen_representations()}")
        if self.report.k_shown is not None and self.report.k_shown not in self.clustering.n_clusters:
            raise ValueError(f"report.k_shown {self.report.k_shown} is not one of clustering.n_clusters "
                             f"{self.clustering.n_clusters}")
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
    sampling: Literal["equal", "frequency"] = Field(
        "equal", description="equal: samples_per_subtask of every learned subtask (the ARI benchmark); frequency: "
        "samples drawn from the task's own distribution restricted to the learned subtasks (subtask i with "
        "probability ~ i^-(alpha+1)) until the rarest has min_per_subtask, so cluster sizes have a known exponent")
    min_per_subtask: int = Field(10, ge=2, le=10000, description="frequency sampling: draw until the rarest learned "
                                 "subtask has this many samples")


# How the looked-into parity MLP was trained (qdg-sparse-parity's benchmark; each regime is its own cached model):
# - study: the sparse-parity study's own training (the grid's steps and weight decay)
# - long: the same from scratch with `long.steps` and `long.weight_decay` (the clean-up phase after grokking)
# - group_lasso: the study's model fine-tuned with a group-lasso penalty over hidden units (`group_lasso.*`)
# - modular: the positive control, a hand-built MLP in which each learned subtask of the study's model has its own
#   four gated hidden units (no training)
# - wide: the study's training at `wide.width` (1024: wider than the grid), from scratch
Regime = Literal["study", "long", "wide", "group_lasso", "modular"]
REGIMES: tuple[str, ...] = ("study", "long", "wide", "group_lasso", "modular")


class WideTrainingConfig(StrictModel):
    """The `wide` regime: the study's training (its steps, weight decay, batches) of a wider MLP."""

    width: int = Field(1024, ge=1, description="hidden width (need not be a width of the grid)")


class LongTrainingConfig(StrictModel):
    """The `long` regime: the study's training from scratch, longer and with more weight decay."""

    steps: int = Field(10000, ge=1, le=MAX_TRAINING_STEPS, description="training steps (the study's grid.steps in "
                       "the `study` regime; at most MAX_TRAINING_STEPS, 50 x the paper's longest training)")
    weight_decay: float = Field(0.1, ge=0, le=10, description="AdamW weight decay (at most 10, and below 1 / "
                                "sparse_parity.grid.lr: AdamW scales the weights by 1 - lr x weight_decay each step, "
                                "so at lr x weight_decay >= 1 they are wiped every step)")


class GroupLassoConfig(StrictModel):
    """The `group_lasso` regime (narrow-AI recipe): fine-tune the `start` model with cross-entropy on fresh samples
    plus lam * sum over hidden units j of sqrt(||W1[j, :]||^2 + ||W2[:, j]||^2) (incoming and outgoing weights)."""

    lam: float = Field(1e-4, le=1.0, description="penalty strength lambda (> 0; on the demo model 1e-3 already "
                       "unlearns all but 3 of its 11 subtasks; at most 1, 1,000 times that: past it the penalty alone "
                       "decides and every unit is pushed to zero)")
    steps: int = Field(2000, ge=1, le=MAX_TRAINING_STEPS, description="fine-tuning steps (at most "
                       "MAX_TRAINING_STEPS)")
    lr: float | None = Field(None, gt=0, description="AdamW learning rate (None = the "
                             "grid's lr)")
    start: Literal["study", "long"] = Field("study", description="the regime whose model is fine-tuned")

    @field_validator("lam")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("group_lasso.lam must be > 0 (a penalty of 0 is the start model itself)")
        return v


class BenchmarkConfig(StrictModel):
    """The benchmark table: ARI intervals, baselines and the per-unit specialisation measure."""

    bootstrap: int = Field(500, ge=0, description="bootstrap resamples of the samples for the ARI interval (0 = no "
                           "interval)")
    level: float = Field(0.95, gt=0, lt=1)
    seed: int = Field(0, ge=0, description="seed of the bootstrap and of the random-vector baseline")
    random_dims: int = Field(64, ge=1, description="dimension of the random-vector baseline")
    specialised_ratio: float = Field(3.0, gt=1, description="a unit is specialised when its largest mean ablation "
                                     "damage over subtasks is at least this many times its second largest")
    specialised_min_nats: float = Field(0.01, gt=0, description="units whose largest mean ablation damage is below "
                                        "this (nats) do not matter and are not counted")
    training_seeds: list[int] | None = Field(
        None, description="train every trained regime once per seed (same recipe, own init, batches and samples): "
        "the table's `mean` rows give the mean ARI over them with a t-interval (None = model.seed alone)")
    purity_neighbors: int = Field(15, ge=1, description="the k of the k-NN purity: the fraction of a sample's k "
                                  "nearest neighbours (cosine, itself excluded) that share its subtask")

    @field_validator("training_seeds")
    @classmethod
    def _training_seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(s < 0 for s in v) or len(set(v)) != len(v)):
            raise ValueError(f"training_seeds must be distinct non-negative integers, at least one (got {v})")
        return v


class QDGSparseParityConfig(StrictModel):
    """Ground truth for QDG: the quanta of sparse parity are known (its subtasks)."""

    representations: list[Representation] = Field(
        list(REPRESENTATIONS), description="what is clustered, each its own cached stage (see Representation); "
        "default: all")
    regimes: list[Regime] = Field(["study", "modular"], description="how the looked-into model was trained, each its "
                                  "own cached model (see Regime); the first is the headline")
    transforms: list[Transform] = Field(
        [Transform()], description="transforms of the parameter-space representations, each with its own cached "
        "blocks (the unit representations are clustered as they are)")
    affinities: list[Affinity] = Field(["dense"], description="dense angular affinity and/or the kNN graph "
                                       "(clustering.knn_neighbors, clustering.knn_weighting), each clustered")
    clusterers: list[Clusterer] = Field(["spectral"], description="spectral at k = the number of subtasks, and/or "
                                        "Leiden on the kNN graph (no k)")
    long: LongTrainingConfig = LongTrainingConfig()
    wide: WideTrainingConfig = WideTrainingConfig()
    group_lasso: GroupLassoConfig = GroupLassoConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()

    sparse_parity: SparseParityConfig
    model: ParityModelConfig = ParityModelConfig()
    gradients: GradientConfig = GradientConfig(exclude_modules=[])
    similarity: SimilarityConfig = SimilarityConfig()
    clustering: ClusteringConfig = Field(
        ClusteringConfig(n_clusters=[2], seeds=[0, 1]),
        description="n_clusters: cluster counts besides the true one (the number of sampled subtasks, always "
        "clustered); the default 2 shows whether the gradients split by the label instead")
    compare_label_sign: bool = Field(True, description="also cluster with model.align_label_sign flipped (plain vs "
                                     "sign-aligned gradients side by side)")
    compare_control_weights: bool = Field(True, description="also cluster with model.include_control_weights "
                                          "flipped (with vs without the first layer's control-bit weights)")
    report: ReportConfig = ReportConfig(title="QDG on multitask sparse parity (ground truth)")

    @model_validator(mode="before")
    @classmethod
    def _sparse_parity_config(cls, data, info: ValidationInfo):
        context = info.context or {}
        return include_section(data, "sparse_parity", "sparse_parity_config", context.get("config_dir"),
                               context.get("config_path"))

    @field_validator("representations", "regimes", "affinities", "clusterers")
    @classmethod
    def _distinct(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"{info.field_name} must be a non-empty list without repeats")
        return v

    @model_validator(mode="after")
    def _regimes(self):
        if self.regimes[0] == "modular":
            raise ValueError("regimes: the first regime is the headline and must be a trained model, not 'modular'")
        lr = self.sparse_parity.grid.lr
        trains_long = "long" in self.regimes or ("group_lasso" in self.regimes and self.group_lasso.start == "long")
        if trains_long and self.long.weight_decay * lr >= 1:
            raise ValueError(f"long.weight_decay must be below 1 / sparse_parity.grid.lr = {1 / lr:g} (got "
                             f"{self.long.weight_decay:g}: AdamW would wipe the weights every step)")
        labels = [t.label() for t in self.transforms]
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(f"transforms must be a non-empty list without repeats (got {labels})")
        if "leiden" in self.clusterers and "knn" not in self.affinities:
            raise ValueError("clusterers: 'leiden' partitions the kNN graph: add 'knn' to affinities")
        return self
