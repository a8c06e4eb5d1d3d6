"""The qdg study as a Prefect flow (paper Section 4, second half: quanta discovery with gradients).

lm-losses pipeline (corpus ─► tokens ─► suite ─► token losses ─► alpha_N) ─► selection ─► gradient blocks (one
cached task per block) ─► similarity C = G G^T (Dask ─► Zarr; or a sparse kNN affinity past dense_max_n) ─► labels
per (k, seed) ─► stability (ARI between seeds; and, optionally, against JL-projected gradients' clusters)
─► Zipf fits vs -(alpha_N + 1) ─► report
"""
from __future__ import annotations

import psutil
from prefect import flow

from flows.lm_losses import lm_losses_pipeline
from flows.lm_losses import preflight as lm_preflight
from schemas import ConfigError
from schemas.qdg import QDGConfig
from storage import Store
from tasks.devices import DeviceError, resolve_device
from tasks.lm.losses import model_fingerprint
from tasks.qdg.clustering import cluster_labels, clustering_stability, projection_agreement
from tasks.qdg.dask_cluster import check_local_cluster
from tasks.qdg.gradient_dims import check_projection, lm_gradient_dim
from tasks.qdg.gradients import gradient_block, gradient_block_plan
from tasks.qdg.knn import knn_affinity
from tasks.qdg.report import qdg_report, qdg_results
from tasks.qdg.selection import select_tokens, selection_label
from tasks.qdg.similarity import similarity_matrix
from tasks.qdg.zipf import zipf_analysis

DENSE_BYTES_PER_ENTRY = 28  # ClusteringConfig.dense_max_n: C, the affinity and scikit-learn's working copies


def selection_model(config: QDGConfig, lm: dict, store: str) -> dict:
    """The suite model that selects tokens and gives the gradients: a trained suite's `lm.model` ref, or a
    pretrained name with its revision and content fingerprint."""
    suite = config.lm.suite
    attrs = Store(store).open_zarr(lm["token_losses"], validate=False, verify_hash=False).attrs
    label = selection_label(list(attrs["models"]), config.selection)
    if suite.kind == "trained":
        return {"model": lm["models"][[s.label for s in suite.sizes].index(label)], "model_name": None,
                "revision": None, "fingerprint": None}
    return {"model": None, "model_name": label, "revision": suite.revision,
            "fingerprint": model_fingerprint(label, suite.revision)}


def qdg_pipeline(config: QDGConfig, store: str, key_prefix: str = "qdg") -> dict:
    """The pipeline map: every call is a cached task over artifact refs. The lm-losses tasks run first with the
    lm-losses study's own keys, so a qdg run after an lm-losses run with the same settings finds them `Cached`."""
    lm = lm_losses_pipeline(config.lm, store)
    suite = config.lm.suite
    which = selection_model(config, lm, store)
    selection = select_tokens(lm["eval_tokens"], lm["token_losses"], which["model"], which["model_name"],
                              which["revision"], config.selection, suite.context_length, store, dtype=suite.dtype,
                              device=config.gradients.device)
    cl = config.clustering
    blocks = gradients(selection, lm["eval_tokens"], which, config.gradients, config, store)
    affinity = affinity_of(blocks, config, store)
    spectral = cl.spectral()
    labels = {(k, seed): cluster_labels(affinity, k, seed, spectral, store) for k in cl.n_clusters for seed in cl.seeds}
    stability = clustering_stability(list(labels.values()), store) if len(cl.seeds) > 1 else None
    first = [labels[(k, cl.seeds[0])] for k in cl.n_clusters]
    projection = None
    if cl.compare_projection_dims is not None:  # the same tokens' JL-projected gradients, clustered alike
        d, seed = cl.compare_projection_dims, cl.seeds[0]
        projected = gradients(selection, lm["eval_tokens"], which,
                              config.gradients.model_copy(update={"projection_dims": d}), config, store, f"jl{d}-")
        paffinity = affinity_of(projected, config, store)
        plabels = [cluster_labels.with_options(task_run_name=f"qdg-cluster-jl{d}-k{k}-s{seed}")(
            paffinity, k, seed, spectral, store) for k in cl.n_clusters]
        projection = projection_agreement(first, plabels, d, store)
    zipf = zipf_analysis(first, lm["fits"], config.zipf, store)
    report = qdg_report(selection, lm["eval_tokens"], lm["tokenizer"], lm["token_losses"], affinity, blocks[0], first,
                        stability, zipf, config.report, store, key_prefix, projection)
    return {"lm": lm, "selection": selection, "gradient_blocks": blocks, "affinity": affinity, "labels": labels,
            "stability": stability, "projection": projection, "zipf": zipf, "report": report}


