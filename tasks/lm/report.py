"""The lm-losses report: alpha_N, loss distributions by size, monogenic/polygenic examples with their contexts."""
from __future__ import annotations

from matplotlib import colormaps
import numpy as np
import pandas as pd

from schemas.lm import AnalysisConfig, ReportConfig
from schemas.jsonable import jsonable
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.lm.decomposition import MONOGENIC, POLYGENIC, class_fractions, valid_rows
from tasks.lm.tokenizer import load_tokenizer, token_context
from tasks.reporting import Report, md_escape, publish, subplots

POLY_LABEL = {"paper": "loss-on-ln N", "loglog": "log-log"}


def pick_examples(cls: np.ndarray, which: int, k: int, seed: int) -> np.ndarray:
    idx = np.flatnonzero(cls == which)
    if len(idx) <= k:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, size=k, replace=False))


def examples_table(which: int, idx: np.ndarray, loss: np.ndarray, classes: dict, tokenizer, ids, offsets,
                   names: list[str], n_context: int) -> pd.DataFrame:
    rows = []
    for i in idx:
        ctx, tok = token_context(tokenizer, ids, offsets, int(i), n_context)
        row = {"token_index": int(i), "context": md_escape(ctx), "token": md_escape(tok, 40)}
        if which == MONOGENIC:
            row["drop_at"] = names[int(classes["drop_model"][i])]
        else:
            row["slope"] = float(classes["slope"][i])
            row["r2"] = float(classes["r2"][i])
        row.update({f"loss[{n}]": float(loss[i, j]) for j, n in enumerate(names)})
        rows.append(row)
    return pd.DataFrame(rows)


def statistic_counts_table(cls_attrs: dict) -> pd.DataFrame:
    """How many tokens each polygenic statistic calls monogenic / polygenic (the decomposition records both)."""
    counts = cls_attrs.get("counts_by_statistic", {})
    return pd.DataFrame([{"poly_statistic": stat, "used": stat == cls_attrs.get("poly_statistic"),
                          "monogenic": c["monogenic"], "polygenic": c["polygenic"]} for stat, c in counts.items()],
                        columns=["poly_statistic", "used", "monogenic", "polygenic"])


def distribution_figures(rep: Report, dist: dict, names: list[str]) -> None:
    """p(L) on the paper's axes (log loss in bits) and the integrand L·p(L) (linear), one line per model."""
    edges = dist["bin_edges_bits"]
    centres = (edges[:-1] + edges[1:]) / 2
    cmap = colormaps["viridis"]
    fig, axes = subplots(1, 2, shape="row")
    for j, name in enumerate(names):
        c = cmap(j / max(1, len(names) - 1))
        axes[0].plot(centres, dist["density"][j], color=c, lw=1, label=name)
        axes[1].plot(centres, dist["integrand"][j], color=c, lw=1, label=name)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("test cross-entropy L (bits)")
    axes[0].set_ylabel("probability density p(L)")
    axes[0].set_title("distribution p(L)")
    axes[1].set_xlabel("test cross-entropy L (bits)")
    axes[1].set_ylabel("mean-loss integrand L·p(L)")
    axes[1].set_title("integrand L·p(L) (area = mean loss)")
    axes[1].legend(fontsize=7)
    rep.figure("loss_distribution_paper_axes", fig)


def change_figure(rep: Report, loss: np.ndarray, names: list[str]) -> None:
    """Density of the per-token loss change (bits) between adjacent sizes (the notebook's 'changes in loss')."""
    fig, ax = subplots()
    cmap = colormaps["viridis"]
    bits = loss / np.log(2.0)
    for j in range(len(names) - 1):
        ax.hist(bits[:, j + 1] - bits[:, j], bins=np.linspace(-10, 10, 200), histtype="step", density=True,
                color=cmap(j / max(1, len(names) - 2)), label=f"{names[j]} -> {names[j + 1]}")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("change in loss to the next size (bits)")
    ax.set_ylabel("density")
    ax.legend(fontsize=6)
    rep.figure("loss_change_adjacent_sizes", fig)


