"""qdg-calibration: every size-exponent estimator on planted clusters whose exponent is known.

One cached task per (planted e, separation, draw): the rows (`planted_rows`), QDG's affinity A = 1 - arccos(C)/pi
of the L2-normalised rows (`affinity_from_cosine`, float32 as the clustering stage reads it), QDG's clustering stage
(`spectral_labels` with the configured spectral options) at every k of the k list and at k = K (the ARI that says
how separable the draw is), then every estimator (`draw_table`). The summary (`summary_table`) aggregates the draws:
mean measured exponent, its spread over draws, bias, and the coverage of the per-draw intervals.
"""
from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from schemas.qdg_calibration import CalibrationClustering, EstimatorConfig, PlantedConfig
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.qdg.clustering import affinity_from_cosine, spectral_labels
from tasks.qdg.size_exponent import merge_pieces, size_exponent
from tasks.stats.cluster_sizes import (SizeExponent, envelope_exponent, finite_zipf_exponent, mle_exponent,
                                       rank_slope_exponent, ranked_sizes)


def draw_seed(base: int, planted: float, separation: float, draw: int) -> int:
    """The seed of one draw: a function of (base seed, e, separation, draw) only, so adding draws or grid values
    leaves every other draw's data unchanged."""
    return (base * 1_000_003 + zlib.crc32(f"{planted:.6g}|{separation:.6g}|{draw}".encode())) % (2**32)


