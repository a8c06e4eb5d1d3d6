"""Counting quanta: subtasks learned vs parameters N (paper Section 2, n = N/C: C parameters per quantum) and vs
training-set size D (paper Figure 9: with early stopping, the number learned grows as D^(1/(alpha+1))).

Why 1/(alpha+1): a subtask of frequency p_k ~ k^-(alpha+1) appears about D p_k times in D samples; if it is learned
once it has been seen some fixed number of times, the last subtask learned has k^-(alpha+1) ~ 1/D, so
n_D ~ D^(1/(alpha+1)). And n ~ N/C: a model of N parameters has room for N/C quanta.

Every quantity comes from the runs table's `subtasks_learned` (subtasks whose test loss is below the learned
threshold): final rows of the fresh-data models for N, each finite-data model at its best logged step (early
stopping, as the paper's stop_early runs) for D. Models that learned nothing are left out of the log-log fits.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.sparse_parity.analysis import early_stopping, final_rows
from tasks.stats import FitError, fit_loglog_ols, theory_check

QUANTITIES = ("subtasks_vs_N", "params_per_quantum", "subtasks_vs_D")


def _row(alpha: float, quantity: str, theory: float, n_points: int, method: str) -> dict:
    return {"alpha": float(alpha), "quantity": quantity, "value": math.nan, "ci_lo": math.nan, "ci_hi": math.nan,
            "theory": theory, "consistent": None, "n_points": int(n_points), "method": method, "note": ""}


def _slope_row(row: dict, x: np.ndarray, n: np.ndarray, level: float) -> dict:
    try:
        f = fit_loglog_ols(x, n, level=level)
        row.update(value=f.slope, ci_lo=f.ci[0], ci_hi=f.ci[1])
        if np.isfinite(row["theory"]):
            row["consistent"] = bool(theory_check(row["quantity"], f.slope, f.ci, row["theory"], level=level)
                                     .consistent)
    except FitError as e:
        row["note"] = f"not fitted: {e}"
    return row


def params_per_quantum(n_params: np.ndarray, learned: np.ndarray, level: float) -> tuple[float, list[float]]:
    """C = the geometric mean of N / n over models that learned n >= 1 subtasks, with the t-interval of the mean
    of ln(N / n) mapped back (each model one observation)."""
    keep = learned >= 1
    r = np.log(np.asarray(n_params, float)[keep] / np.asarray(learned, float)[keep])
    if len(r) < 2:
        raise FitError(f"C needs >= 2 models that learned a subtask (got {len(r)})")
    m, se = float(r.mean()), float(r.std(ddof=1) / math.sqrt(len(r)))
    t = float(stats.t.ppf((1 + level) / 2, len(r) - 1))
    return math.exp(m), [math.exp(m - t * se), math.exp(m + t * se)]


def quanta_table(runs: pd.DataFrame, level: float = 0.95, d_width: int | None = None) -> pd.DataFrame:
    """Per alpha: the slope of subtasks learned vs N (theory 1), C with its interval, and the slope of subtasks
    learned vs D at width `d_width` (default: the widest finite-data width; theory 1/(alpha+1); none for the
    uniform control, alpha = 0)."""
    rows = []
    for alpha, sub in runs.groupby("alpha"):
        fresh = sub[sub.data_size == -1]
        last = final_rows(fresh)
        pts = last.groupby("n_params", as_index=False).subtasks_learned.mean()
        pts = pts[pts.subtasks_learned >= 1]
        x, n = pts.n_params.to_numpy(float), pts.subtasks_learned.to_numpy(float)
        rows.append(_slope_row(_row(alpha, "subtasks_vs_N", 1.0 if alpha > 0 else math.nan, len(pts), "loglog-ols"),
                               x, n, level))
        c = _row(alpha, "params_per_quantum", math.nan, len(pts), "geometric-mean-t")
        try:
            value, ci = params_per_quantum(x, n, level)
            c.update(value=value, ci_lo=ci[0], ci_hi=ci[1], note="parameters per learned subtask (N / n)")
        except FitError as e:
            c["note"] = f"not measured: {e}"
        rows.append(c)
        es = early_stopping(sub)
        if len(es):
            width = d_width or int(es.width.max())
            d = es[es.width == width].groupby("data_size", as_index=False).subtasks_learned.mean()
            d = d[d.subtasks_learned >= 1]
            theory = 1.0 / (alpha + 1.0) if alpha > 0 else math.nan
            rows.append(_slope_row(_row(alpha, "subtasks_vs_D", theory, len(d), "loglog-ols"),
                                   d.data_size.to_numpy(float), d.subtasks_learned.to_numpy(float), level))
    df = pd.DataFrame(rows, columns=["alpha", "quantity", "value", "ci_lo", "ci_hi", "theory", "consistent",
                                     "n_points", "method", "note"])
    df["consistent"] = df["consistent"].astype("boolean")
    return df


@quanta_task(name="quanta-counts")
def build_quanta_counts(runs_ref: ArtifactRef, *, level: float, d_width: int | None, store: str) -> ArtifactRef:
    """Subtasks learned vs N and vs D, and parameters per quantum, as `sparse_parity.quanta`."""
    st = Store(store)
    df = quanta_table(st.read_table(runs_ref), level, d_width)
    return st.write_table("sparse_parity.quanta", df, inputs=[runs_ref], params={"level": level, "d_width": d_width})
