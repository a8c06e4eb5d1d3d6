"""The sparse-parity report: plots and tables, in the store and as keyed Prefect artifacts."""
from __future__ import annotations


from matplotlib import colormaps
import numpy as np
import pandas as pd

from schemas.sparse_parity import AlphaSweepConfig, FitConfig, ReportConfig, SparseParityConfig
from schemas.jsonable import jsonable
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.stats import FitError
from tasks.reporting import Report, publish, subplots, value_colorbar
from tasks.sparse_parity.analysis import (exponent_rule, final_rows, fit_exponent, early_stopping, emergence_slope,
                                          scaling_data, theory_checks, width_to_learn)
from tasks.stats.theory import describe_rule


def _legend(ax, fontsize=7):
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize)


def _fit_line(ax, pts: pd.DataFrame, cfg: FitConfig, label: str, fits: pd.DataFrame, alpha: float):
    """Draw the fitted law through `pts`; the label's value and CI come from the fits table (the fit task's
    bootstrap), the curve from a point-estimate refit (no bootstrap: the fit is not paid for twice)."""
    row = fits[(fits.quantity == label) & (fits.alpha == alpha)]
    if not len(row) or row.value.isna().iloc[0]:
        return
    try:
        f = fit_exponent(pts.x.values.astype(float), pts.mean_loss.values, cfg.model_copy(update={"bootstrap": 0}))[3]
    except FitError:
        return
    r = row.iloc[0]
    xs = np.geomspace(pts.x.min(), pts.x.max(), 100)
    ax.plot(xs, f.predict(xs), "k--", lw=1, label=f"{label} = {r.value:.3f} [{r.ci_lo:.3f}, {r.ci_hi:.3f}]")


def exponents_text(fits: pd.DataFrame, slope: dict, fit_cfg: FitConfig) -> str:
    """The headline: each fitted exponent with its CI beside theory, and the steps-to-learn slope."""
    lines = ["Exponents (fitted, with CI) beside the quantization model's predictions "
             "(alpha_N = alpha, alpha_S = alpha_D = alpha/(alpha+1)); losses in bits; final losses at each model's "
             f"own last logged step. Rule: {exponent_rule(fit_cfg.level)}."]
    for r in fits.itertuples():
        if not np.isnan(r.value):
            lines.append(f"- alpha={r.alpha:g} **{r.quantity} = {r.value:.3f}** [{r.ci_lo:.3f}, {r.ci_hi:.3f}] "
                         f"vs theory {r.theory:.3f} ({'consistent' if r.consistent else 'NOT consistent'} at "
                         f"{fit_cfg.level:.0%}, {r.n_points} points, {r.method})")
        else:
            lines.append(f"- alpha={r.alpha:g} {r.quantity}: {r.note}")
    if not np.isnan(slope["slope"]):
        lines.append(f"- steps-to-learn vs frequency slope = {slope['slope']:.3f} "
                     f"[{slope['ci'][0]:.3f}, {slope['ci'][1]:.3f}] (theory -1; paper measured -0.81), "
                     f"{slope['n_points']} subtasks")
    else:
        lines.append(f"- steps-to-learn slope: too few learned subtasks ({slope['n_points']})")
    return "\n".join(lines)


def fresh_or_largest(sub: pd.DataFrame) -> pd.DataFrame:
    """The runs on fresh data, or on the largest training set when there are none."""
    return sub[sub.data_size == (-1 if (sub.data_size == -1).any() else sub.data_size.max())]


def loss_vs_n_figure(sub: pd.DataFrame, data: dict, fits: pd.DataFrame, fit_cfg: FitConfig, alpha: float):
    """Final mean loss vs parameters, per seed, with the alpha_N fit."""
    fig, ax = subplots()
    last = final_rows(fresh_or_largest(sub))
    ax.scatter(last.n_params, last.mean_loss, s=14, c="C0", alpha=0.6, label="final loss (per seed)")
    _fit_line(ax, data["alpha_N"], fit_cfg, "alpha_N", fits, alpha)
    ax.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="mean test loss (bits)",
           title=f"Parameter scaling (alpha={alpha:g}, theory {alpha:.2f})")
    _legend(ax, 7)
    return fig


