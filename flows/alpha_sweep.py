"""The alpha sweep (paper Figure 10 shape): the sparse-parity study once per alpha, then alpha_N(alpha),
alpha_S(alpha), alpha_D(alpha) in one table and one plot beside theory.

Every alpha's tasks hash that alpha's spec, so adding an alpha to the sweep trains only the new one.
"""
from __future__ import annotations

from prefect import flow

from flows.sparse_parity import preflight as sparse_parity_preflight
from flows.sparse_parity import sparse_parity_pipeline
from schemas.sparse_parity import AlphaSweepConfig
from storage import Store
from tasks.sparse_parity.report import build_sweep_report, combine_fits, config_for_alpha, sweep_results


@flow(name="alpha-sweep", log_prints=True)
def alpha_sweep_flow(config: AlphaSweepConfig, store: str | None = None) -> dict:
    """Run the sparse-parity study for each alpha in config.sweep.alphas and compare exponents with theory."""
    store = Store(store).url
    per_alpha = {a: sparse_parity_pipeline(config_for_alpha(config, a), store, key_prefix=f"alpha-sweep-{a:g}")
                 for a in config.sweep.alphas}
    fits = combine_fits([refs["fits"] for refs in per_alpha.values()], store=store)
    report = build_sweep_report(fits, report_cfg=config.report, fit_cfg=config.fit, store=store)
    artifacts = {"fits": fits, "report": report}
    for a, refs in per_alpha.items():
        artifacts[f"fits_alpha{a:g}"] = refs["fits"]
        artifacts[f"runs_alpha{a:g}"] = refs["runs"]
    return {"artifacts": artifacts, "results": results(Store(store), artifacts, config)}


def results(st: Store, refs: dict, config: AlphaSweepConfig) -> dict:
    """The sweep's headline numbers (`quanta run --json`): each alpha's exponents beside theory."""
    return sweep_results(st, refs["fits"], refs["report"], config.sweep.alphas)


def preflight(config: AlphaSweepConfig) -> None:
    """The sparse-parity study's device and memory checks, before any alpha trains."""
    sparse_parity_preflight(config)


CONFIG = AlphaSweepConfig
FLOW = alpha_sweep_flow
