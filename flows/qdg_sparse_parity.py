"""The qdg-sparse-parity study as a Prefect flow: QDG where the quanta are known.

spec ─► the chosen MLP of the sparse-parity grid (trained alone) ─► samples of its learned subtasks (and of as many
unlearned ones: the control) ─► per-sample gradient blocks (as configured; with the label sign and the control-bit weights each flipped, to
compare) ─► similarity (Dask ─►
Zarr) ─► labels per (k, seed), k = the number of subtasks and clustering.n_clusters ─► ARI against the true
subtasks and the labels ─► report

The benchmark: for each training regime (config.regimes, each its own cached model: the study's training, longer
training, a wider model, group-lasso fine-tuning, the hand-built modular control) and training seed
(benchmark.training_seeds), each representation (config.representations) under each transform (config.transforms,
parameter-space ones; each its own cached blocks) ─► samples ─► blocks ─► similarity ─► [kNN graph] ─► labels per
(affinity, clusterer): spectral at the true k on the dense affinity and/or the kNN graph, Leiden on the kNN graph ─►
one benchmark table (ARI with bootstrap intervals, the mean over training seeds with a t-interval, label and control
ARI, purity, k-NN purity, specialisation, baselines) ─► report
"""
from __future__ import annotations

import re

from prefect import flow

from schemas import ConfigError
from schemas.jsonable import jsonable
from schemas.qdg import QDGSparseParityConfig
from schemas.qdg_config import DENSE_BYTES_PER_ENTRY
from schemas.qdg_transform import Transform
from storage import Store
from tasks.devices import resolve_device
from tasks.qdg.benchmark import benchmark_records, best_row, parity_benchmark
from tasks.qdg.clustering import cluster_labels
from tasks.qdg.communities import community_labels
from tasks.qdg.dask_cluster import check_local_cluster
from tasks.qdg.frequency import frequency_exponents, frequency_results
from tasks.qdg.gradient_dims import check_projection, parity_gradient_dim
from tasks.qdg.jl_floor import check_jl_floor
from tasks.qdg.ground_truth import ground_truth, ground_truth_report, ground_truth_results
from tasks.qdg.gradients import gradient_block_plan
from tasks.qdg.gradients import GradientConfigError
from tasks.qdg.parity import (ParityModelError, parity_gradient_block, parity_model_plan, parity_parameter_names,
                              parity_samples)
from tasks.qdg.knn import knn_from_similarity
from tasks.qdg.parity_representations import PARAMETER_ROWS, parity_representation_block
from tasks.qdg.regimes import group_lasso_model, modular_model, trained_model
from tasks.qdg.similarity import similarity_matrix
from tasks.sparse_parity.data import build_spec


def variant_name(align_label_sign: bool, control_weights: bool) -> str:
    return ("aligned" if align_label_sign else "plain") + ("+control-weights" if control_weights else "")


IDENTITY = Transform()


def cluster_samples(samples, model, *, align: bool, control_weights: bool, config: QDGSparseParityConfig,
                    store: str, representation: str = "gradient", transform: Transform = IDENTITY,
                    benchmark: bool = False) -> dict:
    """Blocks of one representation (under `transform`) ─► similarity ─► labels at the true k and each
    clustering.n_clusters, every seed. `truth`: the labels at the true k (one per seed). "gradient" with the identity
    is today's QDG gradient (`align`, the configured variant); every other representation is its own block task.
    `benchmark`: only the true k, and per (affinity, clusterer) of the config its labels in `by_affinity`."""
    st = Store(store)
    group = st.open_zarr(samples, validate=False, verify_hash=False)
    n, k_true = int(group["task"].shape[0]), len(group.attrs["subtasks"])
    too_many = [k for k in config.clustering.n_clusters if k >= n]
    if too_many:  # known only now (how many subtasks the model learned): a user error, not a silent drop
        raise ConfigError(f"clustering.n_clusters: k = {too_many[0]} is not below the {n} samples drawn "
                          f"({k_true} subtasks x model.samples_per_subtask): ask for fewer clusters, or more "
                          "model.samples_per_subtask")
    plan = gradient_block_plan(n, config.gradients.block_rows)
    if representation == "gradient" and transform.is_identity():
        blocks = [parity_gradient_block(samples, model, start=start, stop=stop, cfg=config.gradients,
                                        include_control_weights=control_weights, align_label_sign=align, store=store)
                  for start, stop in plan]
    else:
        # the per-unit representations do not read the control-bit columns: keep their blocks' keys free of it
        weights = control_weights and representation in PARAMETER_ROWS
        blocks = [parity_representation_block.with_options(
                      task_run_name=f"qdg-parity-{representation}-{transform.label()}-{start}-{stop}")(
                      samples, model, start=start, stop=stop, representation=representation, cfg=config.gradients,
                      include_control_weights=weights, align_label_sign=False, transform=transform, store=store)
                  for start, stop in plan]
    sim = similarity_matrix(blocks, cfg=config.similarity, store=store)
    cl = config.clustering
    ks = [k_true] if benchmark else sorted({k_true, *cl.n_clusters})
    spectral = cl.spectral()
    pairs = [(k, seed) for k in ks for seed in cl.seeds]
    labels = [cluster_labels(sim, k=k, seed=seed, spectral=spectral, store=store) for k, seed in pairs]
    truth = [lab for lab, (k, _) in zip(labels, pairs) if k == k_true]
    out = {"blocks": blocks, "similarity": sim, "labels": labels, "truth": truth, "by_affinity": {}}
    if benchmark:
        out["by_affinity"] = affinity_labels(sim, truth, n=n, k_true=k_true, config=config, store=store)
    return out


