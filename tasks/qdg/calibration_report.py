"""qdg-calibration's report: the calibration plot (planted e on x, measured on y, the diagonal), the calibration
table, and the goal check of the designed estimator (the issue's: within ±0.1 of the planted e for e in [1.2, 2.0],
interval coverage >= 90% of draws, at a separation where the clustering at k = K has ARI >= 0.9)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from schemas.qdg_calibration import CalibrationReportConfig
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.qdg.size_exponent import ESTIMATOR
from tasks.reporting import Report, publish, subplots

GOAL_RANGE = (1.2, 2.0)
GOAL_BIAS = 0.1
GOAL_COVERAGE = 0.9
GOAL_ARI = 0.9


def shown_k(summary: pd.DataFrame, n_clusters: int) -> int:
    """The k of the k list nearest the planted K (per-k estimators are plotted at it)."""
    ks = sorted(k for k in summary["k"].unique() if k > 0)
    return min(ks, key=lambda k: (abs(math.log(k / n_clusters)), k)) if ks else 0


def curves(summary: pd.DataFrame, n_clusters: int) -> dict[str, pd.DataFrame]:
    """{label: rows of the summary for one estimator (and, per-k ones, at `shown_k`)}, in plotting order."""
    k = shown_k(summary, n_clusters)
    out = {"envelope (the paper's)": summary[summary.estimator == "envelope"]}
    for est in ("rank_slope", "powerlaw_mle", "finite_zipf"):
        out[f"{est}, k = {k}"] = summary[(summary.estimator == est) & (summary.k == k)]
    out[f"{ESTIMATOR} (designed)"] = summary[summary.estimator == ESTIMATOR]
    return out


def goal_check(summary: pd.DataFrame, estimator: str = ESTIMATOR) -> pd.DataFrame:
    """Per separation: does `estimator` meet the goal over the planted e in GOAL_RANGE? Columns separation,
    ari_at_K_min, ari_merged_min (the estimator's own merged clustering), max_abs_bias (of the mean over draws),
    covered / draws (pooled over those e: the goal's "in >= 90% of draws") with its Clopper-Pearson 95% interval
    (coverage_lo, coverage_hi), coverage_min (the lowest per-e coverage), separable (ARI at k = K >= 0.9 at every
    e), met (max_abs_bias <= 0.1 and pooled coverage >= 0.9)."""
    from scipy.stats import binomtest

    rows = []
    d = summary[(summary.estimator == estimator) & summary.planted.between(*GOAL_RANGE)]
    for sep, g in d.groupby("separation"):
        bias = float(np.nanmax(np.abs(g["bias"]))) if g["bias"].notna().any() else math.nan
        covered, draws = int(round(float((g["coverage"] * g["draws"]).sum()))), int(g["draws"].sum())
        ci = binomtest(covered, draws).proportion_ci(0.95, method="exact")
        rows.append({"separation": float(sep), "ari_at_K_min": float(g["ari_at_K"].min()),
                     "ari_merged_min": float(g["ari"].min()), "max_abs_bias": bias, "covered": covered,
                     "draws": draws, "coverage_lo": float(ci.low), "coverage_hi": float(ci.high),
                     "coverage_min": float(g["coverage"].min()), "separable": bool((g["ari_at_K"] >= GOAL_ARI).all()),
                     "met": bool(bias <= GOAL_BIAS and covered >= GOAL_COVERAGE * draws)})
    return pd.DataFrame(rows, columns=["separation", "ari_at_K_min", "ari_merged_min", "max_abs_bias", "covered",
                                       "draws", "coverage_lo", "coverage_hi", "coverage_min", "separable", "met"])


def calibration_figure(rep: Report, summary: pd.DataFrame, n_clusters: int) -> None:
    seps = sorted(summary["separation"].unique())
    fig, axes = subplots(1, len(seps), shape="row", squeeze=False)
    lim = [min(0.8, summary["planted"].min() - 0.1), max(2.6, summary["planted"].max() + 0.3)]
    for ax, sep in zip(axes[0], seps):
        ax.plot(lim, lim, color="0.6", lw=1, ls="--", label="measured = planted")
        for label, rows in curves(summary[summary.separation == sep], n_clusters).items():
            rows = rows.sort_values("planted")
            if rows.empty:
                continue
            y = rows["mean"].to_numpy(dtype=float)
            err = np.vstack([y - rows["lo"].to_numpy(dtype=float), rows["hi"].to_numpy(dtype=float) - y])
            ax.errorbar(rows["planted"], np.clip(y, *lim), yerr=np.clip(np.nan_to_num(err), 0, 5), marker="o",
                        ms=3, capsize=2, lw=1, label=label)
        ari = summary[summary.separation == sep]["ari_at_K"].mean()
        ax.set(xlim=lim, ylim=lim, xlabel="planted exponent e",
               ylabel="measured (mean, 95% of draws; clipped to the frame)",
               title=f"separation {sep:g} (mean ARI at k = K: {ari:.2f})")
    axes[0][0].legend(fontsize=6, loc="upper left")
    rep.figure("calibration", fig)


def calibration_report(summary: pd.DataFrame, *, n_clusters: int, n_rows: int, cfg: CalibrationReportConfig) -> Report:
    rep = Report(cfg.title, dpi=cfg.dpi)
    goal = goal_check(summary)
    lines = [f"Planted clusters: K = {n_clusters}, n = {n_rows} rows, sizes a multinomial sample with p_i ∝ i^-e. "
             f"Goal for `{ESTIMATOR}`: |bias| <= {GOAL_BIAS} for every e in [{GOAL_RANGE[0]}, {GOAL_RANGE[1]}] and "
             f"its interval covering e in >= {GOAL_COVERAGE:.0%} of the draws, at a separation where the clustering "
             f"at k = K has ARI >= {GOAL_ARI}."]
    for g in goal.itertuples():
        lines.append(f"- separation {g.separation:g}: min ARI at k = K {g.ari_at_K_min:.2f} "
                     f"({'separable' if g.separable else 'not separable by that measure'}; the estimator's merged "
                     f"clustering: min ARI {g.ari_merged_min:.2f}); max |bias| "
                     f"{g.max_abs_bias:.3f}, intervals covering e in {g.covered} of {g.draws} draws "
                     f"[{g.coverage_lo:.2f}, {g.coverage_hi:.2f}] (lowest per e {g.coverage_min:.2f}): goal "
                     f"{'met' if g.met else 'NOT met'}")
    lines.append("ARI at k = K is low wherever fewer than K clusters are non-empty or large enough to be found "
                 "(steep e): a clustering into K parts must then split the large ones.")
    rep.text("\n".join(lines))
    if cfg.plots:
        calibration_figure(rep, summary, n_clusters)
    rep.table("goal", goal)
    k = shown_k(summary, n_clusters)
    main = summary[(summary.k == 0) | (summary.k == k) | (summary.estimator == ESTIMATOR)]
    rep.table("calibration", main[["separation", "planted", "estimator", "k", "draws", "mean", "lo", "hi", "bias",
                                   "coverage", "ari_at_K", "ari", "k_chosen"]], max_rows=200)
    rep.table("calibration_all_k", summary, show=False)
    return rep


@quanta_task(name="qdg-calibration-report", task_run_name="qdg-calibration-report")
def calibration_report_task(summary: ArtifactRef, *, n_clusters: int, n_rows: int, cfg: CalibrationReportConfig,
                            store: str) -> ArtifactRef:
    st = Store(store)
    rep = calibration_report(st.read_table(summary), n_clusters=n_clusters, n_rows=n_rows, cfg=cfg)
    return publish(rep, st, "qdg-calibration", inputs=[summary], params={"report": cfg.model_dump()})


def calibration_results(st: Store, summary: ArtifactRef) -> dict:
    """The study's `results` (`quanta run --json`): per separation and estimator (per-k ones as `name@k`), per
    planted e: mean, bias, coverage; and the goal check of the designed estimator."""
    df = st.read_table(summary)

    def f(x) -> float | None:
        return None if x is None or not np.isfinite(x) else round(float(x), 4)

    table: dict = {}
    for r in df.itertuples():
        name = r.estimator if r.k == 0 or r.estimator == ESTIMATOR else f"{r.estimator}@{r.k}"
        table.setdefault(f"{r.separation:g}", {}).setdefault(name, {})[f"{r.planted:g}"] = {
            "mean": f(r.mean), "bias": f(r.bias), "coverage": f(r.coverage), "ari_at_K": f(r.ari_at_K),
            "k_chosen": f(r.k_chosen)}
    goal = goal_check(df)
    return {"estimator": ESTIMATOR, "calibration": table,
            "goal": goal.replace({np.nan: None}).to_dict(orient="records")}
