"""Contracts of the sparse-parity study: its config and the schemas of its artifacts."""
from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series
from pydantic import Field, field_validator, model_validator

from schemas.arrays import ArraySpec, GroupSpec, finite, in_range, monotone_nondecreasing
from schemas.config import ReportConfig as BaseReportConfig
from schemas.config import MAX_TRAINING_STEPS, StrictModel, positive_distinct
from schemas.registry import register
from schemas.tables import StrictTable


# ----------------------------------------------------------------------------------------------- config
class TaskConfig(StrictModel):
    """Multitask sparse parity: n_tasks subtasks, n_bits task bits, parity of k bits, Zipf frequencies."""

    n_tasks: int = Field(500, ge=1, description="number of subtasks (control bits)")
    n_bits: int = Field(100, ge=1, description="number of task bits n")
    k: int = Field(3, ge=1, description="size of each subtask's parity subset")
    frequencies: Literal["zipf", "uniform"] = Field(
        "zipf", description="zipf: p_i ~ i^-(alpha+1); uniform: p_i = 1/n_tasks, the paper's control "
        "(experiments/P-scaling-uniform-0, scripts/sparse-parity-v4-uniform.py), which needs alpha = 0")
    alpha: float = Field(0.4, ge=0, description="the paper's alpha: subtask i has frequency ~ i^-(alpha+1) (> 0); "
                         "0 with frequencies = 'uniform'")
    seed: int = Field(0, ge=0, description="seed of the subsets S_i")

    @model_validator(mode="after")
    def _k_le_n_bits(self):
        if self.k > self.n_bits:
            raise ValueError(f"k must be <= n_bits (k={self.k}, n_bits={self.n_bits})")
        return self

    @field_validator("alpha")
    @classmethod
    def _alpha_fits_frequencies(cls, v: float, info):
        # alpha = 0 in this project's convention would be p_i ~ 1/i, not uniform: the control is its own setting
        freq = info.data.get("frequencies", "zipf")
        if freq == "uniform" and v != 0:
            raise ValueError("alpha must be 0 with frequencies = 'uniform' (uniform frequencies have no power law)")
        if freq == "zipf" and v <= 0:
            raise ValueError("alpha must be > 0 for Zipf frequencies; for uniform frequencies set frequencies = "
                             "'uniform' and alpha = 0")
        return v