def gradients(selection, tokens, which: dict, cfg, config: QDGConfig, store: str, name: str = "") -> list:
    """One cached gradient task per block of `gradients.block_rows` selected tokens."""
    suite = config.lm.suite
    return [gradient_block.with_options(task_run_name=f"qdg-gradients-{name}{start}-{stop}")(
                selection, tokens, which["model"], which["model_name"], which["revision"], which["fingerprint"],
                start, stop, cfg, suite.context_length, suite.dtype, store)
            for start, stop in gradient_block_plan(config.selection.n_tokens, config.gradients.block_rows)]


def affinity_of(blocks: list, config: QDGConfig, store: str):
    """The dense similarity up to `clustering.dense_max_n` tokens (method 'auto'), else the sparse kNN affinity."""
    cl = config.clustering
    if cl.method_for(config.selection.n_tokens) == "dense":
        return similarity_matrix(blocks, config.similarity, store)
    return knn_affinity(blocks, cl.knn_neighbors, config.similarity, store)


@flow(name="qdg", log_prints=True)
def qdg_flow(config: QDGConfig, store: str | None = None) -> dict:
    """Quanta discovery with gradients: cluster per-token gradients of well-predicted tokens; are the cluster sizes
    Zipf-distributed with the exponent alpha_N + 1 that the scaling of the loss predicts?"""
    store = Store(store).url
    refs = qdg_pipeline(config, store)
    lm = refs["lm"]
    artifacts = {f"lm_{k}": v for k, v in lm.items() if k in ("eval_tokens", "token_losses", "fits", "report")}
    artifacts.update({k: refs[k] for k in ("selection", "affinity", "zipf", "report")})
    artifacts.update({k: refs[k] for k in ("stability", "projection") if refs[k] is not None})
    artifacts.update({f"gradient_block_{i}": r for i, r in enumerate(refs["gradient_blocks"])})
    artifacts.update({f"labels_k{k}_s{s}": r for (k, s), r in refs["labels"].items()})
    return {"artifacts": artifacts, "results": qdg_results(Store(store), refs, config.zipf)}


def qdg_preflight(config: QDGConfig) -> None:
    """Before any work: the lm-losses checks (device, corpus files), the gradients' device, a Dask LocalCluster that
    fits this machine, and room for the dense similarity path (`clustering.method` / `dense_max_n`) in its memory."""
    lm_preflight(config.lm)
    try:
        resolve_device(config.gradients.device, "gradients.device")
    except DeviceError as e:
        raise ConfigError(str(e)) from None
    check_local_cluster(config.similarity)
    check_qdg_projections(config)
    n = config.selection.n_tokens
    if config.clustering.method_for(n) == "dense":
        need, have = DENSE_BYTES_PER_ENTRY * n * n, psutil.virtual_memory().total
        if need > have:
            raise ConfigError(f"clustering: dense spectral clustering of {n:,} tokens needs ~{need / 1e9:.1f} GB, "
                              f"this machine has {have / 1e9:.1f} GB: set clustering.method = 'knn' (or 'auto' with "
                              "a lower clustering.dense_max_n), or fewer selection.n_tokens")


def check_qdg_projections(config: QDGConfig) -> None:
    """Each JL projection (gradients.projection_dims, clustering.compare_projection_dims) reduces the selection
    model's gradient dim and its matrix fits in memory; the estimate is logged."""
    asked = [(d, f) for d, f in ((config.gradients.projection_dims, "gradients.projection_dims"),
                                 (config.clustering.compare_projection_dims, "clustering.compare_projection_dims"))
             if d is not None]
    if not asked:
        return
    known = lm_gradient_dim(config.lm, config.selection.model, config.gradients)
    if known is None:
        return
    dim, label = known
    for dims, field in asked:
        need = check_projection(dim, dims, field, f"the model {label}", psutil.virtual_memory().total)
        _log_info(f"{field}: {dim:,} -> {dims:,} dims, projection matrix ~{need / 2**20:,.0f} MiB")


def _log_info(message: str) -> None:
    from prefect.logging import get_logger

    get_logger("quanta").info(message)


CONFIG = QDGConfig
FLOW = qdg_flow
PREFLIGHT = qdg_preflight
