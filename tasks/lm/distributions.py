"""The per-token loss distribution and sharp transitions (paper Figure 3; notebooks/ten-million-scaling-curves.ipynb).

- p(L): each model's density of per-token losses in bits on the paper's bins (1000 on [0, 18] bits), and the
  mean-loss integrand L·p(L), whose area is the mean loss (Figure 3 right: the quantization model predicts the
  mass moving from high L to L near 0 as N grows, not the whole distribution sliding down);
- sharp transitions: for each model, the tokens it is the first of the suite to learn (loss < `learned_bits`, the
  paper's 0.3 on curves in bits), and how many of them stay learned under every larger model; the distribution of
  the loss change between adjacent sizes;
- alpha_N's interval from resampling documents (whole documents: their tokens are not independent), and from
  resampling documents and models together (`tasks.stats.resampling`).

Only tokens predicted by every model enter (as in the decomposition).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from schemas.lm import LOSS_HIST_BINS, LOSS_HIST_MAX_BITS, AnalysisConfig
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.lm.decomposition import valid_rows
from tasks.stats import FitError
from tasks.stats.resampling import resampled_loglog_slope

LN2 = math.log(2.0)


def loss_distribution(loss_nats: np.ndarray) -> dict[str, np.ndarray]:
    """loss_nats: (tokens, models), rows every model predicts. Density over the paper's bins (per model; mass
    beyond 18 bits is left out of the density, as numpy's `density=True` on a range does, and counted in
    `fraction_beyond`), the integrand L·p(L) at bin centres, and the mean loss in bits."""
    bits = np.asarray(loss_nats, dtype=np.float64) / LN2
    edges = np.linspace(0.0, LOSS_HIST_MAX_BITS, LOSS_HIST_BINS + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    m = bits.shape[1]
    density = np.zeros((m, LOSS_HIST_BINS))
    for j in range(m):
        if bits.shape[0]:
            density[j], _ = np.histogram(bits[:, j], bins=edges, density=True)
    beyond = (bits > LOSS_HIST_MAX_BITS).mean(axis=0) if bits.shape[0] else np.full(m, np.nan)
    return {"bin_edges_bits": edges, "density": density, "integrand": density * centres[None, :],
            "mean_loss_bits": bits.mean(axis=0) if bits.shape[0] else np.full(m, np.nan),
            "fraction_beyond": np.asarray(beyond, dtype=np.float64)}


def transitions_table(loss_nats: np.ndarray, names: list[str], learned_bits: float) -> pd.DataFrame:
    """Per model j (all but the last): tokens whose first model below `learned_bits` is j, and of those the ones
    below it under every model after j (the paper's loop over `curves[i, :-1] < 0.3`); the loss change
    loss[j+1] - loss[j] in bits over every token: mean, median, 5% and 95% quantiles, fraction that improved."""
    bits = np.asarray(loss_nats, dtype=np.float64) / LN2
    n_tok, m = bits.shape
    low = bits < learned_bits
    rows = []
    any_low = low[:, :-1].any(axis=1) if m > 1 else np.zeros(n_tok, bool)
    first = np.where(any_low, np.argmax(low, axis=1), -1)
    # stays[:, j] = learned under every model from j on
    stays = np.cumprod(low[:, ::-1], axis=1)[:, ::-1].astype(bool)
    for j in range(m):
        row = {"model": names[j], "next_model": names[j + 1] if j + 1 < m else "", "first_learned": 0,
               "stay_learned": 0, "stay_fraction": math.nan, "change_mean": math.nan, "change_median": math.nan,
               "change_q05": math.nan, "change_q95": math.nan, "improved_fraction": math.nan}
        if j + 1 < m:
            who = first == j
            row["first_learned"] = int(who.sum())
            row["stay_learned"] = int((who & stays[:, j]).sum())
            row["stay_fraction"] = row["stay_learned"] / row["first_learned"] if row["first_learned"] else math.nan
            if n_tok:
                d = bits[:, j + 1] - bits[:, j]
                q05, med, q95 = np.quantile(d, [0.05, 0.5, 0.95])
                row.update(change_mean=float(d.mean()), change_median=float(med), change_q05=float(q05),
                           change_q95=float(q95), improved_fraction=float((d < 0).mean()))
        rows.append(row)
    return pd.DataFrame(rows)


def document_sums(loss_nats: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per document: summed loss (nats) of its tokens every model predicts, (docs, models), and their count."""
    loss = np.asarray(loss_nats, dtype=np.float64)
    ok = valid_rows(loss)
    doc = np.searchsorted(np.asarray(offsets), np.arange(loss.shape[0]), side="right") - 1
    n_docs = len(offsets) - 1
    sums = np.zeros((n_docs, loss.shape[1]))
    np.add.at(sums, doc[ok], loss[ok])
    counts = np.bincount(doc[ok], minlength=n_docs).astype(np.float64)
    keep = counts > 0
    return sums[keep], counts[keep]


def resampled_alpha_n(sums: np.ndarray, counts: np.ndarray, n_nonembed: np.ndarray, cfg: AnalysisConfig
                      ) -> pd.DataFrame:
    """Two rows: alpha_N (log-log OLS slope, negated) with the interval from resampling documents, and from
    resampling documents and models. Models above `fit_max_params` are left out, as in the alpha_N fit."""
    n = np.asarray(n_nonembed, dtype=np.float64)
    keep = n <= cfg.fit_max_params if cfg.fit_max_params is not None else np.ones(len(n), bool)
    rows = []
    for quantity, points in (("alpha_N (resampled documents)", False),
                             ("alpha_N (resampled documents and models)", True)):
        row = {"quantity": quantity, "value": math.nan, "ci_lo": math.nan, "ci_hi": math.nan, "E": 0.0,
               "A": math.nan, "n_points": int(keep.sum()), "method": "loglog-ols-resampled", "note": ""}
        try:
            r = resampled_loglog_slope(sums[:, keep], counts, n[keep], n_resamples=cfg.bootstrap,
                                       resample_points=points, level=cfg.level, seed=cfg.seed)
            row.update(value=-r.slope, ci_lo=-r.ci[1], ci_hi=-r.ci[0],
                       note=f"{r.n_resamples} resamples of {r.n_groups} documents")
        except FitError as e:
            row.update(method="none", note=str(e))
        rows.append(row)
    return pd.DataFrame(rows)


@quanta_task(name="lm-distributions")
def loss_distributions(token_losses: ArtifactRef, tokens: ArtifactRef, *, cfg: AnalysisConfig,
                       store: str) -> dict[str, ArtifactRef]:
    """p(L) and L·p(L) per model, the sharp-transitions table, and alpha_N resampled over documents (and models)."""
    st = Store(store)
    arrays, attrs = st.read_zarr(token_losses)
    tarr, _ = st.read_zarr(tokens)
    loss = np.asarray(arrays["loss"][...])
    names = list(attrs["models"])
    ok = valid_rows(loss)
    params = {"analysis": cfg.model_dump(mode="json")}
    dist = loss_distribution(loss[ok])
    dist_ref = st.write_zarr("lm.loss_distribution", dist, {"models": names, "n_tokens": int(ok.sum())},
                             inputs=[token_losses], params=params)
    trans_ref = st.write_table("lm.transitions", transitions_table(loss[ok], names, cfg.learned_bits),
                               inputs=[token_losses], params=params)
    sums, counts = document_sums(loss, tarr["offsets"])
    res = resampled_alpha_n(sums, counts, arrays["n_params_nonembed"], cfg)
    res_ref = st.write_table("lm.alpha_n_resampled", res, inputs=[token_losses, tokens], params=params)
    return {"loss_distribution": dist_ref, "transitions": trans_ref, "alpha_n_resampled": res_ref}
