"""Contracts of the qdg-calibration study: synthetic planted clusters (sizes ∝ rank^-e, no model) through QDG's
affinity and clustering stage, and every size-exponent estimator against the planted e.

planted rows per (e, separation, draw) ─► A = 1 - arccos(C)/pi ─► spectral clusterings at the k list (and at k = K)
─► every estimator ─► `qdg_calibration.draw` (one cached task per draw) ─► `qdg_calibration.summary` ─► report
"""
from __future__ import annotations

import pandera.pandas as pa
from pydantic import Field, field_validator, model_validator
from pandera.typing import Series

from schemas.config import ReportConfig as BaseReportConfig
from schemas.config import StrictModel
from schemas.qdg_config import ClusteringConfig, SpectralOptions
from schemas.registry import register
from schemas.tables import StrictTable

ESTIMATORS = ("envelope", "rank_slope", "powerlaw_mle", "finite_zipf", "merged_finite_zipf")


class PlantedConfig(StrictModel):
    """The synthetic data: n rows in K clusters; each row is drawn from cluster i with probability ∝ i^-e (a
    multinomial sample: the sizes are random, some clusters may be empty), then row = centre_i + noise (isotropic
    Gaussian, norm ~ separation), L2-normalised. The centres are random unit vectors in `dim` dims."""

    exponents: list[float] = Field([1.1, 1.25, 1.4, 1.6, 2.0], description="planted size exponents e")
    n_clusters: int = Field(50, ge=2, description="K, the planted clusters")
    n_rows: int = Field(3000, ge=10, description="n, the rows")
    dim: int = Field(100, ge=2, description="dimension of the rows")
    separations: list[float] = Field([0.25, 0.5], description="noise levels: a row's noise norm relative to its "
                                     "unit centre (same-cluster cosine ~ 1 / (1 + noise^2))")
    draws: int = Field(6, ge=1, description="independent draws (data and centres) per (e, separation); adding "
                       "draws computes only the new ones")
    seed: int = Field(0, ge=0, description="base seed of the draws")

    @field_validator("exponents")
    @classmethod
    def _exponents(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("exponents must not be empty")
        bad = [e for e in v if not 0.3 <= e <= 4.0]
        if bad:
            raise ValueError(f"exponents must be in [0.3, 4.0] (the estimator's simulated range; got {bad[0]})")
        if len(set(v)) != len(v):
            raise ValueError("exponents must be distinct")
        return sorted(v)

    @field_validator("separations")
    @classmethod
    def _separations(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("separations must not be empty")
        bad = [s for s in v if s < 0]
        if bad:
            raise ValueError(f"separations must be >= 0 (got {bad[0]})")
        if len(set(v)) != len(v):
            raise ValueError("separations must be distinct")
        return sorted(v)

    @model_validator(mode="after")
    def _rows(self):
        if self.n_rows < 2 * self.n_clusters:
            raise ValueError(f"n_rows must be at least 2 x n_clusters (got n_rows = {self.n_rows}, n_clusters = "
                             f"{self.n_clusters})")
        return self


class CalibrationReportConfig(BaseReportConfig):
    title: str = "Calibrating the size exponent (planted clusters)"


class EstimatorConfig(StrictModel):
    """The designed estimator's settings (tasks.stats.cluster_sizes.finite_zipf_exponent), fixed before calibrating."""

    min_size: int = Field(10, ge=1, description="clusters of at least this many rows enter the fit")
    n_sim: int = Field(200, ge=20, description="simulated multinomial samples per e of the belt")
    level: float = Field(0.95, gt=0, lt=1, description="interval level")


class CalibrationClustering(SpectralOptions):
    """QDG's clustering stage: its spectral options (defaults: qdg's) and k list; seed of the clustering."""

    n_clusters: list[int] = Field([10, 20, 40, 80, 160], description="the k list (qdg's demo)")
    seed: int = Field(0, ge=0, description="clustering seed")

    @field_validator("n_clusters")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        return ClusteringConfig(n_clusters=v).n_clusters

    def spectral(self) -> SpectralOptions:
        return SpectralOptions(**{f: getattr(self, f) for f in SpectralOptions.model_fields})


class QDGCalibrationConfig(StrictModel):
    """qdg-calibration: the size-exponent estimators on planted clusters with a known exponent."""

    planted: PlantedConfig = PlantedConfig()
    clustering: CalibrationClustering = CalibrationClustering()
    estimator: EstimatorConfig = EstimatorConfig()
    report: CalibrationReportConfig = CalibrationReportConfig()

    @model_validator(mode="after")
    def _k_below_n(self):
        n = self.planted.n_rows
        too_big = [k for k in [*self.clustering.n_clusters, self.planted.n_clusters] if k >= n]
        if too_big:
            raise ValueError(f"clustering.n_clusters: k = {too_big[0]} must be < planted.n_rows ({n})")
        return self


# -------------------------------------------------------------------------------------------- artifacts
class DrawTable(StrictTable):
    """One planted draw: one row per (estimator, k) with its measured exponent and interval."""

    planted: Series[float] = pa.Field(gt=0, description="the planted e")
    separation: Series[float] = pa.Field(ge=0)
    draw: Series[int] = pa.Field(ge=0)
    estimator: Series[str] = pa.Field(isin=list(ESTIMATORS))
    k: Series[int] = pa.Field(ge=0, description="the clustering's k (0: the envelope over the k list)")
    exponent: Series[float] = pa.Field(nullable=True)
    ci_lo: Series[float] = pa.Field(nullable=True)
    ci_hi: Series[float] = pa.Field(nullable=True)
    covered: Series[bool] = pa.Field(description="the interval contains the planted e")
    k_chosen: Series[int] = pa.Field(ge=0, description="merged_finite_zipf: the clusters after merging; else k")
    ari: Series[float] = pa.Field(nullable=True, description="ARI of the estimator's clustering vs the truth")
    ari_at_K: Series[float] = pa.Field(ge=-1, le=1, description="ARI of the clustering at k = K vs the truth")
    nonempty: Series[int] = pa.Field(ge=1, description="planted clusters with at least one row")
    note: Series[str]


DRAW = register("qdg_calibration.draw", "parquet", 1, DrawTable,
                "every size-exponent estimator on one planted draw (e, separation, draw)")


class SummaryTable(StrictTable):
    """The calibration table: per (separation, planted e, estimator, k), over the draws."""

    separation: Series[float] = pa.Field(ge=0)
    planted: Series[float] = pa.Field(gt=0)
    estimator: Series[str] = pa.Field(isin=list(ESTIMATORS))
    k: Series[int] = pa.Field(ge=0)
    draws: Series[int] = pa.Field(ge=1)
    mean: Series[float] = pa.Field(nullable=True, description="mean measured exponent over the draws")
    lo: Series[float] = pa.Field(nullable=True, description="2.5% quantile of the measured exponents over draws")
    hi: Series[float] = pa.Field(nullable=True, description="97.5% quantile")
    mean_ci_lo: Series[float] = pa.Field(nullable=True, description="mean of the per-draw interval's lower ends")
    mean_ci_hi: Series[float] = pa.Field(nullable=True)
    bias: Series[float] = pa.Field(nullable=True, description="mean - planted")
    coverage: Series[float] = pa.Field(ge=0, le=1, description="fraction of draws whose interval covers e")
    ari_at_K: Series[float] = pa.Field(ge=-1, le=1, description="mean ARI of the clustering at k = K")
    ari: Series[float] = pa.Field(nullable=True, description="mean ARI of the estimator's clustering")
    k_chosen: Series[float] = pa.Field(ge=0, description="mean k the estimator used")


SUMMARY = register("qdg_calibration.summary", "parquet", 1, SummaryTable,
                   "the calibration of the size-exponent estimators: bias, spread and coverage per planted e")

__all__ = ["QDGCalibrationConfig", "PlantedConfig", "EstimatorConfig", "CalibrationClustering", "ESTIMATORS"]
