"""The qdg report and results: rank-frequency of cluster sizes (each k, their envelope, the fitted and the predicted
slopes), the similarity matrix sorted by cluster, the largest clusters with example contexts (markdown and a
standalone HTML page), each cluster's mean loss across the model suite, seed stability and the Zipf table."""
from __future__ import annotations

import html

import numpy as np
import pandas as pd

from schemas.jsonable import jsonable
from schemas.qdg import ReportConfig, ZipfConfig
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.lm.tokenizer import decode, load_tokenizer, token_context
from tasks.qdg.null import null_results, null_shown, verdict
from tasks.qdg.zipf import headline_exponent, size_envelope, sizes_from_labels
from tasks.reporting import Report, inline_code, publish, subplots

CONSISTENT_RULE = ("consistent iff the rank-frequency slope's confidence interval (OLS t-interval) overlaps the "
                   "interval of -(alpha_N + 1) from the lm-losses fit (or contains -(alpha_N + 1) when alpha_N has "
                   "no interval); the headline is the envelope over k, as in the paper's figure")


# ---------------------------------------------------------------------------------------------- pieces
def shown_k(n_clusters: list[int], rcfg: ReportConfig) -> int:
    return rcfg.k_shown if rcfg.k_shown is not None else max(n_clusters)


def label_order(labels: np.ndarray) -> np.ndarray:
    """Token order grouping clusters together, largest cluster first (labels are canonical: 0 = largest)."""
    return np.argsort(np.asarray(labels), kind="stable")


def heatmap_rows(labels: np.ndarray, max_rows: int) -> np.ndarray:
    """Indices (into the label order) of at most `max_rows` tokens, evenly spaced along the sorted order, so every
    cluster keeps its share of the picture."""
    order = label_order(labels)
    if len(order) <= max_rows:
        return order
    return order[np.linspace(0, len(order) - 1, max_rows).round().astype(np.int64)]


def rank_frequency_figure(sizes_by_k: dict[int, np.ndarray], n_tokens: int, zipf: pd.DataFrame):
    fig, ax = subplots()
    for k in sorted(sizes_by_k):
        s = sizes_by_k[k][sizes_by_k[k] > 0] / n_tokens
        ax.plot(np.arange(1, len(s) + 1), s, lw=0.9, alpha=0.6, label=f"k = {k}")
    env = zipf[zipf.scope == "envelope"]
    if len(env):
        e = env.iloc[0]
        envelope = size_envelope(sizes_by_k, n_tokens)
        envelope = envelope[envelope > 0]
        r = np.arange(1, len(envelope) + 1)
        ax.plot(r, envelope, color="black", lw=1.6, label="envelope")
        lo, hi = int(e.rank_min), int(e.rank_max)
        if np.isfinite(e.slope) and hi >= lo:
            ref = envelope[lo - 1]
            rr = np.arange(lo, hi + 1)
            ax.plot(rr, ref * (rr / lo) ** e.slope, "--", color="tab:red", label=f"fit: slope {e.slope:.2f}")
            if np.isfinite(e.predicted_slope):
                ax.plot(rr, ref * (rr / lo) ** e.predicted_slope, ":", color="tab:blue", lw=1.6,
                        label=f"predicted -(alpha_N + 1) = {e.predicted_slope:.2f}")
    return rank_frequency_axes(fig, ax, "fraction of tokens", "Cluster sizes: rank-frequency")


