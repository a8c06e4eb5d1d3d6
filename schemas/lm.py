"""Contracts of the lm-losses study (paper Section 4, first half): its config and the schemas of its artifacts.

Pipeline: corpus (documents + texts tables) -> tokenizer (dir) -> tokens per split (Zarr) -> model suite
(trained: dir artifacts; pretrained: by name) -> one per-token loss column per model (Zarr) -> the assembled
tokens x models loss array (Zarr) -> scaling table, fits table, per-token classes (Zarr) -> report.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import pandera.pandas as pa
from pandera.typing import Series
from pydantic import Field, field_validator, model_validator

from schemas.arrays import ArraySpec, GroupSpec, finite_or_nan, in_range, monotone_nondecreasing
from schemas.config import ReportConfig as BaseReportConfig
from schemas.config import StrictModel
from schemas.registry import register
from schemas.tables import StrictTable

# byte-level BPE starts from 256 byte symbols; the trained tokenizer adds these special tokens
SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")
MIN_VOCAB = 256 + len(SPECIAL_TOKENS) + 1


# ----------------------------------------------------------------------------------------------- config
def revision_step(revision: str) -> int | None:
    """The training step a checkpoint revision names ('step1000' -> 1000), else None."""
    return int(revision[4:]) if revision.startswith("step") and revision[4:].isdigit() else None


class CorpusConfig(StrictModel):
    """Where the documents come from.

    kind = "stdlib": the `.py` files of this Python's standard library (`sysconfig.get_paths()["stdlib"]`);
    "files": a directory (every file matching `pattern` below it) or a glob of text files, one document each;
    "jsonl": JSON-lines file(s) (a path or glob), one document per line, text in `text_field`;
    "hf": a Hugging Face `datasets` dataset: a directory saved with `save_to_disk`, local data files, or a
    hub name (needs network), text in `text_field`, split `hf_split`.
    """

    kind: Literal["stdlib", "files", "jsonl", "hf"] = "stdlib"
    path: str | None = Field(None, description="directory, glob, JSONL file, or dataset path/name (not for stdlib)")
    pattern: str | None = Field(None, description="glob below a directory (default: **/*.py for stdlib, **/* else)")
    text_field: str = Field("text", description="text field of JSONL records / dataset rows")
    hf_split: str = Field("train", description="dataset split (hf kind)")
    hf_config: str | None = Field(None, description="dataset config name (hf kind)")
    max_files: int | None = Field(200, ge=1, description="documents kept, after sorting (None = all)")
    max_chars: int | None = Field(2_000_000, ge=1, description="total characters kept (None = all)")
    max_doc_chars: int | None = Field(None, ge=1, description="each document truncated to this many characters")
    min_doc_chars: int = Field(1, ge=1, description="shorter documents are dropped")
    dedup: bool = Field(True, description="drop exact duplicate documents (same content hash)")
    eval_fraction: float = Field(0.1, gt=0, le=1, description="fraction of documents in the eval split (1 = every "
                                 "document, in the source's order: a pretrained suite only, which trains on nothing)")
    seed: int = Field(0, ge=0, description="seed of the train/eval split")

    @model_validator(mode="after")
    def _path_needed(self):
        if self.kind != "stdlib" and not self.path:
            raise ValueError(f"corpus.path is required for corpus.kind = {self.kind!r}")
        return self


class TokenizerConfig(StrictModel):
    """The byte-level BPE trained on the train split (trained suites only; a pretrained suite uses its own)."""

    vocab_size: int = Field(2048, description=f"BPE vocabulary size (>= {MIN_VOCAB})")
    min_frequency: int = Field(2, ge=1, description="merges need at least this many occurrences")

    @field_validator("vocab_size")
    @classmethod
    def _vocab(cls, v: int) -> int:
        if v < MIN_VOCAB:
            raise ValueError(f"vocab_size too small: a byte-level BPE needs >= {MIN_VOCAB} "
                             f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens + 1 merge), got {v}")
        return v


class ModelSize(StrictModel):
    """One GPT-NeoX size of a trained suite (intermediate size = 4 d_model, rotary on 25% of head dims)."""

    d_model: int = Field(ge=1)
    n_layers: int = Field(ge=1)
    n_heads: int = Field(ge=1)
    name: str | None = Field(None, description="label (default L{n_layers}-d{d_model})")

    @model_validator(mode="after")
    def _heads(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model must be divisible by n_heads (d_model={self.d_model}, n_heads={self.n_heads})")
        if self.d_model // self.n_heads < 4:
            raise ValueError(f"head dim d_model/n_heads must be >= 4 (got {self.d_model // self.n_heads})")
        return self

    @property
    def label(self) -> str:
        return self.name or f"L{self.n_layers}-d{self.d_model}"


class SuiteConfig(StrictModel):
    """The model suite. kind = "trained": GPT-NeoX `sizes` trained from scratch on the train split, all on the
    same batches in the same order; kind = "pretrained": `models` (hub names such as EleutherAI/pythia-70m, or
    local directories) loaded with transformers (safetensors only, no remote code)."""

    kind: Literal["trained", "pretrained"] = "trained"
    # pretrained
    models: list[str] = Field([], description="pretrained: hub names or local directories")
    revision: str | None = Field(None, description="pretrained: hub revision, e.g. step143000 (None = main)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype for evaluation")
    # trained
    sizes: list[ModelSize] = Field(
        default_factory=lambda: [ModelSize(d_model=32, n_layers=1, n_heads=2), ModelSize(d_model=64, n_layers=2, n_heads=4)],
        description="trained: model sizes")
    steps: int = Field(300, ge=1, description="trained: optimizer steps per model")
    batch_size: int = Field(16, ge=1, description="trained: sequences per step")
    lr: float = Field(3e-3, gt=0, description="trained: peak learning rate (AdamW, warmup then cosine)")
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = Field(0, ge=0, description="trained: init seed and data-order seed (same order for every size)")
    # training dynamics (paper Figure 11): one model's checkpoints, each scored as its own cached task
    checkpoint_steps: list[int] = Field([], description="trained: steps at which dynamics_model is saved during "
                                        "training (each < steps; the final model is the last checkpoint)")
    revisions: list[str] = Field([], description="pretrained: hub revisions of dynamics_model to score, each "
                                 "'step<N>' (Pythia: step1000 ... step143000)")
    dynamics_model: str | None = Field(None, description="the model whose checkpoints are scored: a size label "
                                       "(trained) or a name of `models` (pretrained); None = the largest / last")
    # both
    context_length: int = Field(128, description="window length for training and for per-token losses")
    eval_batch_size: int = Field(16, ge=1, description="windows per forward pass when collecting losses")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("context_length")
    @classmethod
    def _ctx(cls, v: int) -> int:
        if v < 2:
            raise ValueError(f"context_length must be >= 2 (a window needs a token and its successor), got {v}")
        return v

    @model_validator(mode="after")
    def _kind(self):
        if self.kind == "trained":
            if not self.sizes:
                raise ValueError("suite.sizes must not be empty for a trained suite")
            labels = [s.label for s in self.sizes]
            if len(set(labels)) != len(labels):
                raise ValueError(f"suite.sizes must be distinct (labels {labels})")
        else:
            if not self.models:
                raise ValueError("suite.models must not be empty for a pretrained suite")
            if len(set(self.models)) != len(self.models):
                raise ValueError("suite.models must be distinct")
        self._check_dynamics()
        return self

    def _check_dynamics(self) -> None:
        trained = self.kind == "trained"
        if trained and self.revisions:
            raise ValueError("suite.revisions are a pretrained suite's checkpoints; a trained suite saves its own: "
                             "use suite.checkpoint_steps")
        if not trained and self.checkpoint_steps:
            raise ValueError("suite.checkpoint_steps are saved while training; a pretrained suite's checkpoints are "
                             "suite.revisions")
        steps = self.checkpoint_steps
        if steps and (steps != sorted(set(steps)) or steps[0] < 1 or steps[-1] >= self.steps):
            raise ValueError(f"suite.checkpoint_steps must be increasing, distinct, >= 1 and < suite.steps = "
                             f"{self.steps} (got {steps})")
        bad = [r for r in self.revisions if revision_step(r) is None]
        if bad or len(set(self.revisions)) != len(self.revisions):
            raise ValueError(f"suite.revisions must be distinct, each 'step<N>' (got {bad or self.revisions})")
        names = [s.label for s in self.sizes] if trained else list(self.models)
        if self.dynamics_model is not None and self.dynamics_model not in names:
            raise ValueError(f"suite.dynamics_model {self.dynamics_model!r} is not a model of the suite {names}")

    def dynamics_name(self) -> str | None:
        """The model whose checkpoints are scored, or None without checkpoints."""
        if not (self.checkpoint_steps or self.revisions):
            return None
        if self.dynamics_model is not None:
            return self.dynamics_model
        return self.sizes[-1].label if self.kind == "trained" else self.models[-1]


class AnalysisConfig(StrictModel):
    """Decomposition of the per-token losses (paper: monogenic 5 / 0.3 nats; polygenic slope -0.3, R^2 0.98)."""

    mono_high: float = Field(5.0, gt=0, description="monogenic: loss above this (nats) before the drop")
    mono_low: float = Field(0.3, gt=0, description="monogenic: loss below this (nats) from the drop on")
    poly_statistic: Literal["paper", "loglog"] = Field(
        "paper", description="polygenic curve fit: paper = loss in nats regressed on ln N (the paper code's, "
        "notebooks/diverse-scaling-examples.ipynb); loglog = ln loss on ln N (a power law's straight line)")
    poly_slope: float = Field(-0.3, lt=0, description="polygenic: slope of the poly_statistic fit below this")
    poly_r2: float = Field(0.98, gt=0, le=1, description="polygenic: R^2 of the poly_statistic fit above this")
    fit_method: Literal["huber", "ols"] = Field("huber", description="alpha_N fit: huber (E + A N^-a) or log-log OLS")
    fit_offset: bool = Field(False, description="huber: fit the irreducible loss E (needs >= 4 models)")
    fit_max_params: float | None = Field(None, gt=0, description="largest non-embedding parameter count in the "
                                         "alpha_N fit (None = every model; the paper fits up to pythia-2.7b)")
    bootstrap: int = Field(200, ge=0, description="bootstrap resamples for the alpha_N CI")
    level: float = Field(0.95, gt=0, lt=1)
    seed: int = Field(0, ge=0)
    learned_bits: float = Field(0.3, gt=0, description="sharp transitions: a token counts as learned by a model "
                                "below this loss in bits (ten-million-scaling-curves.ipynb: 0.3 on curves in bits)")
    n_examples: int = Field(5, ge=0, description="examples of each class in the report")
    context_tokens: int = Field(24, ge=1, description="tokens of context shown with each example")

    @model_validator(mode="after")
    def _thresholds(self):
        if self.mono_low >= self.mono_high:
            raise ValueError(f"mono_low must be < mono_high (got {self.mono_low} >= {self.mono_high})")
        return self


class ReportConfig(BaseReportConfig):
    title: str = "LLM per-token losses and scaling decomposition"


class LMConfig(StrictModel):
    corpus: CorpusConfig = CorpusConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    suite: SuiteConfig = SuiteConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    report: ReportConfig = ReportConfig()
    max_eval_tokens: int | None = Field(None, ge=2, description="eval split cut to about this many tokens "
                                        "(whole documents; None = all)")
    max_doc_tokens: int | None = Field(None, ge=2, description="each eval document cut to its first this many "
                                       "tokens before scoring (the paper: 1024; None = every token, in windows)")

    @model_validator(mode="after")
    def _eval_everything(self):
        if self.corpus.eval_fraction >= 1 and self.suite.kind == "trained":
            raise ValueError(f"corpus.eval_fraction must be < 1 for a trained suite, which trains on the rest "
                             f"(got {self.corpus.eval_fraction})")
        return self


# -------------------------------------------------------------------------------------------- artifacts
class DocumentsTable(StrictTable):
    """One row per kept document (after de-duplication), with its split."""

    doc_id: Series[int] = pa.Field(ge=0, unique=True)
    source: Series[str] = pa.Field(description="corpus kind")
    path: Series[str] = pa.Field(description="file path, or file:line / dataset:row")
    n_chars: Series[int] = pa.Field(ge=1)
    sha256: Series[str] = pa.Field(str_length={"min_value": 64, "max_value": 64}, unique=True)
    split: Series[str] = pa.Field(isin=["train", "eval"])


DOCUMENTS = register("lm.documents", "parquet", 1, DocumentsTable, "corpus documents: id, source, path, size, hash, split")


class TextsTable(StrictTable):
    doc_id: Series[int] = pa.Field(ge=0, unique=True)
    text: Series[str] = pa.Field(nullable=False)


TEXTS = register("lm.texts", "parquet", 1, TextsTable, "document texts, by doc_id")

TOKENIZER = register("lm.tokenizer", "dir", 1, None, "a tokenizer saved with save_pretrained (tokenizer.json)")
MODEL = register("lm.model", "dir", 1, None, "a trained causal LM: config.json + model.safetensors + quanta_model.json")


def _tokens_checks(arrays, attrs):
    offsets = np.asarray(arrays["offsets"][...])
    n_docs = arrays["doc_id"].shape[0]
    if offsets.shape[0] != n_docs + 1:
        return "offsets", f"must have n_docs + 1 = {n_docs + 1} entries", int(offsets.shape[0])
    if offsets.size and int(offsets[0]) != 0:
        return "offsets", "must start at 0", int(offsets[0])
    if offsets.size and int(offsets[-1]) != arrays["ids"].shape[0]:
        return "offsets", f"must end at the number of tokens {arrays['ids'].shape[0]}", int(offsets[-1])
    vocab = int(attrs["vocab_size"])
    ids = arrays["ids"]
    step = 1 << 22
    for i in range(0, ids.shape[0], step):
        block = np.asarray(ids[i:i + step])
        if block.size and int(block.max()) >= vocab:
            return "ids", f"must be < vocab_size ({vocab})", int(block.max())
    return None


TOKENS = register(
    "lm.tokens", "zarr", 1,
    GroupSpec(
        arrays={
            "ids": ArraySpec("int32", ("token",), (in_range(0),)),
            "offsets": ArraySpec("int64", ("doc_edge",), (in_range(0), monotone_nondecreasing()), whole=True),
            "doc_id": ArraySpec("int64", ("doc",), (in_range(0),)),
        },
        required_attrs=("vocab_size", "split"),
        group_checks=(_tokens_checks,),
    ),
    "flat token ids of one split; document d is ids[offsets[d]:offsets[d+1]]",
)

LOSS_COLUMN = register(
    "lm.loss_column", "zarr", 1,
    GroupSpec(
        arrays={"loss": ArraySpec("float32", ("token",), (finite_or_nan(), in_range(0.0)))},
        required_attrs=("model", "n_params", "n_params_nonembed", "context_length", "tokens"),
    ),
    "per-token loss (nats) of every token of a split under one model; NaN = no prediction",
)


def _column_checks(arrays, attrs, names_attr: str, order_array: str, strict: bool, order_message: str):
    """A tokens x columns loss array: `attrs[names_attr]` names every column, `order_array` orders them (strictly
    increasing, or non-decreasing)."""
    n_cols = arrays["loss"].shape[1]
    names = list(attrs[names_attr])
    if len(names) != n_cols:
        return f"attrs.{names_attr}", f"must name the {n_cols} columns", len(names)
    order = np.asarray(arrays[order_array][...])
    if order.shape[0] != n_cols:
        return order_array, f"must have one entry per column ({n_cols})", int(order.shape[0])
    if order.size > 1 and ((np.diff(order) <= 0) if strict else (np.diff(order) < 0)).any():
        return order_array, order_message, order.tolist()
    return None


def _losses_checks(arrays, attrs):
    return _column_checks(arrays, attrs, "models", "n_params_nonembed", False,
                          "models must be ordered by non-embedding parameters")


TOKEN_LOSSES = register(
    "lm.token_losses", "zarr", 1,
    GroupSpec(
        arrays={
            "loss": ArraySpec("float32", ("token", "model"), (finite_or_nan(), in_range(0.0))),
            "n_params": ArraySpec("int64", ("model",), (in_range(1),)),
            "n_params_nonembed": ArraySpec("int64", ("model",), (in_range(1),)),
        },
        required_attrs=("models", "tokens"),
        group_checks=(_losses_checks,),
    ),
    "per-token losses (nats), tokens x models ordered by non-embedding parameters; NaN = no prediction",
)


class ScalingTable(StrictTable):
    """Mean per-token loss of each model over the tokens every model predicts."""

    model: Series[str]
    n_params: Series[int] = pa.Field(ge=1)
    n_params_nonembed: Series[int] = pa.Field(ge=1)
    mean_loss: Series[float] = pa.Field(gt=0)
    median_loss: Series[float] = pa.Field(ge=0)
    n_tokens: Series[int] = pa.Field(ge=1)


SCALING = register("lm.scaling", "parquet", 1, ScalingTable, "mean loss per model vs parameters")


class LMFitsTable(StrictTable):
    quantity: Series[str]
    value: Series[float] = pa.Field(nullable=True)
    ci_lo: Series[float] = pa.Field(nullable=True)
    ci_hi: Series[float] = pa.Field(nullable=True)
    E: Series[float] = pa.Field(nullable=True)
    A: Series[float] = pa.Field(nullable=True)
    n_points: Series[int] = pa.Field(ge=0)
    method: Series[str]
    note: Series[str]


LM_FITS = register("lm.fits", "parquet", 1, LMFitsTable, "alpha_N fit of mean loss vs non-embedding parameters")

TOKEN_CLASSES = register(
    "lm.token_classes", "zarr", 1,
    GroupSpec(
        arrays={
            # 0 = neither / no prediction, 1 = monogenic, 2 = polygenic
            "cls": ArraySpec("int8", ("token",), (in_range(0, 2),)),
            "drop_model": ArraySpec("int16", ("token",), (in_range(-1),)),
            "slope": ArraySpec("float32", ("token",), (finite_or_nan(),)),
            "r2": ArraySpec("float32", ("token",), (finite_or_nan(),)),
        },
        required_attrs=("mono_high", "mono_low", "poly_slope", "poly_r2", "n_valid"),
    ),
    "per-token curve classes (0 none, 1 monogenic, 2 polygenic), drop index, log-log slope and R^2",
)

# the paper's histogram of per-token losses (ten-million-scaling-curves.ipynb, Figure 3): 1000 bins on [0, 18] bits
LOSS_HIST_BINS = 1000
LOSS_HIST_MAX_BITS = 18.0


def _distribution_checks(arrays, attrs):
    edges = np.asarray(arrays["bin_edges_bits"][...])
    if edges.shape[0] != arrays["density"].shape[1] + 1:
        return "bin_edges_bits", f"must have bins + 1 = {arrays['density'].shape[1] + 1} entries", int(edges.shape[0])
    if len(list(attrs["models"])) != arrays["density"].shape[0]:
        return "attrs.models", f"must name the {arrays['density'].shape[0]} model rows", len(list(attrs["models"]))
    return None


LOSS_DISTRIBUTION = register(
    "lm.loss_distribution", "zarr", 1,
    GroupSpec(
        arrays={
            "bin_edges_bits": ArraySpec("float64", ("edge",), (finite_or_nan(), in_range(0.0),
                                                               monotone_nondecreasing()), whole=True),
            "density": ArraySpec("float64", ("model", "bin"), (finite_or_nan(), in_range(0.0))),
            "integrand": ArraySpec("float64", ("model", "bin"), (finite_or_nan(), in_range(0.0))),
            "mean_loss_bits": ArraySpec("float64", ("model",), (finite_or_nan(), in_range(0.0))),
            "fraction_beyond": ArraySpec("float64", ("model",), (finite_or_nan(), in_range(0.0, 1.0))),
        },
        required_attrs=("models", "n_tokens"),
        group_checks=(_distribution_checks,),
    ),
    "p(L) per model (density over loss in bits, the paper's bins) and the mean-loss integrand L p(L)",
)


class TransitionsTable(StrictTable):
    """Sharp transitions between adjacent sizes (ten-million-scaling-curves.ipynb): per model, the tokens it is the
    first to learn (< learned_bits), how many stay learned under every larger model, and the loss change to the
    next model."""

    model: Series[str]
    next_model: Series[str] = pa.Field(description="the next larger model ('' for the largest)")
    first_learned: Series[int] = pa.Field(ge=0)
    stay_learned: Series[int] = pa.Field(ge=0)
    stay_fraction: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    change_mean: Series[float] = pa.Field(nullable=True, description="loss(next) - loss(this), bits, mean")
    change_median: Series[float] = pa.Field(nullable=True)
    change_q05: Series[float] = pa.Field(nullable=True)
    change_q95: Series[float] = pa.Field(nullable=True)
    improved_fraction: Series[float] = pa.Field(ge=0, le=1, nullable=True)


TRANSITIONS = register("lm.transitions", "parquet", 1, TransitionsTable,
                       "tokens learned at one size and kept at the next; loss changes between adjacent sizes")
ALPHA_N_RESAMPLED = register("lm.alpha_n_resampled", "parquet", 1, LMFitsTable,
                             "alpha_N (log-log OLS) with intervals from resampling documents, and models too")

def _checkpoint_losses_checks(arrays, attrs):
    return _column_checks(arrays, attrs, "checkpoints", "step", True, "checkpoints must be ordered by increasing step")


CHECKPOINT_LOSSES = register(
    "lm.checkpoint_losses", "zarr", 1,
    GroupSpec(
        arrays={
            "loss": ArraySpec("float32", ("token", "checkpoint"), (finite_or_nan(), in_range(0.0))),
            "step": ArraySpec("int64", ("checkpoint",), (in_range(1),), whole=True),
        },
        required_attrs=("model", "checkpoints", "tokens"),
        group_checks=(_checkpoint_losses_checks,),
    ),
    "per-token losses (nats) of one model over its training checkpoints, tokens x checkpoints by step",
)


class DynamicsTable(StrictTable):
    """Mean loss of one model at each of its checkpoints (paper Figure 11, left)."""

    checkpoint: Series[str]
    step: Series[int] = pa.Field(ge=1)
    mean_loss: Series[float] = pa.Field(ge=0, description="nats, over the tokens every checkpoint predicts")
    median_loss: Series[float] = pa.Field(ge=0)
    learned_fraction: Series[float] = pa.Field(ge=0, le=1, description="tokens below learned_bits here")
    n_tokens: Series[int] = pa.Field(ge=0)


DYNAMICS = register("lm.dynamics", "parquet", 1, DynamicsTable, "mean loss per training checkpoint")
DYNAMICS_FIT = register("lm.dynamics_fit", "parquet", 1, LMFitsTable,
                        "alpha_S: log-log OLS of mean loss vs step over the checkpoints")
TOKEN_DYNAMICS = register(
    "lm.token_dynamics", "zarr", 1,
    GroupSpec(
        arrays={
            "learned_step": ArraySpec("float64", ("token",), (finite_or_nan(), in_range(0.0))),
            "cls": ArraySpec("int8", ("token",), (in_range(0, 2),)),
        },
        required_attrs=("learned_bits", "n_valid", "counts"),
    ),
    "per token: the step from which its loss stays below learned_bits (NaN: never), and its learning curve's class "
    "(1 one sharp drop, 2 gradual, 0 neither)",
)

__all__ = ["LMConfig", "CorpusConfig", "TokenizerConfig", "SuiteConfig", "ModelSize", "AnalysisConfig",
           "ReportConfig", "SPECIAL_TOKENS", "MIN_VOCAB"]