def planted_rows(exponent: float, n_clusters: int, n_rows: int, dim: int, separation: float,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of planted clusters with sizes ∝ rank^-exponent (a multinomial sample of n_rows over n_clusters).

    Returns (rows (n_rows, dim) float32 L2-normalised, truth (n_rows,) int64 in 0..n_clusters-1, cluster 0 the most
    probable). Row = its cluster's random unit centre + `separation` x an isotropic Gaussian of unit expected norm."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, n_clusters + 1, dtype=np.float64) ** -exponent
    truth = rng.choice(n_clusters, size=n_rows, p=weights / weights.sum()).astype(np.int64)
    centres = rng.standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows = centres[truth] + separation / np.sqrt(dim) * rng.standard_normal((n_rows, dim))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows.astype(np.float32), truth


def planted_affinity(rows: np.ndarray) -> np.ndarray:
    """QDG's dense affinity of unit rows: A = 1 - arccos(G G^T)/pi, float32 (what `read_affinity` gives)."""
    c = rows @ rows.T
    np.fill_diagonal(c, 1.0)
    return affinity_from_cosine(c, np.empty(c.shape, dtype=np.float32))


def _ari(truth: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(truth, labels))


def _row(fit: SizeExponent, planted: float, k_chosen: int, ari: float) -> dict:
    return {"estimator": fit.estimator, "k": int(fit.k), "exponent": float(fit.exponent), "ci_lo": float(fit.ci[0]),
            "ci_hi": float(fit.ci[1]), "covered": fit.covers(planted), "k_chosen": int(k_chosen), "ari": ari,
            "note": fit.note}


def draw_table(planted: float, separation: float, draw: int, *, grid: PlantedConfig,
               clustering: CalibrationClustering, estimator: EstimatorConfig) -> pd.DataFrame:
    """Every estimator on one planted draw: a `qdg_calibration.draw` table (one row per estimator and k). Of
    `grid` only K (n_clusters), n_rows, dim and seed are read."""
    seed = draw_seed(grid.seed, planted, separation, draw)
    rows, truth = planted_rows(planted, grid.n_clusters, grid.n_rows, grid.dim, separation, seed)
    a = planted_affinity(rows)
    spectral, ks = clustering.spectral(), clustering.n_clusters
    labels = {k: spectral_labels(a.copy(), k, clustering.seed, spectral) for k in sorted({*ks, grid.n_clusters})}
    ari = {k: _ari(truth, lab) for k, lab in labels.items()}
    sizes = {k: ranked_sizes(labels[k]) for k in ks}
    lvl = estimator.level
    out = [_row(envelope_exponent(sizes, grid.n_rows, level=lvl), planted, 0, np.nan)]
    for k in ks:
        out.append(_row(rank_slope_exponent(sizes[k], k, level=lvl), planted, k, ari[k]))
        out.append(_row(mle_exponent(sizes[k], k, level=lvl), planted, k, ari[k]))
        out.append(_row(finite_zipf_exponent(sizes[k], min_size=estimator.min_size, n_sim=estimator.n_sim,
                                             seed=clustering.seed, level=lvl, k=k), planted, k, ari[k]))
    k_over = max(ks)
    fit = size_exponent(a, n_clusters=ks, spectral=spectral, seed=clustering.seed, labels=labels[k_over],
                        level=lvl, n_sim=estimator.n_sim, min_size=estimator.min_size)
    merged, _ = merge_pieces(a, labels[k_over])
    fit.k = k_over  # the row's k is the over-clustering it starts from; k_chosen says what the merge chose
    out.append(_row(fit, planted, fit.choices["k_chosen"], _ari(truth, merged)))
    df = pd.DataFrame(out)
    df.insert(0, "draw", draw)
    df.insert(0, "separation", float(separation))
    df.insert(0, "planted", float(planted))
    df["ari_at_K"] = ari[grid.n_clusters]
    df["nonempty"] = int(len(np.unique(truth)))
    cols = ["planted", "separation", "draw", "estimator", "k", "exponent", "ci_lo", "ci_hi", "covered", "k_chosen",
            "ari", "ari_at_K", "nonempty", "note"]
    return df[cols].astype({"draw": "int64", "k": "int64", "k_chosen": "int64", "nonempty": "int64",
                            "covered": "bool", "ari": "float64"})


def draw_grid(grid: PlantedConfig) -> dict:
    """What one draw depends on from the grid (not the lists of e, separations or the number of draws)."""
    return {"n_clusters": grid.n_clusters, "n_rows": grid.n_rows, "dim": grid.dim, "seed": grid.seed}


@quanta_task(name="qdg-calibration-draw",
             task_run_name="qdg-calibration-e{planted}-sep{separation}-d{draw}")
def calibration_draw(*, planted: float, separation: float, draw: int, data: dict, clustering: CalibrationClustering,
                     estimator: EstimatorConfig, store: str) -> ArtifactRef:
    """One planted draw through QDG's affinity and clustering stage and every estimator -> `qdg_calibration.draw`.
    `data` = `draw_grid(config.planted)`: the draw depends only on its own (e, separation, draw), K, n, dim, the
    base seed, the clustering and the estimator settings, so adding draws or grid values computes only the new
    ones."""
    grid = PlantedConfig(exponents=[planted], separations=[separation], draws=1, **data)
    table = draw_table(planted, separation, draw, grid=grid, clustering=clustering, estimator=estimator)
    return Store(store).write_table("qdg_calibration.draw", table, inputs=[],
                                    params={"planted": planted, "separation": separation, "draw": draw,
                                            "data": data, "clustering": clustering.model_dump(mode="json"),
                                            "estimator": estimator.model_dump(mode="json")})


def summary_table(draws: pd.DataFrame) -> pd.DataFrame:
    """The calibration table (`qdg_calibration.summary`) from the concatenated draw tables."""
    rows = []
    for (sep, e, est, k), g in draws.groupby(["separation", "planted", "estimator", "k"], sort=True):
        x = g["exponent"].to_numpy(dtype=float)
        fin = x[np.isfinite(x)]
        lo, hi = (np.quantile(fin, [0.025, 0.975]) if fin.size else (np.nan, np.nan))
        mean = float(fin.mean()) if fin.size else np.nan
        rows.append({"separation": float(sep), "planted": float(e), "estimator": est, "k": int(k), "draws": len(g),
                     "mean": mean, "lo": float(lo), "hi": float(hi),
                     "mean_ci_lo": _finite_mean(g["ci_lo"]), "mean_ci_hi": _finite_mean(g["ci_hi"]),
                     "bias": mean - float(e), "coverage": float(g["covered"].mean()),
                     "ari_at_K": float(g["ari_at_K"].mean()), "ari": _finite_mean(g["ari"]),
                     "k_chosen": float(g["k_chosen"].mean())})
    return pd.DataFrame(rows).astype({"k": "int64", "draws": "int64"})


def _finite_mean(s: pd.Series) -> float:
    x = s.to_numpy(dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else np.nan


@quanta_task(name="qdg-calibration-summary", task_run_name="qdg-calibration-summary")
def calibration_summary(draws: list[ArtifactRef], *, store: str) -> ArtifactRef:
    """`qdg_calibration.summary` from every draw's table."""
    st = Store(store)
    table = summary_table(pd.concat([st.read_table(r) for r in draws], ignore_index=True))
    return st.write_table("qdg_calibration.summary", table, inputs=list(draws))