def distribution_sections(rep: Report, extra: dict, loss: np.ndarray, names: list[str], cfg: AnalysisConfig,
                          plots: bool) -> None:
    trans, resampled = extra["transitions"], extra["alpha_n_resampled"]
    rep.text("## Loss distribution and sharp transitions\n\nThe paper's Figure 3 axes: p(L) over per-token loss "
             "in bits (1000 bins on [0, 18] bits) and the integrand L·p(L), whose area is the mean loss. Tokens "
             f"first learned (< {cfg.learned_bits} bits) by each model, and how many stay learned under every "
             "larger one; the loss change between adjacent sizes.")
    if plots:
        distribution_figures(rep, extra["loss_distribution"], names)
        change_figure(rep, loss, names)
    rep.table("transitions", trans)
    rep.text("alpha_N by log-log OLS with intervals from resampling whole documents (the scored tokens), and "
             "documents and models together:")
    rep.table("alpha_n_resampled", resampled)


def dynamics_section(rep: Report, dyn: dict, plots: bool) -> None:
    """Training dynamics (paper Figure 11): mean loss vs step with alpha_S, p(L) over training, learning steps."""
    table, fit, tok, attrs = dyn["dynamics"], dyn["fit"], dyn["token_dynamics"], dyn["attrs"]
    n, c = int(attrs["n_valid"]), attrs["counts"]
    ci = f"[{fit['ci_lo']:.3g}, {fit['ci_hi']:.3g}]" if np.isfinite(fit["ci_lo"]) else "n/a"
    rep.text(f"## Training dynamics\n\nOne model over {len(table)} checkpoints: **alpha_S = {fit['value']:.3g}** "
             f"(CI {ci}; log-log OLS of mean loss on step{'; ' + fit['note'] if fit['note'] else ''}). Of {n} tokens, "
             f"{c['learned']} end learned (< {attrs['learned_bits']} bits from some checkpoint on); learning curves "
             f"with one sharp drop: {c['sharp']}, gradual: {c['gradual']}.")
    rep.table("dynamics", table)
    if not plots:
        return
    fig, axes = subplots(1, 3, shape="row")
    axes[0].loglog(table.step, table.mean_loss, "o-", ms=3)
    if np.isfinite(fit["value"]):
        axes[0].loglog(table.step, fit["A"] * table.step.to_numpy(float) ** -fit["value"], "k--", lw=1,
                       label=f"alpha_S = {fit['value']:.3g}")
        axes[0].legend(fontsize=7)
    axes[0].set(xlabel="step", ylabel="mean loss (nats)", title="mean loss dynamics")
    dist = dyn["distribution"]
    centres = (dist["bin_edges_bits"][:-1] + dist["bin_edges_bits"][1:]) / 2
    cmap = colormaps["plasma"]
    for j in range(len(table)):
        axes[1].plot(centres, dist["density"][j], color=cmap(j / max(1, len(table) - 1)), lw=0.8)
    axes[1].set(xscale="log", xlabel="test cross-entropy L (bits)", ylabel="p(L)", title="p(L) over training")
    steps = tok["learned_step"][np.isfinite(tok["learned_step"])]
    if steps.size:
        axes[2].hist(steps, bins=np.unique(np.concatenate([table.step.to_numpy(float), [0.0]])))
    axes[2].set(xlabel="step from which the token stays learned", ylabel="tokens", title="per-token learning step")
    rep.figure("training_dynamics", fig)


