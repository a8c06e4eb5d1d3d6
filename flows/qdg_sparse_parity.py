"""The qdg-sparse-parity study as a Prefect flow: QDG where the quanta are known.

spec ─► the chosen MLP of the sparse-parity grid (trained alone) ─► samples of its learned subtasks (and of as many
unlearned ones: the control) ─► per-sample gradient blocks (as configured; with the label sign and the control-bit weights each flipped, to
compare) ─► similarity (Dask ─►
Zarr) ─► labels per (k, seed), k = the number of subtasks and clustering.n_clusters ─► ARI against the true
subtasks and the labels ─► report
"""
from __future__ import annotations

from prefect import flow

from schemas import ConfigError
from schemas.qdg import QDGSparseParityConfig
from storage import Store
from tasks.devices import DeviceError, resolve_device
from tasks.qdg.clustering import cluster_labels
from tasks.qdg.dask_cluster import check_local_cluster
from tasks.qdg.gradient_dims import check_projection, parity_gradient_dim
from tasks.qdg.ground_truth import ground_truth, ground_truth_report, ground_truth_results
from tasks.qdg.gradients import gradient_block_plan
from tasks.qdg.parity import ParityModelError, parity_gradient_block, parity_model, parity_model_plan, parity_samples
from tasks.qdg.similarity import similarity_matrix
from tasks.sparse_parity.data import build_spec


def variant_name(align_label_sign: bool, control_weights: bool) -> str:
    return ("aligned" if align_label_sign else "plain") + ("+control-weights" if control_weights else "")


def cluster_samples(samples, model, align: bool, control_weights: bool, config: QDGSparseParityConfig,
                    store: str) -> dict:
    """Gradient blocks ─► similarity ─► labels at the true k and each clustering.n_clusters, every seed."""
    st = Store(store)
    group = st.open_zarr(samples, validate=False, verify_hash=False)
    n, k_true = int(group["task"].shape[0]), len(group.attrs["subtasks"])
    blocks = [parity_gradient_block(samples, model, start, stop, config.gradients, control_weights, align, store)
              for start, stop in gradient_block_plan(n, config.gradients.block_rows)]
    sim = similarity_matrix(blocks, config.similarity, store)
    ks = sorted({k_true, *(k for k in config.clustering.n_clusters if k < n)})
    spectral = config.clustering.spectral()
    labels = [cluster_labels(sim, k, seed, spectral, store) for k in ks for seed in config.clustering.seeds]
    return {"blocks": blocks, "similarity": sim, "labels": labels}


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
    spec = build_spec(sp.task, store)
    plan = parity_model_plan(sp, config.model)
    model = parity_model(spec, plan["width"], plan["seed"], plan["data_size"], plan["params"], store)
    main = variants(config)
    learned = parity_samples(model, spec, config.model, False, store)
    runs = {(variant_name(*v), "learned"): (learned, cluster_samples(learned, model, *v, config, store))
            for v in main}
    if config.model.unlearned_control:
        control = parity_samples(model, spec, config.model, True, store)
        runs[(variant_name(*main[0]), "control")] = (control, cluster_samples(control, model, *main[0], config,
                                                                              store))
    keys = list(runs)
    table = ground_truth([v for v, _ in keys], [s for _, s in keys], [runs[k][0] for k in keys],
                         [runs[k][1]["labels"] for k in keys], store)
    sims = {variant_name(*v): runs[(variant_name(*v), "learned")][1]["similarity"] for v in main}
    report = ground_truth_report(table, model, sims, learned, config.report, store, key_prefix)
    return {"spec": spec, "model": model, "runs": runs, "ground_truth": table, "report": report}


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
    return {"artifacts": artifacts,
            "results": ground_truth_results(Store(store), refs, variant_name(*variants(config)[0]))}


def qdg_sparse_parity_preflight(config: QDGSparseParityConfig) -> None:
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
    for value, field in ((config.sparse_parity.grid.device, "sparse_parity.grid.device"),
                         (config.gradients.device, "gradients.device")):
        try:
            resolve_device(value, field)
        except DeviceError as e:
            raise ConfigError(str(e)) from None
    check_local_cluster(config.similarity)


CONFIG = QDGSparseParityConfig
FLOW = qdg_sparse_parity_flow
PREFLIGHT = qdg_sparse_parity_preflight