def loss_vs_steps_figure(sub: pd.DataFrame, data: dict, fits: pd.DataFrame, fit_cfg: FitConfig, alpha: float):
    """Mean loss vs step for each width (light = wide), with the alpha_S fit."""
    fig, ax = subplots()
    base = fresh_or_largest(sub)
    cmap = colormaps["viridis"]
    widths = sorted(base.width.unique())
    bar = value_colorbar(fig, ax, cmap, min(widths), max(widths), "width (hidden units)", log=True)
    for w in widths:
        g = base[base.width == w].groupby("step").mean_loss.mean()
        ax.plot(g.index, g.values, color=bar.cmap(bar.norm(w)), lw=1)
    _fit_line(ax, data["alpha_S"], fit_cfg, "alpha_S", fits, alpha)
    ax.set(xscale="log", yscale="log", xlabel="step", ylabel="mean test loss (bits)",
           title="Loss vs steps, one line per width")
    _legend(ax, 7)
    return fig


def loss_vs_d_figure(data: dict, fits: pd.DataFrame, fit_cfg: FitConfig, alpha: float):
    """Early-stopped loss vs training-set size, with the alpha_D fit."""
    fig, ax = subplots()
    ax.scatter(data["alpha_D"].x, data["alpha_D"].mean_loss, s=16)
    _fit_line(ax, data["alpha_D"], fit_cfg, "alpha_D", fits, alpha)
    ax.set(xscale="log", yscale="log", xlabel="training samples D", ylabel="min test loss (bits)",
           title="Data scaling (early stopping)")
    _legend(ax, 7)
    return fig


def emergence_figure(curves: list[dict]):
    """Per-subtask loss vs step of the widest model on fresh data (else the largest set), coloured by frequency
    rank."""
    c = next((c for c in curves if (c["data_size"] == -1).any()), curves[0])
    m = int(np.argmax(np.where(c["data_size"] == c["data_size"].max() if not (c["data_size"] == -1).any()
                               else c["data_size"] == -1, c["width"], -1)))
    fig, ax = subplots()
    T = c["loss_bits"].shape[-1]
    cmap = colormaps["plasma"]
    for t in range(T):
        ax.plot(c["steps"], c["loss_bits"][m, :, t], color=cmap(t / max(1, T - 1)), lw=0.7, alpha=0.8)
    value_colorbar(fig, ax, cmap, 1, max(2, T), "subtask frequency rank (1 = most frequent)")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set(xscale="log", xlabel="step", ylabel="subtask test loss (bits)",
           title=f"Emergence: width {int(c['width'][m])}, one line per subtask")
    return fig


def steps_to_learn_figure(emergence: pd.DataFrame, slope: dict):
    """The step each subtask was learned vs its frequency, with the fitted slope; None when none was learned."""
    e = emergence.dropna(subset=["learned_step"])
    if not len(e):
        return None
    fig, ax = subplots()
    ax.scatter(e.frequency, e.learned_step, s=8, alpha=0.5, c=np.log(e.width), cmap="viridis")
    value_colorbar(fig, ax, "viridis", e.width.min(), e.width.max(), "width (hidden units)", log=True)
    ref = e[e.width == e.width.max()]
    if not np.isnan(slope["slope"]) and len(ref):
        xs = np.geomspace(e.frequency.min(), e.frequency.max(), 50)
        k = np.exp(np.mean(np.log(ref.learned_step) - slope["slope"] * np.log(ref.frequency)))
        ax.plot(xs, k * xs ** slope["slope"], "k--", lw=1, label=f"slope {slope['slope']:.2f} (theory -1)")
        _legend(ax, 7)
    ax.set(xscale="log", yscale="log", xlabel="subtask frequency p_i", ylabel="step learned",
           title="Steps to learn a subtask vs its frequency")
    return fig


def width_to_learn_figure(emergence: pd.DataFrame):
    """The smallest width that learned each subtask vs its frequency; None when none was learned."""
    wl = width_to_learn(emergence)
    if not len(wl):
        return None
    fig, ax = subplots()
    ax.scatter(wl.frequency, wl.min_width_learned, s=12)
    ax.set(xscale="log", yscale="log", xlabel="subtask frequency p_i", ylabel="smallest width that learned it",
           title="Width needed to learn a subtask vs its frequency")
    return fig


def subtasks_learned_figure(runs: pd.DataFrame):
    """Subtasks learned vs parameters, per alpha and training-set size."""
    fig, ax = subplots()
    for (alpha, d), g in final_rows(runs).groupby(["alpha", "data_size"]):
        gg = g.groupby("n_params").subtasks_learned.mean()
        ax.plot(gg.index, gg.values, marker="o", ms=3, label=f"alpha={alpha:g}, D={'fresh' if d < 0 else d}")
    ax.set(xscale="log", xlabel="parameters N", ylabel="subtasks learned", title="Quanta learned vs N")
    _legend(ax, 6)
    return fig


