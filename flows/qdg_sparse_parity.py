"""The qdg-sparse-parity study as a Prefect flow: QDG where the quanta are known.

spec ─► the chosen MLP of the sparse-parity grid (trained alone) ─► samples of its learned subtasks (and of as many
unlearned ones: the control) ─► per-sample gradient blocks (as configured; with the label sign and the control-bit weights each flipped, to
compare) ─► similarity (Dask ─►
Zarr) ─► labels per (k, seed), k = the number of subtasks and clustering.n_clusters ─► ARI against the true
subtasks and the labels ─► report

The benchmark: for each training regime (config.regimes, each its own cached model: the study's training, longer
training, group-lasso fine-tuning, the hand-built modular control) and each representation (config.representations,
each its own cached blocks) ─► samples ─► blocks ─► similarity ─► labels ─► one benchmark table (ARI with bootstrap
intervals, label and control ARI, purity, specialisation, baselines) ─► report
"""
from __future__ import annotations

from prefect import flow

from schemas import ConfigError
from schemas.jsonable import jsonable
from schemas.qdg import QDGSparseParityConfig
from schemas.qdg_config import DENSE_BYTES_PER_ENTRY
from storage import Store
from tasks.devices import resolve_device
from tasks.qdg.benchmark import benchmark_records, best_row, parity_benchmark
from tasks.qdg.clustering import cluster_labels
from tasks.qdg.dask_cluster import check_local_cluster
from tasks.qdg.gradient_dims import check_projection, parity_gradient_dim
from tasks.qdg.jl_floor import check_jl_floor
from tasks.qdg.ground_truth import ground_truth, ground_truth_report, ground_truth_results
from tasks.qdg.gradients import gradient_block_plan
from tasks.qdg.parity import ParityModelError, parity_gradient_block, parity_model_plan, parity_samples
from tasks.qdg.parity_representations import PARAMETER_ROWS, parity_representation_block
from tasks.qdg.regimes import group_lasso_model, modular_model, trained_model
from tasks.qdg.similarity import similarity_matrix
from tasks.sparse_parity.data import build_spec


def variant_name(align_label_sign: bool, control_weights: bool) -> str:
    return ("aligned" if align_label_sign else "plain") + ("+control-weights" if control_weights else "")


def cluster_samples(samples, model, *, align: bool, control_weights: bool, config: QDGSparseParityConfig,
                    store: str, representation: str = "gradient") -> dict:
    """Blocks of one representation ─► similarity ─► labels at the true k and each clustering.n_clusters, every
    seed. `truth`: the labels at the true k (one per seed). "gradient" is today's QDG gradient (`align`, the
    configured variant); every other representation is its own block task."""
    st = Store(store)
    group = st.open_zarr(samples, validate=False, verify_hash=False)
    n, k_true = int(group["task"].shape[0]), len(group.attrs["subtasks"])
    too_many = [k for k in config.clustering.n_clusters if k >= n]
    if too_many:  # known only now (how many subtasks the model learned): a user error, not a silent drop
        raise ConfigError(f"clustering.n_clusters: k = {too_many[0]} is not below the {n} samples drawn "
                          f"({k_true} subtasks x model.samples_per_subtask): ask for fewer clusters, or more "
                          "model.samples_per_subtask")
    plan = gradient_block_plan(n, config.gradients.block_rows)
    if representation == "gradient":
        blocks = [parity_gradient_block(samples, model, start=start, stop=stop, cfg=config.gradients,
                                        include_control_weights=control_weights, align_label_sign=align, store=store)
                  for start, stop in plan]
    else:
        # the per-unit representations do not read the control-bit columns: keep their blocks' keys free of it
        weights = control_weights and representation in PARAMETER_ROWS
        blocks = [parity_representation_block(samples, model, start=start, stop=stop, representation=representation,
                                              cfg=config.gradients, include_control_weights=weights,
                                              align_label_sign=False, store=store)
                  for start, stop in plan]
    sim = similarity_matrix(blocks, cfg=config.similarity, store=store)
    ks = sorted({k_true, *config.clustering.n_clusters})
    spectral = config.clustering.spectral()
    pairs = [(k, seed) for k in ks for seed in config.clustering.seeds]
    labels = [cluster_labels(sim, k=k, seed=seed, spectral=spectral, store=store) for k, seed in pairs]
    truth = [lab for lab, (k, _) in zip(labels, pairs) if k == k_true]
    return {"blocks": blocks, "similarity": sim, "labels": labels, "truth": truth}