def build_lm_report(scaling: pd.DataFrame, fit: dict, loss: np.ndarray, classes: dict, cls_attrs: dict, tokenizer,
                    ids: np.ndarray, offsets: np.ndarray, cfg: AnalysisConfig, rcfg: ReportConfig,
                    corpus_note: str = "", extra: dict | None = None, dyn: dict | None = None) -> tuple[Report, dict]:
    names = scaling.model.tolist()
    ne = scaling.n_params_nonembed.to_numpy(dtype=float)
    n_valid = int(cls_attrs["n_valid"])
    fr = class_fractions(classes["cls"], n_valid, len(names))
    rep = Report(rcfg.title, dpi=rcfg.dpi)
    ci = f"[{fit['ci_lo']:.3g}, {fit['ci_hi']:.3g}]" if np.isfinite(fit["ci_lo"]) else "n/a"
    rep.text(f"{corpus_note}{len(names)} models; {n_valid} eval tokens predicted by every model.\n\n"
             f"**alpha_N = {fit['value']:.4g}** (CI {ci}; {fit['method']}{'; ' + fit['note'] if fit['note'] else ''}); "
             f"paper (Pythia on The Pile): 0.083.\n\n"
             f"Monogenic tokens (loss > {cfg.mono_high} then < {cfg.mono_low} nats): "
             f"**{fr['monogenic_fraction']:.4%}**; polygenic ({POLY_LABEL[cfg.poly_statistic]} slope < "
             f"{cfg.poly_slope}, R² > {cfg.poly_r2}): **{fr['polygenic_fraction']:.4%}**. Each statistic's "
             "counts (`paper`: loss in nats on ln N, the paper code's; `loglog`: ln loss on ln N):")
    rep.table("classes_by_statistic", statistic_counts_table(cls_attrs))
    rep.table("scaling", scaling)
    rep.table("alpha_n_fit", pd.DataFrame([fit]))
    ok = valid_rows(loss)
    if rcfg.plots:
        fig, ax = subplots()
        ax.loglog(ne, scaling.mean_loss, "o", label="mean loss")
        if np.isfinite(fit["value"]) and np.isfinite(fit["A"]):
            xs = np.geomspace(ne.min(), ne.max(), 50)
            ax.loglog(xs, fit["E"] + fit["A"] * xs ** -fit["value"], "--", label=f"fit, alpha_N={fit['value']:.3g}")
        ax.set_xlabel("non-embedding parameters N")
        ax.set_ylabel("mean loss (nats/token)")
        ax.legend()
        rep.figure("mean_loss_vs_n", fig)

        fig, ax = subplots()
        sub = loss[ok]
        bins = np.linspace(0, max(1.0, float(np.nanpercentile(sub, 99.5)) if sub.size else 1.0), 60)
        cmap = colormaps["viridis"]
        for j, name in enumerate(names):
            ax.hist(sub[:, j], bins=bins, histtype="step", density=True,
                    color=cmap(j / max(1, len(names) - 1)), label=name)
        ax.set_yscale("log")
        ax.set_xlabel("per-token loss (nats)")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
        rep.figure("loss_distribution_by_size", fig)

        fig, axes = subplots(1, 2, shape="row", sharey=True)
        for ax, which, title in ((axes[0], MONOGENIC, "monogenic"), (axes[1], POLYGENIC, "polygenic")):
            for i in pick_examples(classes["cls"], which, 20, cfg.seed):
                ax.plot(ne, np.maximum(loss[i], 1e-4), alpha=0.6)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{title} curves (up to 20)")
            ax.set_xlabel("non-embedding parameters N")
        axes[0].set_ylabel("loss (nats)")
        rep.figure("example_curves", fig)
    if extra is not None:
        distribution_sections(rep, extra, loss[ok], names, cfg, rcfg.plots)
    if dyn is not None:
        dynamics_section(rep, dyn, rcfg.plots)
    for which, name in ((MONOGENIC, "monogenic_examples"), (POLYGENIC, "polygenic_examples")):
        idx = pick_examples(classes["cls"], which, cfg.n_examples, cfg.seed)
        if len(idx):
            rep.table(name, examples_table(which, idx, loss, classes, tokenizer, ids, offsets, names,
                                           cfg.context_tokens))
        else:
            rep.text(f"_No {name.split('_')[0]} tokens found._")
    return rep, fr