def affinity_labels(sim, truth: list, *, n: int, k_true: int, config: QDGSparseParityConfig, store: str) -> dict:
    """(affinity, clusterer) -> the labels of each clustering of the benchmark: `truth` (dense spectral at the true
    k, already computed) and, from the kNN graph read from `sim`, spectral at the true k and Leiden."""
    cl, spectral, out = config.clustering, config.clustering.spectral(), {}
    knn = (knn_from_similarity(sim, neighbors=min(cl.knn_neighbors, n), weighting=cl.knn_weighting, store=store)
           if "knn" in config.affinities else None)
    for affinity in config.affinities:
        source = sim if affinity == "dense" else knn
        for clusterer in config.clusterers:
            if clusterer == "spectral":
                out[(affinity, clusterer)] = (
                    truth if affinity == "dense" else
                    [cluster_labels.with_options(task_run_name=f"qdg-cluster-knn-k{k_true}-s{seed}")(
                        source, k=k_true, seed=seed, spectral=spectral, store=store) for seed in cl.seeds])
            elif affinity == "knn":
                out[(affinity, clusterer)] = [
                    community_labels(source, seed=cl.seeds[0], graph=cl.graph(), store=store)]
    return out


def training_seeds(config: QDGSparseParityConfig, plan: dict) -> list[int]:
    """The trained regimes' seeds: benchmark.training_seeds, or the looked-into model's seed alone."""
    seeds = config.benchmark.training_seeds
    return list(seeds) if seeds is not None else [plan["seed"]]


def regime_models(spec, *, plan: dict, config: QDGSparseParityConfig, store: str) -> dict:
    """(regime, training seed) -> its cached `qdg.parity_model` (a start model a regime needs is trained even when
    not listed); the modular control of seed s is built on the study model of seed s."""
    trained: dict = {}

    def model_of(regime: str, seed: int):
        if (regime, seed) not in trained:
            trained[(regime, seed)] = trained_model(spec, regime=regime, plan=plan, long_steps=config.long.steps,
                                                    long_weight_decay=config.long.weight_decay,
                                                    wide_width=config.wide.width, seed=seed, store=store)
        return trained[(regime, seed)]

    models = {}
    for seed in training_seeds(config, plan):
        for regime in config.regimes:
            if regime in ("study", "long", "wide"):
                models[(regime, seed)] = model_of(regime, seed)
            elif regime == "group_lasso":
                models[(regime, seed)] = group_lasso_model(model_of(config.group_lasso.start, seed), spec,
                                                           cfg=config.group_lasso, params=plan["params"],
                                                           device=plan["device"], store=store)
            else:
                models[(regime, seed)] = modular_model(
                    model_of("study", seed), spec, learned_threshold_bits=config.model.learned_threshold_bits,
                    eval_samples_per_task=plan["params"]["eval_samples_per_task"], store=store)
    return models


