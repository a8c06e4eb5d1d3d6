"""QDG against known quanta: the clusters of sparse-parity gradients compared with the true subtask (and the label)
of every sample, by adjusted Rand index; and the study's report and results."""
from __future__ import annotations

import numpy as np
import pandas as pd

from schemas.jsonable import jsonable
from schemas.qdg import ReportConfig
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.qdg.clustering import labels_ari
from tasks.qdg.report import heatmap_rows, similarity_heatmap
from tasks.reporting import Report, publish

VARIANTS = ("plain", "aligned", "plain+control-weights", "aligned+control-weights")
SAMPLES = ("learned", "control")


def ground_truth_rows(task: np.ndarray, label: np.ndarray, tables: list[pd.DataFrame], variant: str,
                      samples: str) -> list[dict]:
    """One row per `qdg.labels` table over the samples (rows 0..n-1 in sample order)."""
    rows = np.arange(len(task))
    truth = pd.DataFrame({"row": rows, "label": task})
    sign = pd.DataFrame({"row": rows, "label": label})
    return [{"variant": variant, "samples": samples, "k": int(df["k"].iloc[0]), "seed": int(df["seed"].iloc[0]),
             "n_samples": int(len(task)), "n_subtasks": int(len(np.unique(task))),
             "ari_subtask": labels_ari(df, truth), "ari_label": labels_ari(df, sign)} for df in tables]


@quanta_task(name="qdg-ground-truth")
def ground_truth(*, variants: list[str], samples_kind: list[str], samples: list[ArtifactRef],
                 labels: list[list[ArtifactRef]], store: str) -> ArtifactRef:
    """`qdg.ground_truth`: for each entry i (variant, learned/control samples, its `qdg.parity_samples` and the
    `qdg.labels` of its clusterings), the ARI of every clustering against the true subtasks and the labels."""
    st = Store(store)
    rows = []
    for variant, kind, sref, lrefs in zip(variants, samples_kind, samples, labels, strict=True):
        arrays, _ = st.read_zarr(sref)
        rows += ground_truth_rows(np.asarray(arrays["task"]), np.asarray(arrays["label"]),
                                  [st.read_table(r) for r in lrefs], variant, kind)
    df = pd.DataFrame(rows).astype({"k": "int64", "seed": "int64", "n_samples": "int64", "n_subtasks": "int64"})
    inputs = list(dict.fromkeys([*samples, *(r for lr in labels for r in lr)]))
    return st.write_table("qdg.ground_truth", df, inputs=inputs)


def headline(df: pd.DataFrame, variant: str, kind: str) -> pd.DataFrame:
    """Rows at the true number of subtasks."""
    sub = df[(df.variant == variant) & (df.samples == kind)]
    return sub[sub.k == sub.n_subtasks]


def headline_table(df: pd.DataFrame) -> pd.DataFrame:
    """The headline rows (k = the number of subtasks) of each variant and samples, seeds averaged, with short column
    names that fit the page (the caption says what they are)."""
    rows = []
    for variant in VARIANTS:
        for kind in SAMPLES:
            h = headline(df, variant, kind)
            if len(h):
                rows.append({"gradients": variant, "subtasks": kind, "k": int(h.k.iloc[0]), "seeds": int(len(h)),
                             "ARI": f"{h.ari_subtask.mean():.3f}", "lbl": f"{h.ari_label.mean():.3f}"})
    return pd.DataFrame(rows, columns=["gradients", "subtasks", "k", "seeds", "ARI", "lbl"])