def regime_models(spec, *, plan: dict, config: QDGSparseParityConfig, store: str) -> dict:
    """regime -> its cached `qdg.parity_model` (a start model a regime needs is trained even when not listed)."""
    trained: dict = {}

    def model_of(regime: str):
        if regime not in trained:
            trained[regime] = trained_model(spec, regime=regime, plan=plan, long_steps=config.long.steps,
                                            long_weight_decay=config.long.weight_decay, store=store)
        return trained[regime]

    models = {}
    for regime in config.regimes:
        if regime in ("study", "long"):
            models[regime] = model_of(regime)
        elif regime == "group_lasso":
            models[regime] = group_lasso_model(model_of(config.group_lasso.start), spec, cfg=config.group_lasso,
                                               params=plan["params"], device=plan["device"], store=store)
        else:
            models[regime] = modular_model(model_of("study"), spec,
                                           learned_threshold_bits=config.model.learned_threshold_bits,
                                           eval_samples_per_task=plan["params"]["eval_samples_per_task"], store=store)
    return models


def benchmark_runs(models: dict, spec, *, config: QDGSparseParityConfig, store: str, first: dict) -> dict:
    """(regime, representation) -> {samples, run, control_samples, control_run}; the first regime's gradient reuses
    the configured variant's runs (`first`)."""
    align, weights = variants(config)[0]
    out = {}
    for regime, model in models.items():
        headline = regime == config.regimes[0]
        learned = first["learned"] if headline else parity_samples(model, spec, cfg=config.model, control=False,
                                                                   store=store)
        control = None
        if config.model.unlearned_control and regime != "modular":  # the modular model has no unit for them
            control = first["control"] if headline else parity_samples(model, spec, cfg=config.model, control=True,
                                                                       store=store)
        for rep in config.representations:
            if headline and rep == "gradient":
                run, crun = first["run"], first["control_run"]
            else:
                run = cluster_samples(learned, model, align=align, control_weights=weights, config=config,
                                      store=store, representation=rep)
                crun = (cluster_samples(control, model, align=align, control_weights=weights, config=config,
                                        store=store, representation=rep) if control is not None else None)
            out[(regime, rep)] = {"samples": learned, "run": run, "control_samples": control, "control_run": crun}
    return out


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
    model = models[config.regimes[0]]
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
    bench_runs = benchmark_runs(models, spec, config=config, store=store, first=first)
    entries = list(bench_runs.items())
    bench = parity_benchmark(
        regimes=[r for (r, _), _ in entries], representations=[p for (_, p), _ in entries],
        samples=[e["samples"] for _, e in entries], labels=[e["run"]["truth"] for _, e in entries],
        control_samples=[e["control_samples"] for _, e in entries],
        control_labels=[e["control_run"]["truth"] if e["control_run"] else [] for _, e in entries], models=models,
        seeds=list(config.clustering.seeds), spectral=config.clustering.spectral(), cfg=config.benchmark, store=store)
    sims = {variant_name(*v): runs[(variant_name(*v), "learned")][1]["similarity"] for v in main}
    report = ground_truth_report(table, model, sims, learned, rcfg=config.report, store=store, key_prefix=key_prefix,
                                 benchmark=bench)
    return {"spec": spec, "model": model, "models": models, "runs": runs, "bench_runs": bench_runs,
            "ground_truth": table, "benchmark": bench, "report": report}


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
    for regime, ref in refs["models"].items():
        artifacts[f"model_{regime}"] = ref
    artifacts["benchmark"] = refs["benchmark"]
    for (regime, rep), e in refs["bench_runs"].items():
        artifacts[f"similarity_{regime}_{rep}"] = e["run"]["similarity"]
    return {"artifacts": artifacts, "results": results(Store(store), refs, config)}


def results(st: Store, refs: dict, config: QDGSparseParityConfig) -> dict:
    """The study's headline numbers (`quanta run --json`): each variant's ARI against the true subtasks, and the
    benchmark table with its best row."""
    out = ground_truth_results(st, refs, variant_name(*variants(config)[0]))
    bench = st.read_table(refs["benchmark"])
    out.update(benchmark=benchmark_records(bench), best=best_row(bench), regimes=list(config.regimes),
               representations=list(config.representations))
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
    if "modular" in config.regimes and config.sparse_parity.task.k != 3:
        raise ConfigError(f"regimes: the 'modular' control is built for k = 3 bits per subtask (sparse_parity.task.k "
                          f"= {config.sparse_parity.task.k}): drop 'modular' from regimes")
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


CONFIG = QDGSparseParityConfig
FLOW = qdg_sparse_parity_flow