def benchmark_runs(models: dict, spec, *, config: QDGSparseParityConfig, store: str, plan: dict,
                   first: dict) -> dict:
    """(regime, training seed, representation, transform label) -> {model, samples, run, control_samples,
    control_run}. Each training seed has its own samples (model.seed_samples + the seed); the control (unlearned
    subtasks) is clustered for the looked-into model's seed only. The headline model's samples and its configured
    gradient's runs are the ground-truth run's (`first`), not requested again."""
    align, weights = variants(config)[0]
    out = {}

    def extended(run: dict, samples) -> dict:
        n = int(Store(store).open_zarr(samples, validate=False, verify_hash=False)["task"].shape[0])
        k_true = len(Store(store).open_zarr(samples, validate=False, verify_hash=False).attrs["subtasks"])
        return {**run, "by_affinity": affinity_labels(run["similarity"], run["truth"], n=n, k_true=k_true,
                                                      config=config, store=store)}

    for (regime, seed), model in models.items():
        headline = regime == config.regimes[0] and seed == plan["seed"]
        cfg = config.model if seed == plan["seed"] else config.model.model_copy(
            update={"seed_samples": config.model.seed_samples + seed})
        learned = first["learned"] if headline else parity_samples(model, spec, cfg=cfg, control=False, store=store)
        control = None
        if config.model.unlearned_control and regime != "modular" and seed == plan["seed"]:
            control = first["control"] if headline else parity_samples(model, spec, cfg=cfg, control=True,
                                                                       store=store)
        for rep in config.representations:
            for transform in representation_transforms(rep, config):
                if headline and rep == "gradient" and transform.is_identity():
                    run = extended(first["run"], learned)
                    crun = extended(first["control_run"], control) if control is not None else None
                else:
                    run = cluster_samples(learned, model, align=align, control_weights=weights, config=config,
                                          store=store, representation=rep, transform=transform, benchmark=True)
                    crun = (cluster_samples(control, model, align=align, control_weights=weights, config=config,
                                            store=store, representation=rep, transform=transform, benchmark=True)
                            if control is not None else None)
                out[(regime, seed, rep, transform.label())] = {"model": model, "samples": learned, "run": run,
                                                               "control_samples": control, "control_run": crun}
    return out


def representation_transforms(representation: str, config: QDGSparseParityConfig) -> list[Transform]:
    """The transforms a representation is clustered under: every configured one for a parameter-space
    representation, the identity for a unit one; a sign-free transform (power, support) of `gradient` is
    `abs_gradient`'s (|g|^p is the same rows), so it is left to abs_gradient when that is listed too."""
    if representation not in PARAMETER_ROWS:
        return [IDENTITY]
    if representation == "gradient" and "abs_gradient" in config.representations:
        return [t for t in config.transforms if t.power is None and not t.support]
    return list(config.transforms)


def benchmark_table(bench_runs: dict, *, config: QDGSparseParityConfig, store: str):
    """The `qdg-parity-benchmark` task over every run and (affinity, clusterer)."""
    entries, samples, labels, sims, csamples, clabels, models = [], [], [], [], [], [], []
    for (regime, seed, rep, label), e in bench_runs.items():
        for (affinity, clusterer), labs in e["run"]["by_affinity"].items():
            entries.append({"regime": regime, "training_seed": seed, "representation": rep, "transform": label,
                            "affinity": affinity, "clusterer": clusterer})
            samples.append(e["samples"])
            labels.append(labs)
            sims.append(e["run"]["similarity"])
            csamples.append(e["control_samples"])
            clabels.append(e["control_run"]["by_affinity"][(affinity, clusterer)] if e["control_run"] else [])
            models.append(e["model"])
    return parity_benchmark(entries=entries, samples=samples, labels=labels, similarities=sims,
                            control_samples=csamples, control_labels=clabels, models=models,
                            seeds=list(config.clustering.seeds), spectral=config.clustering.spectral(),
                            cfg=config.benchmark, store=store)


def variants(config: QDGSparseParityConfig) -> list[tuple[bool, bool]]:
    """(align_label_sign, include_control_weights) of each clustering of the learned subtasks: the configured one
    first, then each comparison asked for."""
    main = (config.model.align_label_sign, config.model.include_control_weights)
    out = [main]
    if config.compare_label_sign:
        out.append((not main[0], main[1]))
    if config.compare_control_weights:
        out.append((main[0], not main[1]))
    return out