@quanta_task(name="qdg-sparse-parity-report")
def ground_truth_report(table: ArtifactRef, model: ArtifactRef, similarities: dict[str, ArtifactRef],
                        samples: ArtifactRef, *, rcfg: ReportConfig, store: str,
                        key_prefix: str = "qdg-sparse-parity", benchmark: ArtifactRef | None = None) -> ArtifactRef:
    """The report: the benchmark table (representation x regime), the ARI table of the gradient variants, and the
    similarity of each variant sorted by true subtask."""
    st = Store(store)
    df = st.read_table(table)
    marr, mattrs = st.read_zarr(model)
    sarr, sattrs = st.read_zarr(samples)
    task = np.asarray(sarr["task"])
    rep = Report(rcfg.title, dpi=rcfg.dpi)
    loss = np.asarray(marr["subtask_loss_bits"])
    rep.text(f"Model: width {mattrs['width']}, seed {mattrs['seed']}, {mattrs['steps']} steps; "
             f"{len(sattrs['subtasks'])} of {mattrs['n_tasks']} subtasks learned (test loss < "
             f"{sattrs['learned_threshold_bits']} bits), {sattrs['samples_per_subtask']} samples each. Clusters are "
             "compared with the true subtask of each sample (the known quanta) and with its label by adjusted Rand "
             "index (1 = the same partition, 0 = chance).")
    rep.text("**Gradient variants against the known quanta**: ARI = adjusted Rand index of the clusters at k = the "
             "number of subtasks against the true subtasks, mean over `seeds` clustering seeds; lbl = the same "
             "clusters against the labels; `control` = as many unlearned subtasks (~0 expected).")
    rep.table("ground_truth_headline", headline_table(df))
    if benchmark is not None:
        benchmark_section(rep, st.read_table(benchmark))
    rep.table_link("ground_truth", df, "Every clustering (each variant, samples, k and seed) with both ARIs:")
    rep.table("subtask_loss_bits", pd.DataFrame({"subtask": np.arange(len(loss)), "test_loss_bits": loss}),
              max_rows=64)
    if rcfg.plots:
        for name, ref in similarities.items():
            idx = heatmap_rows(task, rcfg.heatmap_rows)
            c = np.asarray(st.open_zarr(ref)["c"].get_orthogonal_selection((idx, idx)))
            title = f"{name} gradients, sorted by true subtask"
            rep.figure(f"similarity_{name.replace('+', '_')}", similarity_heatmap(c, task[idx], title))
    extra = [benchmark] if benchmark is not None else []
    return publish(rep, st, key_prefix, inputs=[table, model, samples, *similarities.values(), *extra],
                   params={"report": rcfg.model_dump(mode="json")})


def benchmark_section(rep: Report, bench: pd.DataFrame) -> None:
    """The benchmark table (short columns: it is also the `<prefix>-benchmark` Prefect table artifact) and the
    best parameter-space representation against the goal."""
    from tasks.qdg.benchmark import best_row, headline_rows, short_table

    rep.text("**Benchmark: which representation, transform, affinity and training regime recover the known quanta?** "
             "ARI = adjusted Rand index of the clusters (spectral: k = the number of sampled subtasks; leiden: the "
             "communities found) against the true subtasks; seed = the model's training seed, or `mean` over them "
             "(CI: t-interval over the models; for one model: bootstrap interval over samples); min = the smallest "
             "over the models; lbl = ARI against the labels; ctrl = ARI on as "
             "many unlearned subtasks (the control, ~0 expected); pur = mean per-subtask purity; 15nn = fraction of "
             "a sample's nearest neighbours in its own subtask (does the model separate them?); spec = fraction of "
             "used hidden units whose ablation hurts one subtask far more than the others. Baselines: control_bits "
             "(the ceiling, 1), task_bits and random (the floor, ~0). `modular` is the hand-built positive control.")
    rep.table("benchmark", short_table(headline_rows(bench)), max_rows=200)
    best = best_row(bench)
    if best is not None:
        verdict = "reaches" if best["ari"] >= 0.9 else "does not reach"
        rep.text(f"Best parameter-space representation on a trained model: {best['representation']} "
                 f"({best['transform']}, {best['affinity']}/{best['clusterer']}) under {best['regime']} "
                 f"({best['n_models']} model(s), min {best['ari_min']:.2f}), ARI {best['ari']:.2f} "
                 f"[{best['ari_ci'][0]:.2f}, {best['ari_ci'][1]:.2f}]: it "
                 f"{verdict} the goal (ARI >= 0.9).")


def result_key(stem: str, variant: str, main: str) -> str:
    """`ground_truth_ari` for the configured variant, `ground_truth_ari_aligned_with_control_weights` for another."""
    if variant == main:
        return stem
    return f"{stem}_" + variant.replace("+control-weights", "_with_control_weights")


def ground_truth_results(st: Store, refs: dict, main_variant: str) -> dict:
    df = st.read_table(refs["ground_truth"])
    res: dict = {"variant": main_variant}
    for variant in VARIANTS:
        for kind in SAMPLES:
            h = headline(df, variant, kind)
            if not len(h):
                continue
            key = result_key("ground_truth_ari" if kind == "learned" else "control_ari", variant, main_variant)
            res[key] = float(h.ari_subtask.mean())
            res[key + "_by_seed"] = [float(v) for v in h.ari_subtask]
            if kind == "learned":
                res[result_key("label_ari", variant, main_variant)] = float(h.ari_label.mean())
    first = headline(df, main_variant, "learned")
    res["n_subtasks"] = int(first.n_subtasks.iloc[0])
    res["n_samples"] = int(first.n_samples.iloc[0])
    res["rule"] = ("ground_truth_ari: adjusted Rand index between the clusters at k = n_subtasks and the true "
                   "subtasks (mean over clustering seeds; 1 = the subtasks exactly, 0 = chance); label_ari: the same "
                   "clusters against the samples' labels; control_ari: the same on as many unlearned subtasks "
                   "(expect ~0)")
    res["goal"] = "ground_truth_ari >= 0.9 on the demo model"
    res["report_dir"] = refs["report"].uri
    return jsonable(res)