class GridConfig(StrictModel):
    """The training grid: every (data size, seed) group trains all `widths` side by side on shared batches."""

    widths: list[int] = Field([10, 20, 40], description="hidden widths (one model each)")
    depth: int = Field(1, ge=1, le=8, description="number of hidden layers")
    steps: int = Field(1000, ge=1, le=MAX_TRAINING_STEPS, description="optimizer steps per model (at most "
                       "MAX_TRAINING_STEPS, 50 x the paper's 2e5)")
    batch_size: int = Field(20000, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (torch's default)")
    data_sizes: list[int] | None = Field(None, description="training-set sizes D; absent = fresh samples every step")
    fresh_data: bool = Field(False, description="with data_sizes: also train a fresh-samples group per seed")
    seeds: list[int] = Field([0], description="init/batch seeds")
    log_points: int = Field(30, ge=2, description="number of log-spaced steps at which losses are measured")
    eval_samples_per_task: int = Field(200, ge=1, description="fresh test samples per subtask")
    learned_threshold_bits: float = Field(0.1, gt=0, description="a subtask is learned below this loss (bits)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cuda_graph: bool = Field(False, description="on CUDA, replay each training step as one CUDA graph (one launch "
                             "instead of ~70); on the CPU the same steps run eagerly")
    groups_per_shard: int = Field(1, ge=1, description="(D, seed) groups per cached training task")

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        return positive_distinct("widths", v)

    @field_validator("data_sizes")
    @classmethod
    def _data_sizes(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        return positive_distinct("data_sizes", v, " (omit it for fresh samples every step)")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("seeds must not be empty")
        if any(s < 0 for s in v) or len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct non-negative integers (got {v})")
        return v


class DataGridConfig(StrictModel):
    """Data scaling (alpha_D): one width, one model per (training-set size D, seed), each with its own data;
    equal-shape models are trained stacked. Unset fields take the [grid] values."""

    width: int = Field(ge=1, description="hidden width of every model of the data grid")
    data_sizes: list[int] = Field(description="training-set sizes D (log-spaced is customary)")
    steps: int | None = Field(None, ge=1, description="steps per model (default: grid.steps)")
    seeds: list[int] | None = Field(None, description="seeds (default: grid.seeds)")
    shard_by: Literal["data_size", "model"] = Field(
        "data_size", description="one cached training task per D (its seeds stacked), or per (D, seed) model; "
        "either way adding a D trains only the new D")

    @field_validator("data_sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        return positive_distinct("data_sizes", v)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        return None if v is None else GridConfig._seeds.__func__(cls, v)


class FitConfig(StrictModel):
    """Scaling-law fits of the study's losses."""

    method: Literal["huber", "ols"] = Field("huber", description="huber: L = E + A x^-a by Huber/L-BFGS; ols: log-log")
    offset: bool = Field(True, description="fit the irreducible loss E (huber method)")
    n_min: float | None = Field(None, gt=0, description="smallest parameter count used in the alpha_N fit")
    n_max: float | None = Field(None, gt=0, description="largest parameter count used in the alpha_N fit")
    step_min: int | None = Field(None, ge=1, description="first step used in the alpha_S fit")
    step_max: int | None = Field(None, ge=1, description="last step used in the alpha_S fit")
    d_min: int | None = Field(None, ge=1, description="smallest D used in the alpha_D fit")
    d_max: int | None = Field(None, ge=1, description="largest D used in the alpha_D fit")
    d_width: int | None = Field(None, ge=1, description="width whose loss-vs-D is fitted (default: widest)")
    bootstrap: int = Field(200, ge=0, description="bootstrap resamples for CIs")
    huber_delta: float = Field(1e-3, gt=0)
    level: float = Field(0.95, gt=0, lt=1, description="confidence level of CIs")
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _ranges(self):
        for lo, hi in (("n_min", "n_max"), ("step_min", "step_max"), ("d_min", "d_max")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a >= b:
                raise ValueError(f"{lo} must be < {hi} (got {a} >= {b})")
        return self


class ReportConfig(BaseReportConfig):
    title: str = "Multitask sparse parity"


class SparseParityConfig(StrictModel):
    task: TaskConfig = TaskConfig()
    grid: GridConfig = GridConfig()
    data_grid: DataGridConfig | None = None
    fit: FitConfig = FitConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _cross(self):
        d_widths = set(self.grid.widths) | ({self.data_grid.width} if self.data_grid else set())
        if self.fit.d_width is not None and self.fit.d_width not in d_widths:
            raise ValueError(f"fit.d_width must be one of the trained widths {sorted(d_widths)} "
                             f"(got {self.fit.d_width})")
        if self.data_grid is not None and self.data_grid.steps is not None and \
                self.grid.log_points > self.data_grid.steps:
            raise ValueError(f"grid.log_points must be <= data_grid.steps (got {self.grid.log_points} > "
                             f"{self.data_grid.steps})")
        if self.grid.log_points > self.grid.steps:
            raise ValueError(f"grid.log_points must be <= grid.steps (got {self.grid.log_points} > {self.grid.steps})")
        return self


# -------------------------------------------------------------------------------------------- artifacts
def _spec_checks(arrays, attrs):
    subsets = np.asarray(arrays["subsets"][...])
    n_bits = int(attrs["n_bits"])
    if subsets.size and (subsets.min() < 0 or subsets.max() >= n_bits):
        return "subsets", f"indices must be in [0, n_bits={n_bits})", int(subsets.max())
    for i, row in enumerate(subsets):
        if len(set(row.tolist())) != len(row):
            return "subsets", f"row {i} has repeated bits", row.tolist()
    probs = np.asarray(arrays["probs"][...], dtype=np.float64)
    if abs(probs.sum() - 1.0) > 1e-6:
        return "probs", "must sum to 1", float(probs.sum())
    return None


SPEC = register(
    "sparse_parity.spec", "zarr", 1,
    GroupSpec(
        arrays={
            "subsets": ArraySpec("i", ("task", "k"), (in_range(0),)),
            "probs": ArraySpec("f", ("task",), (finite(), in_range(0.0, 1.0))),
        },
        required_attrs=("n_tasks", "n_bits", "k", "alpha", "seed"),
        group_checks=(_spec_checks,),
    ),
    "subtask parity subsets S_i and Zipf frequencies p_i",
)

TRAIN_SET = register(
    "sparse_parity.train_set", "zarr", 1,
    GroupSpec(
        arrays={
            "task": ArraySpec("i", ("sample",), (in_range(0),)),
            "bits": ArraySpec("u", ("sample", "bit"), (in_range(0, 1),)),
            "label": ArraySpec("i", ("sample",), (in_range(0, 1),)),
        },
        required_attrs=("data_size", "seed"),
    ),
    "a finite training set of D samples",
)


CURVES = register(
    "sparse_parity.curves", "zarr", 1,
    GroupSpec(
        arrays={
            "steps": ArraySpec("i", ("step",), (in_range(1), monotone_nondecreasing()), whole=True),
            "loss_bits": ArraySpec("f", ("model", "step", "task"), (finite(), in_range(0.0))),
            "mean_loss_bits": ArraySpec("f", ("model", "step"), (finite(), in_range(0.0))),
            "width": ArraySpec("i", ("model",), (in_range(1),)),
            "n_params": ArraySpec("i", ("model",), (in_range(1),)),
            "data_size": ArraySpec("i", ("model",), (in_range(-1),)),
            "seed": ArraySpec("i", ("model",), (in_range(0),)),
            "alpha": ArraySpec("f", ("model",), (finite(), in_range(0.0)),),
        },
        required_attrs=("depth", "lr", "batch_size", "device"),
    ),
    "per-model, per-log-step, per-subtask test loss curves (bits) of one training shard",
)


class RunsTable(StrictTable):
    """One row per model per logged step. `data_size` = -1 means fresh samples every step."""

    model_id: Series[str] = pa.Field(nullable=False)
    width: Series[int] = pa.Field(ge=1)
    n_params: Series[int] = pa.Field(ge=1)
    data_size: Series[int] = pa.Field(ge=-1)
    seed: Series[int] = pa.Field(ge=0)
    alpha: Series[float] = pa.Field(ge=0, description="0 = uniform frequencies (task.frequencies = 'uniform')")
    step: Series[int] = pa.Field(ge=1)
    mean_loss: Series[float] = pa.Field(ge=0, nullable=False, description="Zipf-weighted test loss, bits")
    subtasks_learned: Series[int] = pa.Field(ge=0)


RUNS = register("sparse_parity.runs", "parquet", 1, RunsTable, "runs table: model x logged step")


class EstimateTable(StrictTable):
    """The columns of a fitted quantity beside its theory value (FitsTable, QuantaTable add what they estimate)."""

    value: Series[float] = pa.Field(nullable=True)
    ci_lo: Series[float] = pa.Field(nullable=True)
    ci_hi: Series[float] = pa.Field(nullable=True)
    theory: Series[float] = pa.Field(nullable=True)
    consistent: Series[pd.BooleanDtype] = pa.Field(nullable=True)
    n_points: Series[int] = pa.Field(ge=0)
    method: Series[str]
    note: Series[str]


class FitsTable(EstimateTable):
    """One row per fitted exponent, beside its theory value."""

    quantity: Series[str] = pa.Field(isin=["alpha_N", "alpha_S", "alpha_D"])
    alpha: Series[float] = pa.Field(ge=0, description="the task's alpha (0 = uniform frequencies: no power law)")


FITS = register("sparse_parity.fits", "parquet", 1, FitsTable, "fitted exponents with CIs and theory values")


class EmergenceTable(StrictTable):
    """One row per (model, subtask): the first logged step at which the subtask's loss fell below threshold."""

    model_id: Series[str]
    width: Series[int] = pa.Field(ge=1)
    data_size: Series[int] = pa.Field(ge=-1)
    seed: Series[int] = pa.Field(ge=0)
    alpha: Series[float] = pa.Field(ge=0)
    task_rank: Series[int] = pa.Field(ge=1, description="1 = most frequent subtask")
    frequency: Series[float] = pa.Field(gt=0, le=1)
    learned_step: Series[float] = pa.Field(nullable=True, description="NaN = never learned")


EMERGENCE = register("sparse_parity.emergence", "parquet", 1, EmergenceTable, "steps-to-learn per subtask")


class StepTestTable(StrictTable):
    """Does the final loss fall with N in one step or as a power law? Per alpha: the largest drop of the final
    mean loss between adjacent model sizes as a fraction of the whole drop, beside the same statistic of the
    log-log power law fitted to the same points (its null: a power law spreads the drop over the sizes)."""

    alpha: Series[float] = pa.Field(ge=0, description="0 = uniform frequencies")
    n_points: Series[int] = pa.Field(ge=0)
    step_fraction: Series[float] = pa.Field(nullable=True, description="largest adjacent drop / total drop")
    n_before: Series[float] = pa.Field(nullable=True, description="parameters of the model before the step")
    n_after: Series[float] = pa.Field(nullable=True, description="parameters of the model after the step")
    powerlaw_step_fraction: Series[float] = pa.Field(nullable=True, description="the statistic of the fitted "
                                                     "log-log power law at the same N")
    one_step: Series[pd.BooleanDtype] = pa.Field(nullable=True, description="step_fraction > 0.5 and > "
                                                 "powerlaw_step_fraction: most of the drop between two adjacent "
                                                 "sizes, more than the power law puts there (NA: no null)")
    note: Series[str]


STEP_TEST = register("sparse_parity.step_test", "parquet", 1, StepTestTable,
                     "one step or a power law: the largest drop of final loss between adjacent sizes")


class QuantaTable(EstimateTable):
    """Counting quanta, per alpha: slope of subtasks learned vs N (theory 1: n = N/C), C = parameters per learned
    subtask, slope of subtasks learned vs D at early stopping (paper Figure 9; theory 1/(alpha+1))."""

    alpha: Series[float] = pa.Field(ge=0, description="0 = uniform frequencies")
    quantity: Series[str] = pa.Field(isin=["subtasks_vs_N", "params_per_quantum", "subtasks_vs_D"])


QUANTA = register("sparse_parity.quanta", "parquet", 1, QuantaTable,
                  "subtasks learned vs N and D, parameters per quantum, beside theory")


class SweepConfig(StrictModel):
    alphas: list[float] = Field(description="the paper's alpha values to run (each replaces task.alpha)")

    @field_validator("alphas")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("alphas must not be empty")
        bad = [a for a in v if not a > 0]
        if bad:
            raise ValueError(f"alphas must be > 0 (got {bad[0]})")
        if len(set(v)) != len(v):
            raise ValueError("alphas must be distinct")
        return sorted(v)


class AlphaSweepConfig(SparseParityConfig):
    """The sparse-parity study once per alpha (task.alpha is replaced by each of sweep.alphas)."""

    sweep: SweepConfig

    @model_validator(mode="after")
    def _zipf(self):
        if self.task.frequencies != "zipf":
            raise ValueError("task.frequencies must be 'zipf' in an alpha sweep (each alpha is a Zipf exponent; run "
                             "the uniform control as a sparse-parity study)")
        return self
