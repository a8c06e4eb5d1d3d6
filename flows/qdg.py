"""The qdg study as a Prefect flow (paper Section 4, second half: quanta discovery with gradients).

lm-losses pipeline (corpus ─► tokens ─► suite ─► token losses ─► alpha_N) ─► selection ─► for each representation
(`representations`: gradient, abs_gradient, logit_gradient, activations, attribution, ablation): its blocks (one
cached task per block; abs_gradient of unprojected gradients read from the gradient blocks; the unit representations
read from one cached unit stage per block) ─► similarity C = G G^T (Dask ─► Zarr; or a sparse kNN affinity past
dense_max_n) ─► labels per (k, seed) ─► stability (ARI between seeds; and, optionally, against the JL-projected
primary representation's clusters)
─► Zipf fits vs -(alpha_N + 1) ─► ARI between representations per k ─► report (headline: the primary representation)
"""
from __future__ import annotations

import psutil
from prefect import flow

from flows.lm_losses import lm_losses_pipeline
from flows.lm_losses import preflight as lm_preflight
from flows.qdg_null import null_stage
from schemas import ConfigError
from schemas.qdg import QDGConfig
from schemas.qdg_config import DENSE_BYTES_PER_ENTRY, LM_UNIT_REPRESENTATIONS
from schemas.qdg_transform import Transform
from storage import Store
from tasks.devices import resolve_device
from tasks.lm.model_source import ModelSource
from tasks.qdg.clustering import cluster_labels, clustering_stability, projection_agreement
from tasks.qdg.dask_cluster import check_local_cluster
from tasks.qdg.gradient_dims import check_projection, lm_gradient_dim
from tasks.qdg.gradients import PARAMETER_OUTPUTS, gradient_block, gradient_block_plan
from tasks.qdg.jl_floor import check_jl_floor
from tasks.qdg.knn import knn_affinity
from tasks.qdg.lm_representations import (abs_gradient_block, representation_agreement, transformed_block,
                                          unit_representation, units_block)
from tasks.qdg.report import qdg_report, qdg_results, shown_k
from tasks.qdg.selection import select_tokens, selection_label
from tasks.qdg.similarity import similarity_matrix
from tasks.qdg.size_exponent import qdg_size_exponent
from tasks.qdg.zipf import zipf_analysis


def selection_model(config: QDGConfig, lm: dict, store: str) -> ModelSource:
    """The suite model that selects tokens and gives the gradients: a trained suite's `lm.model`, or a pretrained
    name at the suite's revision."""
    suite = config.lm.suite
    attrs = Store(store).open_zarr(lm["token_losses"], validate=False, verify_hash=False).attrs
    label = selection_label(list(attrs["models"]), config.selection)
    if suite.kind == "trained":
        return ModelSource.trained(lm["models"][[s.label for s in suite.sizes].index(label)])
    return ModelSource.pretrained(label, suite.revision)


def qdg_pipeline(config: QDGConfig, store: str, key_prefix: str = "qdg") -> dict:
    """The pipeline map: every call is a cached task over artifact refs. The lm-losses tasks run first with the
    lm-losses study's own keys, so a qdg run after an lm-losses run with the same settings finds them `Cached`.
    Each representation has its own blocks, affinity, clusterings and Zipf fit; the primary one is the headline."""
    lm = lm_losses_pipeline(config.lm, store)
    suite = config.lm.suite
    model = selection_model(config, lm, store)
    selection = select_tokens(lm["eval_tokens"], lm["token_losses"], model=model, cfg=config.selection,
                              context_length=suite.context_length, dtype=suite.dtype,
                              device=config.gradients.device, store=store)
    cl = config.clustering
    reps, primary = config.chosen_representations(), config.primary_representation()
    blocks = representation_blocks(selection, lm["eval_tokens"], model=model, config=config, store=store, reps=reps)
    per = {r: cluster_representation(blocks[r], representation=r, config=config, fits=lm["fits"],
                                     store=store) for r in reps}
    agreement = (representation_agreement({r: per[r]["first"] for r in reps}, store=store) if len(reps) > 1
                 else None)
    projection = None
    if cl.compare_projection_dims is not None:  # the same tokens' JL-projected representation, clustered alike
        d, seed = cl.compare_projection_dims, cl.seeds[0]
        projected = parameter_blocks(selection, lm["eval_tokens"], model=model,
                                     cfg=config.gradients.model_copy(update={"projection_dims": d}), config=config,
                                     store=store, representation=primary, name=f"jl{d}-",
                                     transform=config.transform if primary in PARAMETER_OUTPUTS else Transform())
        paffinity = affinity_of(projected, config=config, store=store, name=f"{primary}-jl{d}")
        plabels = [cluster_labels.with_options(task_run_name=f"qdg-cluster-{tag(primary)}jl{d}-k{k}-s{seed}")(
            paffinity, k=k, seed=seed, spectral=cl.spectral(), store=store) for k in cl.n_clusters]
        projection = projection_agreement(per[primary]["first"], plabels, projection_dims=d, store=store)
    k_shown = shown_k(cl.n_clusters, config.report)  # the report's k: the agreement's null is at it
    nulled = config.null.representations or reps
    null = null_stage({r: blocks[r] for r in nulled}, {r: per[r]["zipf"] for r in nulled},
                      {r: per[r]["stability"] for r in nulled},
                      {r: per[r]["labels"][(k_shown, cl.seeds[0])] for r in nulled},
                      method=cl.method_for(config.selection.n_tokens), cl=cl, zcfg=config.zipf, ncfg=config.null,
                      store=store)
    shown = {r: {"affinity": per[r]["affinity"], "block": blocks[r][0], "labels": per[r]["first"],
                 "stability": per[r]["stability"], "zipf": per[r]["zipf"]} for r in reps}
    report = qdg_report(selection, lm["eval_tokens"], lm["tokenizer"], lm["token_losses"], representations=shown,
                        primary=primary, agreement=agreement, rcfg=config.report, projection=projection,
                        null=null, key_prefix=key_prefix, store=store)
    head = per[primary]
    return {"lm": lm, "selection": selection, "gradient_blocks": blocks[primary], "affinity": head["affinity"],
            "labels": head["labels"], "stability": head["stability"], "projection": projection, "zipf": head["zipf"],
            "report": report, "primary": primary, "blocks": blocks, "representations": per, "agreement": agreement,
            "null": null}