def qdg_sparse_parity_pipeline(config: QDGSparseParityConfig, store: str,
                               key_prefix: str = "qdg-sparse-parity") -> dict:
    sp = config.sparse_parity
    spec = build_spec(task_cfg=sp.task, store=store)
    plan = parity_model_plan(sp, config.model)
    models = regime_models(spec, plan=plan, config=config, store=store)
    model = models[(config.regimes[0], plan["seed"])]
    main = variants(config)
    head = variant_name(*main[0])  # the configured variant (the others are comparisons)

    def clustered(samples, align: bool, weights: bool) -> tuple:
        return samples, cluster_samples(samples, model, align=align, control_weights=weights, config=config,
                                        store=store)

    learned = parity_samples(model, spec, cfg=config.model, control=False, store=store)
    runs = {(variant_name(*v), "learned"): clustered(learned, *v) for v in main}
    control = None
    if config.model.unlearned_control:
        control = parity_samples(model, spec, cfg=config.model, control=True, store=store)
        runs[(head, "control")] = clustered(control, *main[0])
    keys = list(runs)
    table = ground_truth(variants=[v for v, _ in keys], samples_kind=[s for _, s in keys],
                         samples=[runs[k][0] for k in keys],
                         labels=[runs[k][1]["labels"] for k in keys], store=store)
    first = {"learned": learned, "control": control, "run": runs[(head, "learned")][1],
             "control_run": runs[(head, "control")][1] if control is not None else None}
    bench_runs = benchmark_runs(models, spec, config=config, store=store, plan=plan, first=first)
    bench = benchmark_table(bench_runs, config=config, store=store)
    frequency = frequency_stage(bench_runs, config=config, store=store)
    sims = {variant_name(*v): runs[(variant_name(*v), "learned")][1]["similarity"] for v in main}
    report = ground_truth_report(table, model, sims, learned, rcfg=config.report, store=store, key_prefix=key_prefix,
                                 benchmark=bench)
    return {"spec": spec, "model": model, "models": models, "runs": runs, "bench_runs": bench_runs,
            "ground_truth": table, "benchmark": bench, "report": report, "frequency": frequency}


def frequency_stage(bench_runs: dict, *, config: QDGSparseParityConfig, store: str) -> list:
    """With model.sampling = "frequency": every benchmark run's size exponents against the known one (one cached
    `qdg-frequency` task per run, dense affinity, clustering at the true k, first seed); else none."""
    if config.model.sampling != "frequency":
        return []
    return [frequency_exponents.with_options(task_run_name=f"qdg-frequency-{regime}-s{seed}-{rep}-{label}")(
                e["samples"], e["run"]["similarity"], e["run"]["truth"][0], regime=f"{regime}-s{seed}",
                representation=f"{rep}:{label}", spectral=config.clustering.spectral(), seed=config.clustering.seeds[0],
                level=config.benchmark.level, store=store)
            for (regime, seed, rep, label), e in bench_runs.items()]


@flow(name="qdg-sparse-parity", log_prints=True)
def qdg_sparse_parity_flow(config: QDGSparseParityConfig, store: str | None = None) -> dict:
    """QDG on a trained sparse-parity MLP: do the gradient clusters recover its subtasks (the true quanta)?"""
    store = Store(store).url
    refs = qdg_sparse_parity_pipeline(config, store)
    artifacts = {k: refs[k] for k in ("spec", "model", "ground_truth", "report")}
    for (variant, kind), (samples, run) in refs["runs"].items():
        artifacts[f"samples_{kind}"] = samples
        name = variant.replace("+", "_").replace("-", "_")
        artifacts[f"similarity_{name}_{kind}"] = run["similarity"]
        artifacts.update({f"labels_{name}_{kind}_{i}": r for i, r in enumerate(run["labels"])})
    for (regime, seed), ref in refs["models"].items():
        artifacts[f"model_{regime}_s{seed}"] = ref
    artifacts["benchmark"] = refs["benchmark"]
    artifacts.update({f"frequency_{i}": r for i, r in enumerate(refs["frequency"])})
    for (regime, seed, rep, label), e in refs["bench_runs"].items():
        artifacts[f"similarity_{regime}_s{seed}_{rep}_{label}"] = e["run"]["similarity"]
    return {"artifacts": artifacts, "results": results(Store(store), refs, config)}


