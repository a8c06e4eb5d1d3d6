"""The qdg-calibration study as a Prefect flow: the size-exponent estimators where the answer is known.

for each (planted e, separation, draw): planted rows ─► A = 1 - arccos(C)/pi ─► QDG's spectral clusterings (k list,
and k = K) ─► every estimator (one cached task per draw) ─► the calibration table ─► report (plot, table, goal)
"""
from __future__ import annotations

import psutil
from prefect import flow

from schemas import ConfigError
from schemas.qdg_calibration import QDGCalibrationConfig
from schemas.qdg_config import DENSE_BYTES_PER_ENTRY
from storage import Store
from tasks.qdg.calibration import calibration_draw, calibration_summary, draw_grid
from tasks.qdg.calibration_report import calibration_report_task, calibration_results


def calibration_pipeline(config: QDGCalibrationConfig, store: str) -> dict:
    """Every draw a cached task over its own (e, separation, draw); the summary and report read them all."""
    p = config.planted
    data = draw_grid(p)
    draws = {(e, sep, d): calibration_draw(planted=e, separation=sep, draw=d, data=data,
                                           clustering=config.clustering, estimator=config.estimator, store=store)
             for d in range(p.draws) for sep in p.separations for e in p.exponents}  # draw-major: every cell early
    summary = calibration_summary(list(draws.values()), store=store)
    report = calibration_report_task(summary, n_clusters=p.n_clusters, n_rows=p.n_rows, cfg=config.report,
                                     store=store)
    return {"draws": draws, "summary": summary, "report": report}


@flow(name="qdg-calibration", log_prints=True)
def qdg_calibration_flow(config: QDGCalibrationConfig, store: str | None = None) -> dict:
    """Size-exponent estimators on planted clusters of known exponent: bias, spread and interval coverage.

    Planted clusters with sizes ∝ rank^-e go through QDG's affinity and clustering stage: does each estimator recover
    e, and do its intervals cover it?"""
    store = Store(store).url
    refs = calibration_pipeline(config, store)
    artifacts = {"summary": refs["summary"], "report": refs["report"]}
    artifacts.update({f"draw_e{e:g}_sep{s:g}_d{d}": r for (e, s, d), r in refs["draws"].items()})
    return {"artifacts": artifacts, "results": results(Store(store), refs, config)}


def results(st: Store, refs: dict, config: QDGCalibrationConfig) -> dict:
    """The calibration table per separation, estimator and planted e, and the designed estimator's goal check."""
    return calibration_results(st, refs["summary"])


def preflight(config: QDGCalibrationConfig) -> None:
    """Before any work: one draw's dense affinity (and scikit-learn's working copies) fits this machine's memory."""
    n = config.planted.n_rows
    need, have = DENSE_BYTES_PER_ENTRY * n * n, psutil.virtual_memory().total
    if need > have:
        raise ConfigError(f"planted.n_rows: {n:,} rows need ~{need / 1e9:.1f} GB for a dense clustering, this "
                          f"machine has {have / 1e9:.1f} GB")


CONFIG = QDGCalibrationConfig
FLOW = qdg_calibration_flow
