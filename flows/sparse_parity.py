"""The sparse-parity scaling study as a Prefect flow (paper Section 3).

spec ─► [train set per D] ─► train shards (batched widths x stacked groups) ─► curves (Zarr)
    └► runs table, emergence table ─► fits (alpha_N, alpha_S, alpha_D vs theory), step test, quanta
                                                 counts (subtasks learned vs N and D, parameters per quantum) ─► report
"""
from __future__ import annotations

from prefect import flow

from schemas.sparse_parity import SparseParityConfig
from storage import Store
from tasks.devices import resolve_device
from tasks.sparse_parity.analysis import (build_emergence_table, build_fits, build_runs_table, build_step_test,
                                          study_results)
from tasks.sparse_parity.data import build_spec, build_train_set
from tasks.sparse_parity.quanta import build_quanta_counts
from tasks.sparse_parity.report import build_sparse_parity_report
from tasks.sparse_parity.train import check_memory, finite_data_groups, train_shard, training_plan


def sparse_parity_pipeline(config: SparseParityConfig, store: str, key_prefix: str = "sparse-parity") -> dict:
    """The pipeline map (also the alpha sweep's, once per alpha): every call is a cached task over artifact refs."""
    spec = build_spec(task_cfg=config.task, store=store)
    plan = training_plan(config)
    train_sets = {g: build_train_set.submit(spec, data_size=g[0], seed=g[1], store=store)
                  for g in finite_data_groups(plan)}
    g = config.grid
    shards = [train_shard.submit(spec, groups=groups, train_set_refs=[train_sets.get(d) for d in groups],
                                 params=params, device=g.device, cuda_graph=g.cuda_graph, store=store)
              for params, groups in plan]
    curves = [s.result() for s in shards]
    threshold = config.grid.learned_threshold_bits
    runs = build_runs_table(curves, threshold_bits=threshold, store=store)
    emergence = build_emergence_table(curves, spec, threshold_bits=threshold, store=store)
    fits = build_fits(runs, fit_cfg=config.fit, store=store)
    steps = build_step_test(runs, n_min=config.fit.n_min, n_max=config.fit.n_max, store=store)
    quanta = build_quanta_counts(runs, level=config.fit.level, d_width=config.fit.d_width, store=store)
    report = build_sparse_parity_report(runs, fits, emergence, curves, steps, quanta, fit_cfg=config.fit,
                                        report_cfg=config.report, store=store, key_prefix=key_prefix)
    return {"spec": spec, "curves": curves, "runs": runs, "emergence": emergence, "fits": fits, "step_test": steps,
            "quanta": quanta, "report": report}


@flow(name="sparse-parity", log_prints=True)
def sparse_parity_flow(config: SparseParityConfig = SparseParityConfig(), store: str | None = None) -> dict:
    """Multitask sparse parity: train the width (and data-size) grid, fit alpha_N / alpha_S / alpha_D, report."""
    store = Store(store).url
    refs = sparse_parity_pipeline(config, store)
    artifacts = {k: v for k, v in refs.items() if k != "curves"}
    artifacts.update({f"curves_{i}": r for i, r in enumerate(refs["curves"])})
    return {"artifacts": artifacts, "results": results(Store(store), refs, config)}


def results(st: Store, refs: dict, config: SparseParityConfig) -> dict:
    """The study's headline numbers (`quanta run --json`): the fitted exponents beside theory."""
    return study_results(st, refs, config.task.alpha)


def preflight(config: SparseParityConfig) -> None:
    """Before any work (the CLI and run_study call it): grid.device exists here, and every training shard fits in
    its memory (estimated from the config: parameters, gradients, AdamW moments, activations, data). Raises a
    UserInputError (DeviceError, ConfigError) with one line naming the fields to change. The alpha sweep's configs pass the same checks."""
    device = resolve_device(config.grid.device, "grid.device")  # a DeviceError: one line, exit 2
    check_memory(config, device)


CONFIG = SparseParityConfig
FLOW = sparse_parity_flow
