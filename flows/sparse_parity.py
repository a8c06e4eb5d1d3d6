"""The sparse-parity scaling study as a Prefect flow (paper Section 3).

spec ─► [train set per D] ─► train shards (batched widths x stacked groups) ─► curves (Zarr)
    └► runs table, emergence table ─► fits (alpha_N, alpha_S, alpha_D vs theory) ─► report
"""
from __future__ import annotations

import pandas as pd
from prefect import flow

from flows.common import call, submit
from schemas.sparse_parity import SparseParityConfig
from storage import Store
from storage.settings import default_store_root
from tasks.sparse_parity import build_spec, build_train_set
from tasks.sparse_parity_analysis import build_emergence_table, build_fits, build_runs_table
from tasks.sparse_parity_report import build_sparse_parity_report
from tasks.training import _train_params, train_shard


def grid_groups(cfg: SparseParityConfig) -> list[tuple[int, int]]:
    """(data_size, seed) groups of the width grid; data_size -1 = fresh samples every step."""
    g = cfg.grid
    sizes = ([-1] if (g.data_sizes is None or g.fresh_data) else []) + list(g.data_sizes or [])
    return [(d, s) for d in sizes for s in g.seeds]


def training_plan(cfg: SparseParityConfig) -> list[tuple[dict, list[tuple[int, int]]]]:
    """[(train params, groups of one shard)]: the width grid's shards, then the data grid's (one width, stacked
    (D, seed) models). Each shard is one cached task."""
    plan = []
    params = _train_params(cfg.grid)
    groups = grid_groups(cfg)
    n = cfg.grid.groups_per_shard
    plan += [(params, groups[i:i + n]) for i in range(0, len(groups), n)]
    if cfg.data_grid is not None:
        dg = cfg.data_grid
        dparams = dict(params, widths=[dg.width], steps=dg.steps or cfg.grid.steps)
        seeds = dg.seeds or cfg.grid.seeds
        if dg.shard_by == "data_size":
            plan += [(dparams, [(d, s) for s in seeds]) for d in dg.data_sizes]
        else:
            plan += [(dparams, [(d, s)]) for d in dg.data_sizes for s in seeds]
    return plan


def run_sparse_parity(config: SparseParityConfig, store: str, refresh: bool = False,
                      key_prefix: str = "sparse-parity") -> dict:
    """The pipeline body (also used by the alpha sweep, once per alpha)."""
    Store(store)  # create the root early: a bad store URL fails before any task runs
    spec_ref = call(build_spec, config.task, store, refresh=refresh)
    plan = training_plan(config)
    set_futures = {}
    for _, shard in plan:
        for d, s in shard:
            if d > 0 and (d, s) not in set_futures:
                set_futures[(d, s)] = submit(build_train_set, spec_ref, d, s, store, refresh=refresh)
    futures = []
    for params, shard in plan:
        refs = [set_futures[g].result() if g in set_futures else None for g in shard]
        futures.append(submit(train_shard, spec_ref, shard, refs, params, store, refresh=refresh))
    curves_refs = [f.result() for f in futures]
    thr = config.grid.learned_threshold_bits
    runs_ref = call(build_runs_table, curves_refs, thr, store, refresh=refresh)
    em_ref = call(build_emergence_table, curves_refs, spec_ref, thr, store, refresh=refresh)
    fits_ref = call(build_fits, runs_ref, config.fit, store, refresh=refresh)
    report_ref = call(build_sparse_parity_report, runs_ref, fits_ref, em_ref, curves_refs, config.fit,
                      config.report, store, key_prefix, refresh=refresh)
    return {"spec": spec_ref, "curves": curves_refs, "runs": runs_ref, "emergence": em_ref, "fits": fits_ref,
            "report": report_ref}


def summarise(refs: dict, store: str, alpha: float) -> dict:
    """The flow's `results`: exponents with CIs beside theory, for the CLI's JSON."""
    from tasks.sparse_parity_analysis import emergence_slope

    st = Store(store)
    fits = st.read_table(refs["fits"])
    res: dict = {"alpha": alpha, "alpha_theory": alpha, "alpha_S_theory": alpha / (alpha + 1),
                 "alpha_D_theory": alpha / (alpha + 1)}
    for r in fits.itertuples():
        res[r.quantity] = r.value
        res[f"{r.quantity}_ci"] = [r.ci_lo, r.ci_hi]
        res[f"{r.quantity}_consistent"] = None if pd.isna(r.consistent) else bool(r.consistent)
        if r.note:
            res[f"{r.quantity}_note"] = r.note  # e.g. why it could not be fitted
    from tasks.sparse_parity_analysis import theory_checks

    res["theory_checks"] = theory_checks(fits).to_dict(orient="records")
    em = st.read_table(refs["emergence"])
    slope = emergence_slope(em)
    res["steps_to_learn_slope"] = slope["slope"]
    res["steps_to_learn_slope_ci"] = slope["ci"]
    runs = st.read_table(refs["runs"])
    last = runs[runs.step == runs.step.max()]
    res["final_loss_by_width"] = {str(int(w)): float(v) for w, v in
                                  last[last.data_size == last.data_size.min()].groupby("width").mean_loss.mean().items()}
    res["report_dir"] = refs["report"].uri
    return res


@flow(name="sparse-parity", log_prints=True)
def sparse_parity_flow(config: SparseParityConfig = SparseParityConfig(), store: str | None = None,
                       refresh: bool = False) -> dict:
    """Multitask sparse parity: train the width (and data-size) grid, fit alpha_N / alpha_S / alpha_D, report."""
    store = store or default_store_root()
    refs = run_sparse_parity(config, store, refresh)
    artifacts = {k: v for k, v in refs.items() if k != "curves"}
    artifacts.update({f"curves_{i}": r for i, r in enumerate(refs["curves"])})
    return {"artifacts": artifacts, "results": summarise(refs, store, config.task.alpha)}


CONFIG = SparseParityConfig
FLOW = sparse_parity_flow