def add_figures(rep: Report, runs: pd.DataFrame, fits: pd.DataFrame, emergence: pd.DataFrame, curves: list[dict],
                slope: dict, fit_cfg: FitConfig) -> None:
    """Every plot of the report, in order: per alpha the N, steps and D scaling; then emergence, steps and width to
    learn, quanta learned vs N."""
    for alpha in sorted(runs.alpha.unique()):
        sub = runs[runs.alpha == alpha]
        data = scaling_data(sub, fit_cfg)
        rep.figure(f"loss_vs_N_alpha{alpha:g}", loss_vs_n_figure(sub, data, fits, fit_cfg, alpha))
        rep.figure(f"loss_vs_steps_alpha{alpha:g}", loss_vs_steps_figure(sub, data, fits, fit_cfg, alpha))
        if "alpha_D" in data:
            rep.figure(f"loss_vs_D_alpha{alpha:g}", loss_vs_d_figure(data, fits, fit_cfg, alpha))
    rep.figure("emergence_subtask_curves", emergence_figure(curves))
    optional = {"steps_to_learn_vs_frequency": steps_to_learn_figure(emergence, slope),
                "width_to_learn_vs_frequency": width_to_learn_figure(emergence)}
    for name, fig in optional.items():
        if fig is not None:
            rep.figure(name, fig)
    rep.figure("subtasks_learned_vs_N", subtasks_learned_figure(runs))


def step_figure(runs: pd.DataFrame, steps: pd.DataFrame, fit_cfg: FitConfig):
    """Final loss vs N per alpha, on linear loss, with the largest adjacent drop marked (the step test)."""
    fig, ax = subplots()
    for i, r in enumerate(steps.itertuples()):
        pts = scaling_data(runs[runs.alpha == r.alpha], fit_cfg)["alpha_N"].sort_values("x")
        label = "uniform" if r.alpha == 0 else f"alpha={r.alpha:g}"
        ax.plot(pts.x, pts.mean_loss, "o-", ms=3, color=f"C{i}", label=f"{label}: step {r.step_fraction:.2f}")
        if np.isfinite(r.n_before):
            ax.axvspan(r.n_before, r.n_after, color=f"C{i}", alpha=0.12)
    ax.set(xscale="log", xlabel="parameters N", ylabel="final mean test loss (bits)",
           title="One step or a power law (shaded: the largest adjacent drop)")
    _legend(ax, 7)
    return fig


def step_text(steps: pd.DataFrame) -> str:
    lines = ["Step test: the largest drop of the final loss between adjacent sizes as a fraction of the whole drop, "
             "beside the same statistic of the log-log power law fitted to the same points (its null); one step "
             "when the fraction exceeds 0.5 and the power law's."]
    for r in steps.itertuples():
        name = "uniform frequencies" if r.alpha == 0 else f"alpha={r.alpha:g}"
        if np.isfinite(r.step_fraction):
            lines.append(f"- {name}: **{r.step_fraction:.2f}** of the drop between N = {r.n_before:.0f} and "
                         f"{r.n_after:.0f} (power law at the same N: {r.powerlaw_step_fraction:.2f}): "
                         f"{'one step' if r.one_step else 'not one step'}")
        else:
            lines.append(f"- {name}: {r.note}")
    return "\n".join(lines)


