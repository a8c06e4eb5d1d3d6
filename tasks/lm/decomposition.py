"""Decomposition of the per-token losses (paper Section 4, first half).

- mean loss vs non-embedding parameters N, fitted with the project's fitter: alpha_N with a bootstrap CI;
- the distribution of per-token losses by model size;
- each token's loss curve (loss vs N, models ordered by N) classified as
  * monogenic: loss > `mono_high` for every model before some size and < `mono_low` for every model from that
    size on (a sharp drop at one scale; paper: 5 and 0.3 nats);
  * polygenic: not monogenic, and the least-squares slope of the curve is below `poly_slope` with R^2 above
    `poly_r2` (paper: -0.3 and 0.98). `poly_statistic` says which curve: "paper" regresses the loss in nats on
    ln N, as the paper code does (notebooks/diverse-scaling-examples.ipynb: LinearRegression of the loss on
    log(no_emb_params)), "loglog" regresses ln loss on ln N (a power law is a straight line there; the project's
    earlier statistic). The two call different tokens polygenic: both counts are recorded;
  * neither (class 0), also for tokens without a prediction.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from schemas.lm import AnalysisConfig
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.stats import fit_loglog_ols, fit_power_law

NONE, MONOGENIC, POLYGENIC = 0, 1, 2
_EPS = 1e-12


def valid_rows(loss: np.ndarray) -> np.ndarray:
    """Tokens predicted by every model (no NaN in the row)."""
    return np.isfinite(loss).all(axis=1)


POLY_STATISTICS = ("paper", "loglog")


def classify_curves(loss: np.ndarray, n_params: np.ndarray, mono_high: float = 5.0, mono_low: float = 0.3,
                    poly_slope: float = -0.3, poly_r2: float = 0.98,
                    poly_statistic: str = "paper") -> dict[str, np.ndarray]:
    """Classify per-token curves. loss: (tokens, models) nats, models ordered by increasing `n_params`.

    Returns {"cls": int8 (tokens,) 0/1/2, "drop_model": int16 index of the first 'learned' model of a monogenic
    curve (-1 otherwise), "slope": float32 slope of the `poly_statistic` fit (paper: nats per unit of ln N;
    loglog: d ln L / d ln N), "r2": float32 its R^2} (slope/r2 NaN for invalid rows or fewer than 3 models;
    polygenic needs >= 3 models, monogenic >= 2)."""
    if poly_statistic not in POLY_STATISTICS:
        raise ValueError(f"poly_statistic must be one of {POLY_STATISTICS} (got {poly_statistic!r})")
    loss = np.asarray(loss, dtype=np.float64)
    n_tok, m = loss.shape
    n_params = np.asarray(n_params, dtype=np.float64)
    if n_params.shape != (m,):
        raise ValueError(f"n_params must have one entry per model column ({m}), got shape {n_params.shape}")
    if m > 1 and (np.diff(n_params) < 0).any():
        raise ValueError("models must be ordered by increasing n_params")
    ok = valid_rows(loss)
    cls = np.zeros(n_tok, dtype=np.int8)
    drop = np.full(n_tok, -1, dtype=np.int16)
    slope = np.full(n_tok, np.nan, dtype=np.float32)
    r2 = np.full(n_tok, np.nan, dtype=np.float32)
    if m >= 2:
        high = loss > mono_high
        low = loss < mono_low
        # prefix_high[:, j] = all models < j are high; suffix_low[:, j] = all models >= j are low
        prefix_high = np.cumprod(high, axis=1).astype(bool)  # [:, j] = all of 0..j high
        suffix_low = np.cumprod(low[:, ::-1], axis=1)[:, ::-1].astype(bool)  # [:, j] = all of j..m-1 low
        cand = prefix_high[:, :-1] & suffix_low[:, 1:]  # drop between model j and j+1
        mono = cand.any(axis=1) & ok
        cls[mono] = MONOGENIC
        drop[mono] = (np.argmax(cand[mono], axis=1) + 1).astype(np.int16)
    if m >= 3:
        lx = np.log(n_params)
        lx = lx - lx.mean()
        filled = np.where(ok[:, None], loss, 1.0)
        ly = filled if poly_statistic == "paper" else np.log(np.maximum(filled, _EPS))
        ym = ly.mean(axis=1, keepdims=True)
        sxx = float((lx ** 2).sum())
        b = ((ly - ym) * lx).sum(axis=1) / sxx
        sst = ((ly - ym) ** 2).sum(axis=1)
        sse = ((ly - ym - b[:, None] * lx) ** 2).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            rr = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), 0.0)
        slope[ok] = b[ok]
        r2[ok] = rr[ok]
        poly = ok & (cls == NONE) & (b < poly_slope) & (rr > poly_r2)
        cls[poly] = POLYGENIC
    return {"cls": cls, "drop_model": drop, "slope": slope, "r2": r2}


def scaling_table(loss: np.ndarray, names: list[str], n_params: np.ndarray, n_nonembed: np.ndarray) -> pd.DataFrame:
    """Mean and median loss of each model over the tokens every model predicts."""
    ok = valid_rows(loss)
    if not ok.any():
        raise ValueError("no token is predicted by every model (all rows have a NaN)")
    sub = np.asarray(loss[ok], dtype=np.float64)
    return pd.DataFrame({
        "model": list(names),
        "n_params": np.asarray(n_params, dtype=np.int64),
        "n_params_nonembed": np.asarray(n_nonembed, dtype=np.int64),
        "mean_loss": sub.mean(axis=0),
        "median_loss": np.median(sub, axis=0),
        "n_tokens": np.full(len(names), int(ok.sum()), dtype=np.int64),
    })


def fit_alpha_n(n: np.ndarray, mean_loss: np.ndarray, cfg: AnalysisConfig) -> dict:
    """alpha_N of mean loss vs non-embedding N with the project's fitter: Huber fit of E + A N^-a (E fixed at 0
    unless `fit_offset`), bootstrap CI; or the paper's log-log OLS. Only models up to `fit_max_params` enter
    (the paper fits pythia-19m .. 2.7b of its suite). Falls back to what the number of models allows (two
    models: the two-point slope, no CI; one: nothing)."""
    n = np.asarray(n, dtype=np.float64)
    y = np.asarray(mean_loss, dtype=np.float64)
    if cfg.fit_max_params is not None:
        keep = n <= cfg.fit_max_params
        n, y = n[keep], y[keep]
    k = len(np.unique(n))
    row = {"quantity": "alpha_N", "value": math.nan, "ci_lo": math.nan, "ci_hi": math.nan, "E": math.nan,
           "A": math.nan, "n_points": int(len(n)), "method": "none", "note": ""}
    need_huber = 4 if cfg.fit_offset else 3
    if cfg.fit_method == "huber" and k >= need_huber:
        fit = fit_power_law(n, y, offset=cfg.fit_offset, n_bootstrap=cfg.bootstrap, level=cfg.level, seed=cfg.seed,
                            names=("n_params_nonembed", "mean_loss"))
        row.update(value=fit.params["a"], ci_lo=fit.ci["a"][0], ci_hi=fit.ci["a"][1], E=fit.params["E"],
                   A=fit.params["A"], method=fit.method, note="" if fit.converged else "fit did not converge")
    elif k >= 3:
        fit = fit_loglog_ols(n, y, level=cfg.level, names=("n_params_nonembed", "mean_loss"))
        row.update(value=fit.exponent, ci_lo=-fit.ci[1], ci_hi=-fit.ci[0], E=0.0, A=math.exp(fit.intercept),
                   method=fit.method, note="" if cfg.fit_method == "ols" else
                   f"huber with offset needs >= {need_huber} models; used log-log OLS")
    elif k == 2:
        a = -float(np.log(y[1] / y[0]) / np.log(n[1] / n[0]))
        row.update(value=a, method="two-point", note="two models: slope without a confidence interval")
    else:
        row.update(note="one model: no fit")
    return row


@quanta_task(name="lm-decompose")
def decompose(token_losses: ArtifactRef, *, cfg: AnalysisConfig, store: str) -> dict[str, ArtifactRef]:
    """Scaling table, alpha_N fit and per-token classes from the tokens x models losses."""
    st = Store(store)
    arrays, attrs = st.read_zarr(token_losses)
    loss, ne = arrays["loss"], arrays["n_params_nonembed"]
    table = scaling_table(loss, list(attrs["models"]), arrays["n_params"], ne)
    fit = fit_alpha_n(ne, table.mean_loss.to_numpy(), cfg)
    by_statistic = {stat: classify_curves(loss, ne, cfg.mono_high, cfg.mono_low, cfg.poly_slope, cfg.poly_r2, stat)
                    for stat in POLY_STATISTICS}
    classes = by_statistic[cfg.poly_statistic]
    params = {"analysis": cfg.model_dump(mode="json")}
    scaling_ref = st.write_table("lm.scaling", table, inputs=[token_losses])
    fits_ref = st.write_table("lm.fits", pd.DataFrame([fit]), inputs=[scaling_ref], params=params)
    cls_attrs = {"mono_high": cfg.mono_high, "mono_low": cfg.mono_low, "poly_slope": cfg.poly_slope,
                 "poly_r2": cfg.poly_r2, "poly_statistic": cfg.poly_statistic,
                 "n_valid": int(valid_rows(loss).sum()), "models": list(attrs["models"]),
                 # how many tokens each statistic calls monogenic / polygenic (the report's comparison)
                 "counts_by_statistic": {stat: {"monogenic": int((c["cls"] == MONOGENIC).sum()),
                                                "polygenic": int((c["cls"] == POLYGENIC).sum())}
                                         for stat, c in by_statistic.items()}}
    classes_ref = st.write_zarr("lm.token_classes", classes, cls_attrs, inputs=[token_losses], params=params)
    return {"scaling": scaling_ref, "fits": fits_ref, "classes": classes_ref}


def class_fractions(cls: np.ndarray, n_valid: int, n_models: int) -> dict[str, float]:
    if n_valid == 0:
        return {"monogenic_fraction": math.nan, "polygenic_fraction": math.nan}
    mono = float((cls == MONOGENIC).sum() / n_valid)
    poly = float((cls == POLYGENIC).sum() / n_valid) if n_models >= 3 else math.nan
    return {"monogenic_fraction": mono, "polygenic_fraction": poly}