@quanta_task(name="lm-report")
def lm_report(decomposition: dict[str, ArtifactRef], token_losses: ArtifactRef, tokens: ArtifactRef,
              tokenizer: ArtifactRef, distributions: dict[str, ArtifactRef],
              dynamics: dict[str, ArtifactRef] | None = None, *, cfg: AnalysisConfig,
              rcfg: ReportConfig, store: str, key_prefix: str = "lm-losses") -> ArtifactRef:
    """The study's report (markdown with plots, tables) in the store and as keyed Prefect artifacts."""
    st = Store(store)
    scaling = st.read_table(decomposition["scaling"])
    fit = st.read_table(decomposition["fits"]).iloc[0].to_dict()
    classes, cls_attrs = st.read_zarr(decomposition["classes"])
    larr, _ = st.read_zarr(token_losses)
    tarr, _ = st.read_zarr(tokens)
    tok = load_tokenizer(st.local_dir(tokenizer))
    extra = {"loss_distribution": st.read_zarr(distributions["loss_distribution"])[0],
             "transitions": st.read_table(distributions["transitions"]),
             "alpha_n_resampled": st.read_table(distributions["alpha_n_resampled"])}
    dyn = None
    if dynamics is not None:
        tok_arrays, tok_attrs = st.read_zarr(dynamics["token_dynamics"])
        dyn = {"dynamics": st.read_table(dynamics["dynamics"]),
               "fit": st.read_table(dynamics["dynamics_fit"]).iloc[0].to_dict(), "token_dynamics": tok_arrays,
               "attrs": tok_attrs, "distribution": st.read_zarr(dynamics["dynamics_distribution"])[0]}
    rep, _ = build_lm_report(scaling, fit, larr["loss"], classes, cls_attrs, tok, tarr["ids"], tarr["offsets"],
                             cfg, rcfg, extra=extra, dyn=dyn)
    return publish(rep, st, key_prefix, inputs=[*decomposition.values(), token_losses, tokens, tokenizer,
                                                *distributions.values(), *(dynamics or {}).values()],
                   params={"analysis": cfg.model_dump(mode="json")})


def study_results(st: Store, refs: dict) -> dict:
    """The study's `results` (the CLI's JSON): alpha_N with its CI, mean loss per model, class fractions."""
    fit = st.read_table(refs["fits"]).iloc[0]
    scaling = st.read_table(refs["scaling"])
    cls_group = st.open_zarr(refs["token_classes"])
    cls = np.asarray(cls_group["cls"][...])
    n_valid = int(cls_group.attrs["n_valid"])
    tokens = st.open_zarr(refs["eval_tokens"])
    ml = scaling.mean_loss.to_numpy()
    trans = st.read_table(refs["transitions"])
    resampled = st.read_table(refs["alpha_n_resampled"]).set_index("quantity")
    dist = st.open_zarr(refs["loss_distribution"])
    res = {
        "alpha_N": float(fit.value),
        "alpha_N_ci": [float(fit.ci_lo), float(fit.ci_hi)],
        "alpha_N_method": str(fit.method),
        "alpha_N_paper": 0.083,
        "n_tokens": int(tokens["ids"].shape[0]),
        "n_tokens_scored": n_valid,
        "n_documents_eval": int(tokens["doc_id"].shape[0]),
        "n_models": int(len(scaling)),
        "models": scaling.model.tolist(),
        "n_params": [int(v) for v in scaling.n_params],
        "n_params_nonembed": [int(v) for v in scaling.n_params_nonembed],
        "mean_loss": {m: float(v) for m, v in zip(scaling.model, ml)},
        "mean_loss_decreasing": bool(len(ml) > 1 and (np.diff(ml) < 0).all()),
        **class_fractions(cls, n_valid, len(scaling)),
        "poly_statistic": str(cls_group.attrs["poly_statistic"]),
        "classes_by_statistic": dict(cls_group.attrs["counts_by_statistic"]),
        "alpha_N_ci_documents": [float(resampled.loc["alpha_N (resampled documents)", c]) for c in ("ci_lo", "ci_hi")],
        "alpha_N_ci_documents_and_models": [float(resampled.loc["alpha_N (resampled documents and models)", c])
                                            for c in ("ci_lo", "ci_hi")],
        "mean_loss_bits": dict(zip(scaling.model, (float(v) for v in np.asarray(dist["mean_loss_bits"][...])))),
        "stay_learned_fraction": {r.model: float(r.stay_fraction) for r in trans.itertuples() if r.next_model},
        "report_dir": refs["report"].uri,
    }
    if refs.get("dynamics") is not None:  # training dynamics: the checkpoints' alpha_S and learning curves
        dfit = st.read_table(refs["dynamics_fit"]).iloc[0]
        counts = dict(st.open_zarr(refs["token_dynamics"]).attrs["counts"])
        dyn = st.read_table(refs["dynamics"])
        res.update({"alpha_S": float(dfit.value), "alpha_S_ci": [float(dfit.ci_lo), float(dfit.ci_hi)],
                    "dynamics_steps": [int(v) for v in dyn.step],
                    "dynamics_mean_loss": [float(v) for v in dyn.mean_loss],
                    "dynamics_counts": counts})
    return jsonable(res)