def quanta_figure(runs: pd.DataFrame, quanta: pd.DataFrame, fit_cfg: FitConfig):
    """Subtasks learned vs N (fresh data, final) with n = N/C, and vs D (early stopping) with the fitted slope."""
    fig, axes = subplots(1, 2, shape="row")
    for i, (alpha, sub) in enumerate(runs.groupby("alpha")):
        q = quanta[quanta.alpha == alpha].set_index("quantity")
        last = final_rows(sub[sub.data_size == -1]).groupby("n_params").subtasks_learned.mean()
        last = last[last > 0]  # log axes: models that learned nothing are not drawn (nor fitted)
        if len(last):
            axes[0].plot(last.index, last.values, "o", ms=3, color=f"C{i}", label=f"alpha={alpha:g}")
        if len(last) and "params_per_quantum" in q.index and np.isfinite(q.loc["params_per_quantum", "value"]):
            c = q.loc["params_per_quantum", "value"]
            axes[0].plot(last.index, last.index / c, "--", color=f"C{i}", lw=1, label=f"N / C, C = {c:.3g}")
        es = early_stopping(sub)
        if len(es):
            width = fit_cfg.d_width or int(es.width.max())
            d = es[es.width == width].groupby("data_size").subtasks_learned.mean()
            d = d[d > 0]
            label = f"alpha={alpha:g}"
            if "subtasks_vs_D" in q.index and np.isfinite(q.loc["subtasks_vs_D", "value"]):
                qd = q.loc["subtasks_vs_D"]
                label += f": slope {qd['value']:.2f} (theory {qd['theory']:.2f})"
            if len(d):
                axes[1].plot(d.index, d.values, "o-", ms=3, color=f"C{i}", label=label)
    axes[0].set(xlabel="parameters N", ylabel="subtasks learned (final)", title="Quanta per parameter: n = N / C")
    axes[1].set(xlabel="training samples D", ylabel="subtasks learned (early stopping)",
                title="Subtasks learned vs D (paper Figure 9)")
    for ax in axes:
        if ax.lines:
            ax.set(xscale="log", yscale="log")
        else:
            ax.text(0.5, 0.5, "no model learned a subtask", ha="center", transform=ax.transAxes)
        _legend(ax, 7)
    return fig


def build_report(runs: pd.DataFrame, fits: pd.DataFrame, emergence: pd.DataFrame, curves: list[dict],
                 fit_cfg: FitConfig, cfg: ReportConfig, steps: pd.DataFrame | None = None,
                 quanta: pd.DataFrame | None = None) -> Report:
    """The sparse-parity report: exponents vs theory, theory checks, the step test, plots, and the tables behind
    them."""
    rep = Report(cfg.title, dpi=cfg.dpi)
    slope = emergence_slope(emergence, fit_cfg.level)
    rep.text(exponents_text(fits, slope, fit_cfg))
    rep.table("fits", fits)
    if steps is not None:
        rep.text(step_text(steps))
        rep.table("step_test", steps)
        if cfg.plots:
            rep.figure("step_test", step_figure(runs, steps, fit_cfg))
    if quanta is not None:
        rep.text("Counting quanta: the slope of subtasks learned vs N (theory 1: n = N/C), C = parameters per "
                 "learned subtask (geometric mean of N/n, t-interval), and the slope of subtasks learned vs D with "
                 "early stopping (paper Figure 9; theory 1/(alpha+1)); log-log OLS, t-intervals.")
        rep.table("quanta", quanta)
        if cfg.plots:
            rep.figure("quanta_counts", quanta_figure(runs, quanta, fit_cfg))
    checks = theory_checks(fits, fit_cfg.level)
    if len(checks):
        rules = "; ".join(f"{r}: {describe_rule(r, fit_cfg.level)}" for r in checks["rule"].unique())
        rep.text(f"Theory checks (rule per row; {rules}):")
        rep.table("theory_checks", checks)
    if cfg.plots:
        add_figures(rep, runs, fits, emergence, curves, slope, fit_cfg)
    es = early_stopping(runs)
    if len(es):
        rep.text("Data scaling uses each finite-data model at its best logged step (early stopping):")
        rep.table("early_stopping", es.drop(columns=["model_id"]), max_rows=60)
    final = final_rows(runs).drop(columns=["model_id"])
    rep.table("final_losses", final.sort_values(["alpha", "data_size", "seed", "width"]), max_rows=60)
    rep.table("runs", runs, show=False)
    rep.table("emergence", emergence, show=False)
    rep.table("width_to_learn", width_to_learn(emergence), show=False)
    return rep


@quanta_task(name="sparse-parity-report")
def build_sparse_parity_report(runs_ref: ArtifactRef, fits_ref: ArtifactRef, emergence_ref: ArtifactRef,
                               curves_refs: list[ArtifactRef], steps_ref: ArtifactRef, quanta_ref: ArtifactRef, *,
                               fit_cfg: FitConfig, report_cfg: ReportConfig, store: str,
                               key_prefix: str = "sparse-parity") -> ArtifactRef:
    st = Store(store)
    runs, fits, em = st.read_table(runs_ref), st.read_table(fits_ref), st.read_table(emergence_ref)
    curves = [st.read_zarr(r)[0] for r in curves_refs]
    rep = build_report(runs, fits, em, curves, fit_cfg, report_cfg, st.read_table(steps_ref), st.read_table(quanta_ref))
    return publish(rep, st, key_prefix, inputs=[runs_ref, fits_ref, emergence_ref, *curves_refs, steps_ref, quanta_ref],
                   params={"report": report_cfg.model_dump(), "fit": fit_cfg.model_dump()})


