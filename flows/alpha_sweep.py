"""The alpha sweep (paper Figure 10 shape): the sparse-parity study once per alpha, then alpha_N(alpha),
alpha_S(alpha), alpha_D(alpha) in one table and one plot beside theory.

Every alpha's tasks hash that alpha's spec, so adding an alpha to the sweep trains only the new one.
"""
from __future__ import annotations

from prefect import flow

from flows.common import call
from flows.sparse_parity import run_sparse_parity
from schemas.sparse_parity import AlphaSweepConfig, SparseParityConfig
from storage.settings import default_store_root
from tasks.sparse_parity_report import build_sweep_report, combine_fits


def config_for_alpha(config: AlphaSweepConfig, alpha: float) -> SparseParityConfig:
    data = config.model_dump(exclude={"sweep"})
    data["task"]["alpha"] = alpha
    data["report"]["title"] = f"{config.report.title}: alpha = {alpha:g}"
    return SparseParityConfig.model_validate(data)


@flow(name="alpha-sweep", log_prints=True)
def alpha_sweep_flow(config: AlphaSweepConfig, store: str | None = None, refresh: bool = False) -> dict:
    """Run the sparse-parity study for each alpha in config.sweep.alphas and compare exponents with theory."""
    store = store or default_store_root()
    per_alpha = {a: run_sparse_parity(config_for_alpha(config, a), store, refresh, key_prefix=f"alpha-sweep-{a:g}")
                 for a in config.sweep.alphas}
    fits_ref = call(combine_fits, [r["fits"] for r in per_alpha.values()], store, refresh=refresh)
    report_ref = call(build_sweep_report, fits_ref, config.report, config.fit, store, refresh=refresh)
    from storage import Store

    fits = Store(store).read_table(fits_ref)
    results = {"alphas": config.sweep.alphas, "exponents": []}
    for r in fits.itertuples():
        results["exponents"].append({"alpha": r.alpha, "quantity": r.quantity, "value": r.value,
                                     "ci": [r.ci_lo, r.ci_hi], "theory": r.theory,
                                     "consistent": None if r.consistent is None or str(r.consistent) == "<NA>"
                                     else bool(r.consistent)})
    results["report_dir"] = report_ref.uri
    artifacts = {"fits": fits_ref, "report": report_ref}
    for a, refs in per_alpha.items():
        artifacts[f"fits_alpha{a:g}"] = refs["fits"]
        artifacts[f"runs_alpha{a:g}"] = refs["runs"]
    return {"artifacts": artifacts, "results": results}


CONFIG = AlphaSweepConfig
FLOW = alpha_sweep_flow