def tag(representation: str) -> str:
    """The part of a task run name that says the representation ('' for the paper's gradient: its names as before)."""
    return "" if representation == "gradient" else f"{representation}-"


def representation_blocks(selection, tokens, *, model: ModelSource, config: QDGConfig, store: str,
                          reps: list[str]) -> dict:
    """{representation: its `qdg.gradient_block`s}, each block one cached task. abs_gradient of unprojected
    gradients is read from the gradient blocks; the unit representations are read from one unit stage."""
    out: dict[str, list] = {}
    cfg = config.gradients
    for r in reps:
        if r in PARAMETER_OUTPUTS and not (r == "abs_gradient" and cfg.projection_dims is None):
            out[r] = parameter_blocks(selection, tokens, model=model, cfg=cfg, config=config, store=store,
                                      representation=r)
    if "abs_gradient" in reps and cfg.projection_dims is None:
        grads = out.get("gradient") or parameter_blocks(selection, tokens, model=model, cfg=cfg, config=config,
                                                        store=store, representation="gradient")
        out["abs_gradient"] = [abs_gradient_block.with_options(task_run_name=f"qdg-abs_gradient-{a}-{b}")(
                                   g, store=store)
                               for g, (a, b) in zip(grads, block_plan(config))]
    t = config.transform
    if not t.is_identity():  # config.transform on every parameter-space representation, each its own blocks
        for r in [r for r in reps if r in PARAMETER_OUTPUTS]:
            out[r] = ([transformed_block.with_options(task_run_name=f"qdg-{r}-{t.label()}-{a}-{b}")(
                           g, transform=t, store=store) for g, (a, b) in zip(out[r], block_plan(config))]
                      if cfg.projection_dims is None else
                      parameter_blocks(selection, tokens, model=model, cfg=cfg, config=config, store=store,
                                       representation=r, name=f"{t.label()}-", transform=t))
    units_wanted = [r for r in reps if r in LM_UNIT_REPRESENTATIONS]
    if units_wanted:
        suite = config.lm.suite
        units = [units_block.with_options(task_run_name=f"qdg-units-{a}-{b}")(
                     selection, tokens, model=model, start=a, stop=b, context_length=suite.context_length,
                     dtype=suite.dtype, device=cfg.device, positions_per_backward=cfg.positions_per_backward,
                     store=store)
                 for a, b in block_plan(config)]
        for r in units_wanted:
            out[r] = [unit_representation.with_options(task_run_name=f"qdg-{r}-{a}-{b}")(
                          u, representation=r, store=store)
                      for u, (a, b) in zip(units, block_plan(config))]
    return {r: out[r] for r in reps}


def block_plan(config: QDGConfig) -> list[tuple[int, int]]:
    return gradient_block_plan(config.selection.n_tokens, config.gradients.block_rows)


def parameter_blocks(selection, tokens, *, model: ModelSource, cfg, config: QDGConfig, store: str, representation: str,
                     name: str = "", transform: Transform = Transform()) -> list:
    """One cached gradient task per block of `gradients.block_rows` selected tokens."""
    suite = config.lm.suite
    label = "gradients" if representation == "gradient" else representation
    return [gradient_block.with_options(task_run_name=f"qdg-{label}-{name}{start}-{stop}")(
                selection, tokens, model=model, start=start, stop=stop, cfg=cfg,
                context_length=suite.context_length, dtype=suite.dtype, representation=representation,
                transform=transform, store=store)
            for start, stop in block_plan(config)]