@quanta_task(name="combine-fits")
def combine_fits(fits_refs: list[ArtifactRef], *, store: str) -> ArtifactRef:
    """One fits table over several alphas (same schema as a single study's)."""
    st = Store(store)
    df = pd.concat([st.read_table(r) for r in fits_refs], ignore_index=True)
    df = df.sort_values(["quantity", "alpha"]).reset_index(drop=True)
    return st.write_table("sparse_parity.fits", df, inputs=fits_refs)


def sweep_report(fits: pd.DataFrame, cfg: ReportConfig, fit_cfg: FitConfig) -> Report:
    rep = Report(f"{cfg.title}: exponents vs alpha", dpi=cfg.dpi)
    rep.text("Fitted exponents for each alpha (CI at "
             f"{fit_cfg.level:.0%}) beside the quantization model: alpha_N = alpha, alpha_S = alpha_D = "
             f"alpha/(alpha+1). Paper Figure 10 shape. Rule: {exponent_rule(fit_cfg.level)}.")
    rep.table("sweep_fits", fits)
    checks = theory_checks(fits, fit_cfg.level)
    if len(checks):
        rep.text("Theory checks, rule per row: " + "; ".join(f"{r}: {describe_rule(r, fit_cfg.level)}"
                                                             for r in checks["rule"].unique()))
    rep.table("theory_checks", checks)
    if cfg.plots:
        fig, ax = subplots()
        a = np.linspace(max(0.01, fits.alpha.min() * 0.8), fits.alpha.max() * 1.1, 100)
        ax.plot(a, a, "C0-", lw=1, alpha=0.6, label="theory alpha_N = alpha")
        ax.plot(a, a / (a + 1), "C1-", lw=1, alpha=0.6, label="theory alpha_S, alpha_D = alpha/(alpha+1)")
        for q, color, marker in (("alpha_N", "C0", "o"), ("alpha_S", "C1", "s"), ("alpha_D", "C2", "^")):
            sub = fits[(fits.quantity == q) & fits.value.notna()]
            if len(sub):
                ax.errorbar(sub.alpha, sub.value, yerr=[sub.value - sub.ci_lo, sub.ci_hi - sub.value], fmt=marker,
                            color=color, ms=4, capsize=2, label=f"measured {q}")
        ax.set(xlabel="alpha (task frequencies ~ k^-(alpha+1))", ylabel="scaling exponent",
               title="Exponents vs alpha")
        _legend(ax, 7)
        rep.figure("exponents_vs_alpha", fig)
    return rep


@quanta_task(name="alpha-sweep-report")
def build_sweep_report(fits_ref: ArtifactRef, *, report_cfg: ReportConfig, fit_cfg: FitConfig,
                       store: str) -> ArtifactRef:
    st = Store(store)
    rep = sweep_report(st.read_table(fits_ref), report_cfg, fit_cfg)
    return publish(rep, st, "alpha-sweep", inputs=[fits_ref], params={"report": report_cfg.model_dump()})


def config_for_alpha(config: AlphaSweepConfig, alpha: float) -> SparseParityConfig:
    """The sweep's config with task.alpha replaced (and the report titled by alpha)."""
    data = config.model_dump(exclude={"sweep"})
    data["task"]["alpha"] = alpha
    data["report"]["title"] = f"{config.report.title}: alpha = {alpha:g}"
    return SparseParityConfig.model_validate(data)


def sweep_results(st: Store, fits_ref: ArtifactRef, report_ref: ArtifactRef, alphas: list[float]) -> dict:
    """The sweep's `results` (the CLI's JSON): each exponent per alpha with its CI, theory and consistency."""
    fits = st.read_table(fits_ref)
    exponents = [{"alpha": r.alpha, "quantity": r.quantity, "value": r.value, "ci": [r.ci_lo, r.ci_hi],
                  "theory": r.theory, "consistent": None if pd.isna(r.consistent) else bool(r.consistent)}
                 for r in fits.itertuples()]
    return jsonable({"alphas": alphas, "exponents": exponents, "consistent_rule": exponent_rule(None),
                     "report_dir": report_ref.uri})
