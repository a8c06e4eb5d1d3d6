"""Training dynamics of a language model (paper Figure 11; phase-changes/): per-token losses of one model over its
training checkpoints.

- mean loss vs step, with alpha_S = -(log-log OLS slope) and its t-interval (the paper fits steps 10^4..10^5 of
  each Pythia model; here every checkpoint);
- p(L) over training (`tasks.lm.distributions.loss_distribution`, one row per checkpoint);
- per-token learning curves: the step from which a token's loss stays below `learned_bits` (NaN: never), and the
  curve's class by the decomposition's own rule applied over steps instead of sizes: one sharp drop (loss above
  `mono_high` then below `mono_low`), gradual (the `poly_statistic` fit of the loss on ln step), or neither.

Each checkpoint's losses are their own cached `lm-token-losses` task (a trained suite's checkpoints are saved by its
training task; a pretrained suite's are hub revisions read with `from_pretrained(name, revision=...)`).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from schemas.lm import AnalysisConfig, revision_step
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.lm.decomposition import MONOGENIC, POLYGENIC, classify_curves, valid_rows
from tasks.lm.distributions import LN2, loss_distribution
from tasks.stats import FitError, fit_loglog_ols


def learned_steps(loss_nats: np.ndarray, steps: np.ndarray, learned_bits: float) -> np.ndarray:
    """(tokens,) the first checkpoint step from which the loss stays below `learned_bits` at every later one."""
    low = np.asarray(loss_nats, dtype=np.float64) / LN2 < learned_bits
    stays = np.cumprod(low[:, ::-1], axis=1)[:, ::-1].astype(bool)
    out = np.full(low.shape[0], np.nan)
    any_ = stays.any(axis=1)
    out[any_] = np.asarray(steps, dtype=np.float64)[np.argmax(stays[any_], axis=1)]
    return out


def dynamics_tables(loss_nats: np.ndarray, steps: np.ndarray, names: list[str], cfg: AnalysisConfig):
    """(per-checkpoint table, alpha_S row, per-token arrays, their attrs) from tokens x checkpoints losses."""
    ok = valid_rows(loss_nats)
    sub = np.asarray(loss_nats[ok], dtype=np.float64)
    table = pd.DataFrame({"checkpoint": names, "step": np.asarray(steps, dtype=np.int64),
                          "mean_loss": sub.mean(axis=0) if len(sub) else np.nan,
                          "median_loss": np.median(sub, axis=0) if len(sub) else np.nan,
                          "learned_fraction": (sub / LN2 < cfg.learned_bits).mean(axis=0) if len(sub) else 0.0,
                          "n_tokens": np.full(len(names), int(ok.sum()), dtype=np.int64)})
    fit = {"quantity": "alpha_S", "value": math.nan, "ci_lo": math.nan, "ci_hi": math.nan, "E": 0.0, "A": math.nan,
           "n_points": int(len(steps)), "method": "loglog-ols", "note": ""}
    try:
        f = fit_loglog_ols(np.asarray(steps, float), table.mean_loss.to_numpy(), level=cfg.level)
        fit.update(value=-f.slope, ci_lo=-f.ci[1], ci_hi=-f.ci[0], A=math.exp(f.intercept))
    except FitError as e:
        fit.update(method="none", note=str(e))
    learned = np.full(loss_nats.shape[0], np.nan)
    learned[ok] = learned_steps(sub, steps, cfg.learned_bits)
    cls = np.zeros(loss_nats.shape[0], dtype=np.int8)
    curves = classify_curves(sub, np.asarray(steps, float), cfg.mono_high, cfg.mono_low, cfg.poly_slope,
                             cfg.poly_r2, cfg.poly_statistic)
    cls[ok] = curves["cls"]
    counts = {"sharp": int((cls == MONOGENIC).sum()), "gradual": int((cls == POLYGENIC).sum()),
              "learned": int(np.isfinite(learned).sum())}
    attrs = {"learned_bits": cfg.learned_bits, "n_valid": int(ok.sum()), "counts": counts, "checkpoints": names}
    return table, fit, {"learned_step": learned, "cls": cls}, attrs


@quanta_task(name="lm-assemble-checkpoints")
def assemble_checkpoint_losses(columns: list[ArtifactRef], *, steps: list[int], model: str,
                               store: str) -> ArtifactRef:
    """Stack one model's checkpoint columns, ordered by step, as `lm.checkpoint_losses`."""
    st = Store(store)
    cols = [st.read_zarr(r) for r in columns]
    order = np.argsort(steps, kind="stable")
    toks = {a["tokens"] for _, a in cols}
    if len(toks) != 1:
        raise ValueError(f"checkpoint columns were computed on different tokens artifacts: {sorted(toks)}")
    arrays = {"loss": np.stack([cols[i][0]["loss"] for i in order], axis=1).astype(np.float32),
              "step": np.asarray(steps, dtype=np.int64)[order]}
    attrs = {"model": model, "checkpoints": [cols[i][1]["model"] for i in order], "tokens": toks.pop()}
    return st.write_zarr("lm.checkpoint_losses", arrays, attrs, inputs=list(columns))


@quanta_task(name="lm-dynamics")
def training_dynamics(checkpoint_losses: ArtifactRef, *, cfg: AnalysisConfig, store: str) -> dict[str, ArtifactRef]:
    """Mean loss vs step and alpha_S, p(L) per checkpoint, per-token learning steps and curve classes."""
    st = Store(store)
    arrays, attrs = st.read_zarr(checkpoint_losses)
    loss, steps, names = arrays["loss"], arrays["step"], list(attrs["checkpoints"])
    table, fit, per_token, tok_attrs = dynamics_tables(loss, steps, names, cfg)
    params = {"analysis": cfg.model_dump(mode="json")}
    ok = valid_rows(loss)
    return {
        "dynamics": st.write_table("lm.dynamics", table, inputs=[checkpoint_losses], params=params),
        "dynamics_fit": st.write_table("lm.dynamics_fit", pd.DataFrame([fit]), inputs=[checkpoint_losses],
                                       params=params),
        "token_dynamics": st.write_zarr("lm.token_dynamics", per_token, tok_attrs, inputs=[checkpoint_losses],
                                        params=params),
        "dynamics_distribution": st.write_zarr("lm.loss_distribution", loss_distribution(loss[ok]),
                                               {"models": names, "n_tokens": int(ok.sum())},
                                               inputs=[checkpoint_losses], params=params),
    }


def checkpoint_plan(suite) -> list[tuple[str, int]]:
    """[(revision, step)] of the dynamics model's checkpoints, by step: a trained suite's `checkpoint_steps` (its
    final model is the last, at suite.steps, and is not listed), a pretrained suite's `revisions`."""
    if suite.kind == "trained":
        return [(f"step{s}", s) for s in suite.checkpoint_steps]
    return sorted(((r, revision_step(r)) for r in suite.revisions), key=lambda rs: rs[1])