def similarity_heatmap(c_sub: np.ndarray, labels_sub: np.ndarray, title: str):
    fig, ax = subplots(shape="heatmap")
    im = ax.imshow(c_sub, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    edges = np.flatnonzero(np.diff(labels_sub)) + 0.5
    if len(edges) <= 40:  # cluster boundaries, where they can still be told apart
        for e in edges:
            ax.axhline(e, color="black", lw=0.3, alpha=0.5)
            ax.axvline(e, color="black", lw=0.3, alpha=0.5)
    fig.colorbar(im, ax=ax, label="cosine similarity of gradients")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def cluster_examples(selection: pd.DataFrame, labels: np.ndarray, tokenizer, ids: np.ndarray, offsets: np.ndarray,
                     rcfg: ReportConfig, seed: int = 0) -> pd.DataFrame:
    """`examples_per_cluster` tokens (seeded) of each of the `clusters_shown` largest clusters, with the context
    before them (up to `context_tokens`, inside the document), the token and the selection model's prediction."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(min(rcfg.clusters_shown, int(labels.max()) + 1)):
        members = np.flatnonzero(labels == c)
        if not members.size:
            continue
        pick = np.sort(rng.choice(members, size=min(rcfg.examples_per_cluster, members.size), replace=False))
        for i in pick:
            r = selection.iloc[int(i)]
            ctx, tok = token_context(tokenizer, ids, offsets, int(r.token_index), rcfg.context_tokens)
            rows.append({"cluster": c, "size": int(members.size), "row": int(r.row), "context": ctx, "token": tok,
                         "predicted": decode(tokenizer, np.array([int(r.predicted)])), "loss": float(r.loss)})
    return pd.DataFrame(rows, columns=["cluster", "size", "row", "context", "token", "predicted", "loss"])


def examples_html(examples: pd.DataFrame, title: str) -> str:
    """A standalone page: one section per cluster, each example's context with the token highlighted."""
    out = ["<!doctype html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}pre{white-space:pre-wrap;"
           "background:#f6f6f6;padding:.4em;margin:.3em 0}mark{background:#ffd54f;font-weight:bold}"
           "small{color:#666}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for c, group in examples.groupby("cluster", sort=True):
        out.append(f"<h2>Cluster {c} <small>({int(group['size'].iloc[0])} tokens)</small></h2>")
        for r in group.itertuples():
            out.append(f"<pre>{html.escape(r.context)}<mark>{html.escape(r.token)}</mark></pre>"
                       f"<small>row {r.row}, loss {r.loss:.3g} nats</small>")
    out.append("</body></html>")
    return "\n".join(out)


def cluster_losses(selection: pd.DataFrame, labels: np.ndarray, loss: np.ndarray, models: list[str],
                   n_params_nonembed: np.ndarray, clusters: int) -> pd.DataFrame:
    """Mean loss (nats) of each of the `clusters` largest clusters' tokens under every model of the suite: the
    quantization model expects a cluster's loss to drop at one scale."""
    token_index = selection["token_index"].to_numpy()
    rows = []
    for c in range(min(clusters, int(labels.max()) + 1)):
        idx = token_index[labels == c]
        if not idx.size:
            continue
        per_model = np.nanmean(loss[idx], axis=0)
        for m, ne, v in zip(models, n_params_nonembed, per_model):
            rows.append({"cluster": c, "size": int(idx.size), "model": m, "n_params_nonembed": int(ne),
                         "mean_loss": float(v)})
    return pd.DataFrame(rows, columns=["cluster", "size", "model", "n_params_nonembed", "mean_loss"])


def rank_frequency_axes(fig, ax, ylabel: str, title: str):
    """Log-log axes of a rank-frequency plot (rank of cluster vs a fraction of tokens), with a legend."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rank of cluster")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return fig


def cluster_losses_figure(df: pd.DataFrame):
    fig, ax = subplots()
    for c, g in df.groupby("cluster", sort=True):
        ax.plot(g.n_params_nonembed, g.mean_loss, marker="o", ms=3, lw=1, label=f"cluster {c} ({g['size'].iloc[0]})")
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters")
    ax.set_ylabel("mean loss of the cluster's tokens (nats)")
    ax.legend(fontsize=6, ncol=2)
    return fig


def _interval(lo, hi) -> str:
    return f"[{lo:.3g}, {hi:.3g}]" if np.isfinite(lo) and np.isfinite(hi) else "n/a"


def zipf_summary(zipf: pd.DataFrame) -> pd.DataFrame:
    """The Zipf table as shown (intervals in one column each; every column is in zipf.csv)."""
    return pd.DataFrame({
        "scope": zipf.scope, "k": zipf.k, "clusters": zipf.n_nonempty,
        "ranks": [f"{a}-{b}" for a, b in zip(zipf.rank_min, zipf.rank_max)],
        "slope": zipf.slope, "slope CI": [_interval(a, b) for a, b in zip(zipf.slope_ci_lo, zipf.slope_ci_hi)],
        "MLE exponent": zipf.exponent_mle,
        "MLE CI": [_interval(a, b) for a, b in zip(zipf.exponent_mle_ci_lo, zipf.exponent_mle_ci_hi)],
        "predicted": zipf.predicted_slope,
        "predicted CI": [_interval(a, b) for a, b in zip(zipf.predicted_ci_lo, zipf.predicted_ci_hi)],
        "consistent": zipf.consistent, "note": zipf.note,
    })


# ---------------------------------------------------------------------------------------------- representations
WHAT = {"gradient": "per-token loss gradients (the paper's method)",
        "abs_gradient": "element-wise absolute values of the per-token loss gradients (sign-free)",
        "logit_gradient": "per-token gradients of the target token's logit",
        "activations": "MLP hidden activations of every layer at the predicting position",
        "attribution": "per MLP unit, activation x d(target logit)/d(activation)",
        "ablation": "per MLP unit, -activation x d(loss)/d(activation) (first-order ablation estimate)"}


def representation_summary(zipfs: dict[str, pd.DataFrame], stabilities: dict[str, pd.DataFrame | None],
                           dims: dict[str, int], null: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per representation: dims, the envelope slope with its interval against -(alpha_N + 1), and the
    mean seed-stability ARI."""
    rows = []
    for rep, z in zipfs.items():
        e = z[z.scope == "envelope"].iloc[0]
        st = stabilities.get(rep)
        rows.append({"representation": rep, "dims": dims[rep], "slope": e.slope,
                     "slope CI": _interval(e.slope_ci_lo, e.slope_ci_hi), "predicted": e.predicted_slope,
                     "predicted CI": _interval(e.predicted_ci_lo, e.predicted_ci_hi),
                     "consistent": verdict(e.consistent, null, rep)[0],
                     "seed ARI": float(st.ari.mean()) if st is not None and len(st) else np.nan})
    return pd.DataFrame(rows, columns=["representation", "dims", "slope", "slope CI", "predicted", "predicted CI",
                                       "consistent", "seed ARI"])


def envelopes_figure(sizes: dict[str, tuple[dict[int, np.ndarray], int]], predicted: float):
    fig, ax = subplots()
    for rep, (by_k, n) in sizes.items():
        env = size_envelope(by_k, n)
        env = env[env > 0]
        ax.plot(np.arange(1, len(env) + 1), env, lw=1.2, label=rep)
    if np.isfinite(predicted):
        r = np.arange(1, max(len(b[0]) for b in sizes.values()) + 1)
        ax.plot(r, 0.2 * r ** predicted, ":", color="black", label=f"slope -(alpha_N + 1) = {predicted:.2f}")
    return rank_frequency_axes(fig, ax, "fraction of tokens (envelope over k)",
                               "Cluster-size envelopes by representation")


# an example's line on the page: the last EXAMPLE_CONTEXT_CHARS characters of its context, its token cut to
# EXAMPLE_TOKEN_CHARS, its loss: ~80 characters, one line of the UI's column
EXAMPLE_CONTEXT_CHARS, EXAMPLE_TOKEN_CHARS = 56, 16


def examples_markdown(ex: pd.DataFrame, n_tokens: int) -> str:
    """One short block per cluster, to fit the page's column: its size and share of the `n_tokens` clustered, then
    each example as its context (in code) with the target token marked (bold code) and its loss."""
    out = []
    for c, group in ex.groupby("cluster", sort=True):
        size = int(group["size"].iloc[0])
        out += [f"**Cluster {c}**: {size} tokens, {size / n_tokens:.1%} of the {n_tokens} clustered", ""]
        out += [f"- `{inline_code(r.context, EXAMPLE_CONTEXT_CHARS)}` **`{inline_code(r.token, EXAMPLE_TOKEN_CHARS)}`**"
                f" {r.loss:.2g} nats" for r in group.itertuples()]
        out.append("")
    return "\n".join(out)


def _examples(rep: Report, name: str, ex: pd.DataFrame, title: str, n_tokens: int) -> None:
    rep.text(examples_markdown(ex, n_tokens))
    rep.table_link(name, ex, "Each example with its row, whole context, token, the selection model's prediction "
                   "and loss (nats):")
    page = name.replace("cluster_examples", "clusters") + ".html"
    rep.attach(page, examples_html(ex, title), link="The same examples as a standalone page, token highlighted")


# ---------------------------------------------------------------------------------------------- the builder
def build_qdg_report(st: Store, selection: ArtifactRef, tokens: ArtifactRef, tokenizer: ArtifactRef,
                     token_losses: ArtifactRef, *, representations: dict[str, dict], primary: str,
                     agreement: ArtifactRef | None, rcfg: ReportConfig,
                     projection: ArtifactRef | None = None, null: ArtifactRef | None = None) -> tuple[Report, int]:
    """The study's report (not yet published) and the cluster count it shows. `representations`: {name:
    {"affinity", "block" (any block: its attrs give the dims and projection), "labels" (one `qdg.labels` per cluster
    count, the first seed's), "stability" (or None), "zipf"}}; `primary` is the headline; `agreement` the
    `qdg.representation_ari` (None with one representation)."""
    sel = st.read_table(selection)
    tables = {r: {int(t["k"].iloc[0]): t for t in (st.read_table(x) for x in v["labels"])}
              for r, v in representations.items()}
    zipfs = {r: st.read_table(v["zipf"]) for r, v in representations.items()}
    stabilities = {r: st.read_table(v["stability"]) if v["stability"] is not None else None
                   for r, v in representations.items()}
    battrs = {r: st.open_zarr(v["block"]).attrs for r, v in representations.items()}
    sizes = {r: sizes_from_labels(list(t.values())) for r, t in tables.items()}
    head = representations[primary]
    zdf, (sizes_p, n) = zipfs[primary], sizes[primary]
    k = shown_k(sorted(tables[primary]), rcfg)
    labels_of = {r: t[k].sort_values("row")["label"].to_numpy() for r, t in tables.items()}
    lab = labels_of[primary]
    proj = battrs[primary]["projection"]
    selected_by = (st.lineage(selection.content_hash) or {}).get("params", {}).get("model_label", "?")
    rep = Report(rcfg.title, dpi=rcfg.dpi)
    env = zdf[zdf.scope == "envelope"].iloc[0]
    ndf = st.read_table(null) if null is not None else None
    verdict_, why = headline_verdict(zdf, ndf, primary)
    rep.text(f"**consistent: {verdict_}** — {why}.")
    rep.text(
        f"{n} tokens (selected by model `{selected_by}`); headline representation **{primary}**: {WHAT[primary]}, "
        f"{battrs[primary]['gradient_dim']:,} dimensions"
        + (f" projected to {proj['dims']:,} (JL, seed {proj['seed']})" if isinstance(proj, dict) else "")
        + f"; spectral clustering into k = {', '.join(map(str, sorted(tables[primary])))} clusters.\n\n"
        f"**Envelope slope** {env.slope:.3g} [{env.slope_ci_lo:.3g}, {env.slope_ci_hi:.3g}] vs **predicted** "
        f"-(alpha_N + 1) = {env.predicted_slope:.3g} [{env.predicted_ci_lo:.3g}, {env.predicted_ci_hi:.3g}] "
        f"(paper: -1.24 vs -1.083): by the paper's rule alone, consistent = **{env.consistent}**. Rule: "
        f"{CONSISTENT_RULE}.")
    if ndf is not None and len(ndf):
        rep.text("## Against chance\n\nThe same pipeline (same n, k list, affinity and clustering) on rows with no "
                 "structure: isotropic Gaussian rows of the representation's dimension (gaussian) and the "
                 "representation with each column permuted across rows (permuted); 95% range of the draws, two-sided "
                 "empirical p-value. A statistic inside its null's range says nothing about the data.")
        rep.table("null_summary", null_shown(ndf, ("envelope_slope", "slope_k", "ari_")), max_rows=200)
        rep.table("null", ndf, show=False)
    if rcfg.plots:
        rep.figure("rank_frequency", rank_frequency_figure(sizes_p, n, zdf))
    rep.table("zipf", zdf, show=False)  # every column: zipf.csv and the qdg-zipf table artifact
    rep.table("zipf_summary", zipf_summary(zdf))
    if len(representations) > 1:
        rep.text("## Representations\n\nEach representation clustered alike; the rank-frequency envelope's slope "
                 "(OLS t-interval) against -(alpha_N + 1), and the mean ARI between clustering seeds:")
        dims = {r: int(a["dim"]) for r, a in battrs.items()}
        rep.table("representations", representation_summary(zipfs, stabilities, dims, ndf))
        for r, z in zipfs.items():
            if r != primary:
                rep.table(f"zipf_{r}", z, show=False)
        if rcfg.plots:
            rep.figure("envelopes", envelopes_figure(sizes, float(env.predicted_slope)))
    if agreement is not None:
        rep.text("Agreement between representations' clusterings (adjusted Rand index, same k, first seed; 1 = the "
                 "same partition, ~0 = chance):")
        ari = st.read_table(agreement)
        rep.table("representation_ari", ari[["k", "a", "b", "ari", "n_tokens"]].rename(columns={"n_tokens": "n"}),
                  max_rows=200)
    if stabilities[primary] is not None:
        rep.table("stability", stabilities[primary])
    if projection is not None:
        rep.text(f"Clusters of the JL-projected {primary} against the clusters above (adjusted Rand index, same k "
                 "and seed):")
        rep.table("projection_ari", st.read_table(projection))
    if rcfg.plots and head["affinity"].kind == "qdg.similarity":
        idx = heatmap_rows(lab, rcfg.heatmap_rows)
        c = st.open_zarr(head["affinity"])["c"].get_orthogonal_selection((idx, idx))
        rep.figure("similarity_sorted", similarity_heatmap(np.asarray(c), lab[idx],
                                                           f"{primary} cosine similarity, sorted by cluster (k = {k})"))
    tarr, _ = st.read_zarr(tokens)
    ids, offsets = np.asarray(tarr["ids"]), np.asarray(tarr["offsets"])
    tok = load_tokenizer(st.local_dir(tokenizer))
    for r in [primary, *(x for x in representations if x != primary)]:
        ex = cluster_examples(sel, labels_of[r], tok, ids, offsets, rcfg)
        if len(ex):
            rep.text(f"## The {rcfg.clusters_shown} largest clusters of {r} (k = {k})")
            _examples(rep, "cluster_examples" if r == primary else f"cluster_examples_{r}", ex,
                      f"{rcfg.title}: the largest clusters of {r} (k = {k})", len(labels_of[r]))
    larr, lattrs = st.read_zarr(token_losses)
    cl = cluster_losses(sel, lab, np.asarray(larr["loss"]), list(lattrs["models"]),
                        np.asarray(larr["n_params_nonembed"]), rcfg.clusters_shown)
    if len(cl):
        rep.text(f"Mean loss of the largest {primary} clusters' tokens under each model of the suite:")
        rep.table("cluster_losses", cl.pivot(index=["cluster", "size"], columns="model", values="mean_loss")
                  .reset_index()[["cluster", "size", *lattrs["models"]]])
        if rcfg.plots:
            rep.figure("cluster_losses", cluster_losses_figure(cl))
    return rep, k


# ---------------------------------------------------------------------------------------------- the task
@quanta_task(name="qdg-report")
def qdg_report(selection: ArtifactRef, tokens: ArtifactRef, tokenizer: ArtifactRef, token_losses: ArtifactRef,
               *, representations: dict[str, dict], primary: str, agreement: ArtifactRef | None, rcfg: ReportConfig,
               store: str, key_prefix: str = "qdg", projection: ArtifactRef | None = None,
               null: ArtifactRef | None = None) -> ArtifactRef:
    """The study's report (build_qdg_report), published with its inputs as lineage."""
    st = Store(store)
    rep, k = build_qdg_report(st, selection, tokens, tokenizer, token_losses, representations=representations,
                              primary=primary, agreement=agreement, rcfg=rcfg, projection=projection, null=null)
    inputs = [selection, tokens, tokenizer, token_losses,
              *(x for v in representations.values() for x in (v["affinity"], v["block"], *v["labels"], v["zipf"],
                                                               v["stability"]) if x is not None),
              *(x for x in (agreement, projection, null) if x is not None)]
    return publish(rep, st, key_prefix, inputs=inputs, params={"report": rcfg.model_dump(mode="json"), "k_shown": k,
                                                               "primary": primary})


# ---------------------------------------------------------------------------------------------- results
def headline_verdict(zdf: pd.DataFrame, ndf: pd.DataFrame | None, representation: str) -> tuple[str, str]:
    """`consistent` of the study: on the calibrated headline exponent when the Zipf table has one (against its
    null), else on the paper's envelope slope."""
    head = zdf[zdf.scope == "headline"]
    if len(head):
        value, why = verdict(head.consistent.iloc[0], ndf, representation, "headline_exponent")
        return value, f"headline exponent ({head.note.iloc[0].split(';')[0]}): {why}"
    env = zdf[zdf.scope == "envelope"].iloc[0]
    return verdict(env.consistent, ndf, representation)


def _f(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def qdg_results(st: Store, refs: dict, zcfg: ZipfConfig) -> dict:
    """The study's `results` (the CLI's JSON)."""
    zdf = st.read_table(refs["zipf"])
    battrs = st.open_zarr(refs["gradient_blocks"][0], validate=False, verify_hash=False).attrs
    proj = battrs["projection"]
    per_k = {}
    for r in zdf[zdf.scope == "k"].itertuples():
        per_k[str(r.k)] = {"n_nonempty": int(r.n_nonempty), "rank_window": [int(r.rank_min), int(r.rank_max)],
                           "slope": _f(r.slope), "slope_ci": [_f(r.slope_ci_lo), _f(r.slope_ci_hi)],
                           "zipf_exponent_mle": _f(r.exponent_mle),
                           "zipf_exponent_mle_ci": [_f(r.exponent_mle_ci_lo), _f(r.exponent_mle_ci_hi)],
                           "consistent": r.consistent, "note": r.note}
    env = zdf[zdf.scope == "envelope"].iloc[0]
    stability = {}
    if refs.get("stability") is not None:
        sdf = st.read_table(refs["stability"])
        stability = {str(k): float(g.ari.mean()) for k, g in sdf.groupby("k")}
    projection = {}
    if refs.get("projection") is not None:
        pdf = st.read_table(refs["projection"])
        projection = {"dims": int(pdf.projection_dims.iloc[0]),
                      "ari": {str(r.k): float(r.ari) for r in pdf.itertuples()}}
    alpha = _f(env.alpha_N)
    ndf = st.read_table(refs["null"]) if refs.get("null") is not None else None
    reps = {}
    for rep, per in refs.get("representations", {}).items():
        z = st.read_table(per["zipf"])
        e = z[z.scope == "envelope"].iloc[0]
        battrs_r = st.open_zarr(refs["blocks"][rep][0], validate=False, verify_hash=False).attrs
        sdf = st.read_table(per["stability"]) if per["stability"] is not None else None
        reps[rep] = {"dim": int(battrs_r["dim"]), "envelope_slope": _f(e.slope),
                     "envelope_slope_ci": [_f(e.slope_ci_lo), _f(e.slope_ci_hi)],
                     "consistent": verdict(e.consistent, ndf, rep)[0], "consistent_paper_rule": e.consistent,
                     "slope_by_k": {str(r.k): _f(r.slope) for r in z[z.scope == "k"].itertuples()},
                     "stability_ari": {} if sdf is None else {str(k): float(g.ari.mean()) for k, g in sdf.groupby("k")}}
    agreement = []
    if refs.get("agreement") is not None:
        agreement = [{"k": int(r.k), "a": r.a, "b": r.b, "ari": float(r.ari)}
                     for r in st.read_table(refs["agreement"]).itertuples()]
    primary = refs.get("primary", "gradient")
    verdict_, why = headline_verdict(zdf, ndf, primary)
    res = {
        "representation": primary,
        "n_tokens": int(env.n_tokens),
        "gradient_dim": int(battrs["gradient_dim"]),
        "projection": "none" if proj == "none" else int(proj["dims"]),
        "affinity": refs["affinity"].kind.split(".")[1],
        "n_clusters": sorted(int(k) for k in per_k),
        "per_k": per_k,
        "envelope_slope": _f(env.slope),
        "envelope_slope_ci": [_f(env.slope_ci_lo), _f(env.slope_ci_hi)],
        "alpha_N": alpha,
        "predicted_exponent": None if alpha is None else alpha + 1.0,
        "predicted_exponent_ci": [None if env.predicted_ci_hi is None else _f(-env.predicted_ci_hi),
                                  None if env.predicted_ci_lo is None else _f(-env.predicted_ci_lo)],
        "predicted_slope": _f(env.predicted_slope),
        "consistent": verdict_,
        "consistent_why": why,
        "consistent_paper_rule": env.consistent,
        "consistent_rule": "indeterminate when the envelope slope is inside the range of any null; else the "
                           "paper's rule: " + CONSISTENT_RULE,
        "null": null_results(ndf),
        "headline_exponent": headline_exponent(zdf),
        "stability_ari": stability,
        "projection_ari": projection,
        "representations": reps,
        "representation_ari": agreement,
        "level": zcfg.level,
        "report_dir": refs["report"].uri,
    }
    return jsonable(res)