def results(st: Store, refs: dict, config: QDGSparseParityConfig) -> dict:
    """The study's headline numbers (`quanta run --json`): each variant's ARI against the true subtasks, and the
    benchmark table with its best row."""
    out = ground_truth_results(st, refs, variant_name(*variants(config)[0]))
    bench = st.read_table(refs["benchmark"])
    out.update(benchmark=benchmark_records(bench), best=best_row(bench), regimes=list(config.regimes),
               representations=list(config.representations), transforms=[t.label() for t in config.transforms],
               affinities=list(config.affinities), clusterers=list(config.clusterers),
               frequency=frequency_results([st.read_table(r) for r in refs.get("frequency", [])]))
    return jsonable(out)


def preflight(config: QDGSparseParityConfig) -> None:
    """Before any work: the model asked for is in the grid (width, seed, depth 1), the devices exist and the Dask
    LocalCluster fits this machine."""
    try:
        plan = parity_model_plan(config.sparse_parity, config.model)
    except ParityModelError as e:
        raise ConfigError(str(e)) from None
    if config.gradients.projection_dims is not None:  # every variant's gradients are projected: the smallest decides
        control = {config.model.include_control_weights} | ({True, False} if config.compare_control_weights else set())
        dim = min(parity_gradient_dim(config.sparse_parity, plan["width"], config.gradients, c) for c in control)
        import psutil

        check_projection(dim, config.gradients.projection_dims, "gradients.projection_dims",
                         f"the width-{plan['width']} MLP", psutil.virtual_memory().total)
        check_jl_floor(config.gradients.projection_dims, most_samples(config), "gradients.projection_dims",
                       "samples (at most model.samples_per_subtask x sparse_parity.task.n_tasks)")
    check_sample_budget(config)
    check_transforms(config)
    for value, field in ((config.sparse_parity.grid.device, "sparse_parity.grid.device"),
                         (config.gradients.device, "gradients.device")):
        resolve_device(value, field)  # a DeviceError: one line, exit 2
    check_local_cluster(config.similarity)


def most_samples(config: QDGSparseParityConfig) -> int:
    """The most samples one clustering can have: samples_per_subtask of each of the n_tasks subtasks (the learned
    ones and the unlearned control never both reach it)."""
    return config.model.samples_per_subtask * config.sparse_parity.task.n_tasks


def check_sample_budget(config: QDGSparseParityConfig) -> None:
    """Before any work: every clustering.n_clusters k can be below the number of samples, and the samples' dense
    similarity and spectral clustering (DENSE_BYTES_PER_ENTRY n^2 bytes) and the random baseline (n x
    benchmark.random_dims float64, twice) fit this machine's memory, for the most samples there can be."""
    import psutil

    n, cfg = most_samples(config), config.model
    fields = (f"model.samples_per_subtask x sparse_parity.task.n_tasks = {cfg.samples_per_subtask:,} x "
              f"{config.sparse_parity.task.n_tasks:,} = {n:,}")
    if config.clustering.n_clusters[-1] >= n:
        raise ConfigError(f"clustering.n_clusters: k = {config.clustering.n_clusters[-1]:,} is not below the most "
                          f"samples there can be ({fields})")
    have, dims = psutil.virtual_memory().total, config.benchmark.random_dims
    for need, field, what in ((DENSE_BYTES_PER_ENTRY * n * n, "model.samples_per_subtask",
                               "their dense similarity and spectral clustering"),
                              (16 * n * dims, "benchmark.random_dims", f"the random baseline's {dims:,}-dim rows")):
        if need > have:
            raise ConfigError(f"{field}: {what} need ~{need / 1e9:,.1f} GB for up to {fields} samples, this machine "
                              f"has {have / 1e9:.1f} GB: lower {field}")


def check_transforms(config: QDGSparseParityConfig) -> None:
    """Each transform's `keep` leaves a parameter of the MLP (as selected by `gradients.include`/`exclude`)."""
    try:
        names = parity_parameter_names(config.gradients)
    except GradientConfigError as e:
        raise ConfigError(str(e)) from None
    for i, t in enumerate(config.transforms):
        if t.keep and not any(re.search(p, n) for p in t.keep for n in names):
            raise ConfigError(f"transforms.{i}.keep: {list(t.keep)} matches none of the MLP's parameters {names}")


CONFIG = QDGSparseParityConfig
FLOW = qdg_sparse_parity_flow