def cluster_representation(blocks: list, *, representation: str, config: QDGConfig, fits, store: str) -> dict:
    """A representation's affinity, its clusterings per (k, seed), their stability and the Zipf fit of the first
    seed's (tasks named by `tag`)."""
    cl, t = config.clustering, tag(representation)
    affinity = affinity_of(blocks, config=config, store=store, name=representation)
    labels = {(k, seed): cluster_labels.with_options(task_run_name=f"qdg-cluster-{t}k{k}-s{seed}")(
                  affinity, k=k, seed=seed, spectral=cl.spectral(), store=store)
              for k in cl.n_clusters for seed in cl.seeds}
    stability = (clustering_stability.with_options(task_run_name=f"qdg-stability-{representation}")(
                     list(labels.values()), store=store) if len(cl.seeds) > 1 else None)
    first = [labels[(k, cl.seeds[0])] for k in cl.n_clusters]
    k_over = max(cl.n_clusters)  # the calibrated estimator over-clusters at the largest k, then merges
    headline = qdg_size_exponent.with_options(task_run_name=f"qdg-size-exponent-{representation}")(
        affinity, labels[(k_over, cl.seeds[0])], k_over=k_over, spectral=cl.spectral(), seed=cl.seeds[0],
        store=store)
    zipf = zipf_analysis.with_options(task_run_name=f"qdg-zipf-{representation}")(
        first, fits, headline, cfg=config.zipf, store=store)
    return {"affinity": affinity, "labels": labels, "stability": stability, "first": first, "zipf": zipf}


def affinity_of(blocks: list, *, config: QDGConfig, store: str, name: str = "gradient"):
    """The dense similarity up to `clustering.dense_max_n` tokens (method 'auto'), else the sparse kNN affinity."""
    cl = config.clustering
    if cl.method_for(config.selection.n_tokens) == "dense":
        return similarity_matrix.with_options(task_run_name=f"qdg-similarity-{name}")(blocks, cfg=config.similarity,
                                                                                       store=store)
    return knn_affinity.with_options(task_run_name=f"qdg-knn-affinity-{name}")(
        blocks, neighbors=cl.knn_neighbors, cfg=config.similarity, weighting=cl.knn_weighting, store=store)


@flow(name="qdg", log_prints=True)
def qdg_flow(config: QDGConfig, store: str | None = None) -> dict:
    """Quanta discovery with gradients: cluster per-token gradients of well-predicted tokens; are the cluster sizes
    Zipf-distributed with the exponent alpha_N + 1 that the scaling of the loss predicts?"""
    store = Store(store).url
    refs = qdg_pipeline(config, store)
    lm = refs["lm"]
    artifacts = {f"lm_{k}": v for k, v in lm.items() if k in ("eval_tokens", "token_losses", "fits", "report")}
    artifacts.update({k: refs[k] for k in ("selection", "affinity", "zipf", "report")})
    artifacts.update({k: refs[k] for k in ("stability", "projection", "null") if refs[k] is not None})
    # the primary representation under the study's first names; every representation under its own
    artifacts.update({f"gradient_block_{i}": r for i, r in enumerate(refs["gradient_blocks"])})
    artifacts.update({f"labels_k{k}_s{s}": r for (k, s), r in refs["labels"].items()})
    for rep, per in refs["representations"].items():
        artifacts.update({f"{rep}_block_{i}": r for i, r in enumerate(refs["blocks"][rep])})
        artifacts.update({f"labels_{rep}_k{k}_s{s}": r for (k, s), r in per["labels"].items()})
        artifacts.update({f"{name}_{rep}": per[name] for name in ("affinity", "zipf", "stability")
                          if per[name] is not None})
    if refs["agreement"] is not None:
        artifacts["representation_ari"] = refs["agreement"]
    return {"artifacts": artifacts, "results": results(Store(store), refs, config)}


def results(st: Store, refs: dict, config: QDGConfig) -> dict:
    """The study's headline numbers (`quanta run --json`): the Zipf slope of cluster sizes beside the prediction."""
    return qdg_results(st, refs, config.zipf)


def preflight(config: QDGConfig) -> None:
    """Before any work: the lm-losses checks (device, corpus files), the gradients' device, a Dask LocalCluster that
    fits this machine, and room for the dense similarity path (`clustering.method` / `dense_max_n`) in its memory."""
    lm_preflight(config.lm)
    resolve_device(config.gradients.device, "gradients.device")  # a DeviceError: one line, exit 2
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
    for dims, field in asked:  # the JL floor: a projection whose bound says nothing is refused (tasks.qdg.jl_floor)
        check_jl_floor(dims, config.selection.n_tokens, field, "selected tokens")
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
