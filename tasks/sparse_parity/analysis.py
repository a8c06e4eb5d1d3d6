"""From training curves to the study's tables and exponents: runs table, emergence, alpha_N / alpha_S / alpha_D.

All functions here are plain (numpy / pandas in, pandas out); the Prefect tasks at the bottom wrap them with
store reads and writes.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from schemas.sparse_parity import FitConfig
from schemas.jsonable import jsonable
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.stats import FitError, fit_loglog_ols, fit_power_law, scaling_theory_checks, theory_check
from tasks.stats.theory import RULE_CONTAINS, describe_rule


def model_ids(curves: dict) -> list[str]:
    return [f"a{a:g}-w{w}-D{d}-s{s}" for a, w, d, s in
            zip(curves["alpha"], curves["width"], curves["data_size"], curves["seed"])]


def runs_table(curve_sets: list[dict], threshold_bits: float) -> pd.DataFrame:
    """One row per model per logged step: mean loss (bits) and number of subtasks below threshold."""
    frames = []
    for c in curve_sets:
        n_models, n_steps = c["mean_loss_bits"].shape
        learned = (c["loss_bits"] < threshold_bits).sum(-1)  # [model, step]
        frames.append(pd.DataFrame({
            "model_id": np.repeat(model_ids(c), n_steps),
            "width": np.repeat(c["width"], n_steps).astype(np.int64),
            "n_params": np.repeat(c["n_params"], n_steps).astype(np.int64),
            "data_size": np.repeat(c["data_size"], n_steps).astype(np.int64),
            "seed": np.repeat(c["seed"], n_steps).astype(np.int64),
            "alpha": np.repeat(c["alpha"], n_steps).astype(np.float64),
            "step": np.tile(c["steps"], n_models).astype(np.int64),
            "mean_loss": c["mean_loss_bits"].reshape(-1).astype(np.float64),
            "subtasks_learned": learned.reshape(-1).astype(np.int64),
        }))
    df = pd.concat(frames, ignore_index=True)
    df["model_id"] = df["model_id"].astype(str)
    return df.sort_values(["alpha", "data_size", "seed", "width", "step"]).reset_index(drop=True)


def emergence_table(curve_sets: list[dict], probs: np.ndarray, threshold_bits: float) -> pd.DataFrame:
    """Per (model, subtask): the first logged step from which the subtask's loss stays below threshold."""
    frames = []
    for c in curve_sets:
        below = c["loss_bits"] < threshold_bits  # [model, step, task]
        # learned from step s on: below at s and at every later logged step
        stays = np.flip(np.logical_and.accumulate(np.flip(below, axis=1), axis=1), axis=1)
        any_ = stays.any(axis=1)
        first = np.argmax(stays, axis=1)
        step = np.where(any_, c["steps"][first], np.nan).astype(np.float64)  # [model, task]
        M, T = step.shape
        ids = model_ids(c)
        frames.append(pd.DataFrame({
            "model_id": np.repeat(ids, T),
            "width": np.repeat(c["width"], T).astype(np.int64),
            "data_size": np.repeat(c["data_size"], T).astype(np.int64),
            "seed": np.repeat(c["seed"], T).astype(np.int64),
            "alpha": np.repeat(c["alpha"], T).astype(np.float64),
            "task_rank": np.tile(np.arange(1, T + 1), M).astype(np.int64),
            "frequency": np.tile(probs, M).astype(np.float64),
            "learned_step": step.reshape(-1),
        }))
    df = pd.concat(frames, ignore_index=True)
    df["model_id"] = df["model_id"].astype(str)
    return df


def final_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """Each model's row at its own last logged step, one row per model, in the runs table's order.

    The "final" loss of every table, figure and result: the width grid and a data grid may train for different
    numbers of steps, so the global last step would drop the models of whichever grid stopped earlier."""
    if not len(runs):
        return runs
    return runs.loc[runs.groupby("model_id", sort=False).step.idxmax()].sort_index()


def _window(x, lo, hi):
    m = np.ones(len(x), dtype=bool)
    if lo is not None:
        m &= x >= lo
    if hi is not None:
        m &= x <= hi
    return m


def fit_exponent(x, y, cfg: FitConfig):
    """(exponent, [lo, hi], method, fit object) by the configured method."""
    if cfg.method == "ols":
        f = fit_loglog_ols(x, y, level=cfg.level)
        return -f.slope, sorted([-f.ci[0], -f.ci[1]]), f.method, f
    f = fit_power_law(x, y, offset=cfg.offset, huber_delta=cfg.huber_delta, n_bootstrap=cfg.bootstrap,
                      level=cfg.level, seed=cfg.seed)
    return f.params["a"], list(f.ci["a"]), f.method, f


def exponent_rule(level: float | None) -> str:
    """How the fits table's `consistent` is decided (the theory value is a constant)."""
    return describe_rule(RULE_CONTAINS, level)


def scaling_data(runs: pd.DataFrame, cfg: FitConfig) -> dict[str, pd.DataFrame]:
    """The (x, y) points behind each exponent, for one alpha.

    alpha_N: final mean loss (each model's own last logged step) vs parameter count N, models trained on fresh
             samples (else the largest D), averaged over seeds.
    alpha_S: mean loss vs step for the widest fresh-data model (seed-averaged).
    alpha_D: per D, the minimum logged mean loss (early stopping) at width `d_width` (default: widest).
    """
    out = {}
    fresh = runs[runs.data_size == -1]
    base = fresh if len(fresh) else runs[runs.data_size == runs.data_size.max()]
    last = final_rows(base)
    n_pts = last.groupby("n_params", as_index=False)["mean_loss"].mean().rename(columns={"n_params": "x"})
    out["alpha_N"] = n_pts[_window(n_pts.x.values, cfg.n_min, cfg.n_max)]
    widest = base[base.width == base.width.max()]
    s_pts = widest.groupby("step", as_index=False)["mean_loss"].mean().rename(columns={"step": "x"})
    out["alpha_S"] = s_pts[_window(s_pts.x.values, cfg.step_min, cfg.step_max)]
    finite = runs[runs.data_size > 0]
    if len(finite):
        width = cfg.d_width or int(finite.width.max())
        per = finite[finite.width == width].groupby(["data_size", "seed"], as_index=False)["mean_loss"].min()
        d_pts = per.groupby("data_size", as_index=False)["mean_loss"].mean().rename(columns={"data_size": "x"})
        out["alpha_D"] = d_pts[_window(d_pts.x.values, cfg.d_min, cfg.d_max)]
    return out


def fit_exponents(runs: pd.DataFrame, cfg: FitConfig) -> pd.DataFrame:
    """Fits alpha_N, alpha_S (and alpha_D when finite-data runs exist) for each alpha in the runs table,
    each beside its theory value (alpha; alpha/(alpha+1); alpha/(alpha+1)). `consistent`: the theory value lies
    inside the fitted interval (see `exponent_rule`); `note`: why a quantity was not fitted, or the fit's warnings
    (e.g. the loss does not decrease)."""
    rows = []
    for alpha, sub in runs.groupby("alpha"):
        theory = {"alpha_N": alpha, "alpha_S": alpha / (alpha + 1), "alpha_D": alpha / (alpha + 1)}
        for q, pts in scaling_data(sub, cfg).items():
            row = dict(quantity=q, alpha=float(alpha), theory=theory[q], n_points=int(len(pts)),
                       method=cfg.method, value=math.nan, ci_lo=math.nan, ci_hi=math.nan, consistent=None, note="")
            if alpha == 0:  # uniform frequencies (the config allows alpha = 0 only with them)
                row.update(theory=math.nan, method="none", note=UNIFORM_NOTE)
                rows.append(row)
                continue
            try:
                value, ci, method, fit = fit_exponent(pts.x.values.astype(float), pts.mean_loss.values, cfg)
                chk = theory_check(q, value, ci, theory[q], level=cfg.level)
                row.update(value=float(value), ci_lo=float(ci[0]), ci_hi=float(ci[1]), method=method,
                           consistent=bool(chk.consistent), note="; ".join(getattr(fit, "warnings", {}).values()))
            except FitError as e:
                row["note"] = f"not fitted: {e}"
            rows.append(row)
    df = pd.DataFrame(rows, columns=["quantity", "alpha", "value", "ci_lo", "ci_hi", "theory", "consistent",
                                     "n_points", "method", "note"])
    df["consistent"] = df["consistent"].astype("boolean")
    return df


UNIFORM_NOTE = ("no power law: uniform subtask frequencies (alpha = 0, the paper's P-scaling-uniform-0 control); "
                "the quantization model predicts every subtask learned at one size, the loss falling in one step; "
                "see the step test")
ONE_STEP_FRACTION = 0.5  # fixed before any run: a step holds most of the whole drop


def step_fraction(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(largest drop between adjacent x / total drop first -> last, x before it, x after it); NaN when the
    loss does not fall overall. x ascending."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    total = y[0] - y[-1]
    if len(y) < 2 or not total > 0:
        return math.nan, math.nan, math.nan
    drops = y[:-1] - y[1:]
    j = int(np.argmax(drops))
    return float(drops[j] / total), float(x[j]), float(x[j + 1])


def step_test(runs: pd.DataFrame, n_min: float | None = None, n_max: float | None = None) -> pd.DataFrame:
    """Per alpha: does the final loss (the alpha_N points, in the fit's N window) fall in one step between
    adjacent sizes? The statistic beside its null, the same statistic of the log-log power law fitted to the same
    points."""
    cfg = FitConfig(n_min=n_min, n_max=n_max)
    rows = []
    for alpha, sub in runs.groupby("alpha"):
        pts = scaling_data(sub, cfg)["alpha_N"].sort_values("x")
        x, y = pts.x.to_numpy(dtype=float), pts.mean_loss.to_numpy(dtype=float)
        frac, before, after = step_fraction(x, y) if len(pts) >= 2 else (math.nan,) * 3
        row = {"alpha": float(alpha), "n_points": int(len(pts)), "step_fraction": frac, "n_before": before,
               "n_after": after, "powerlaw_step_fraction": math.nan, "one_step": None, "note": ""}
        if math.isnan(frac):
            row["note"] = "the final loss does not fall with N" if len(pts) >= 2 else "fewer than 2 sizes"
        try:
            f = fit_loglog_ols(x, np.maximum(y, 1e-12))
            null = step_fraction(x, np.exp(f.intercept) * x ** f.slope)[0]
            row["powerlaw_step_fraction"] = null
            if not math.isnan(frac) and not math.isnan(null):
                # one step: most of the drop at one size, and more of it than the power law puts there
                row["one_step"] = bool(frac > ONE_STEP_FRACTION and frac > null and not np.isclose(frac, null))
        except FitError as e:
            row["note"] = (row["note"] + "; " if row["note"] else "") + f"no power-law null: {e}"
        rows.append(row)
    df = pd.DataFrame(rows, columns=["alpha", "n_points", "step_fraction", "n_before", "n_after",
                                     "powerlaw_step_fraction", "one_step", "note"])
    df["one_step"] = df["one_step"].astype("boolean")
    return df


def early_stopping(runs: pd.DataFrame) -> pd.DataFrame:
    """Finite-data models at their best logged step (minimum mean test loss), as the paper's D-scaling uses:
    one row per model with that step, the loss and the number of subtasks learned there."""
    finite = runs[runs.data_size > 0]
    if not len(finite):
        return finite.iloc[:0][["model_id", "width", "data_size", "seed", "step", "mean_loss", "subtasks_learned"]]
    best = finite.loc[finite.groupby("model_id").mean_loss.idxmin()]
    return best[["model_id", "width", "data_size", "seed", "step", "mean_loss", "subtasks_learned"]].rename(
        columns={"step": "best_step", "mean_loss": "min_loss"}).sort_values(["width", "data_size", "seed"])


def width_to_learn(emergence: pd.DataFrame) -> pd.DataFrame:
    """Per subtask: the smallest width (fresh-data models, any seed) that learned it by the end of training."""
    e = emergence[(emergence.data_size == -1) & emergence.learned_step.notna()]
    out = e.groupby(["alpha", "task_rank", "frequency"], as_index=False).width.min()
    return out.rename(columns={"width": "min_width_learned"})


def theory_checks(fits: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """The quantization model's relations as data, per alpha: alpha_N vs alpha, alpha_S and alpha_D vs
    alpha/(alpha+1), and alpha_S, alpha_D vs alpha_N/(alpha_N+1) (predicted CI from alpha_N's CI, the map being
    monotone). Each row: both values, their CIs, whether they are consistent at `level` and by which `rule`:
    against a constant (alpha), `ci-contains` (the constant inside the measured interval); against a measured
    prediction (alpha_N/(alpha_N+1)), `interval-difference`: 0 inside the interval of measured - predicted built
    from the two intervals (MOVER; the fits table keeps intervals, not bootstrap samples). Both are two-sided tests
    at 1 - level (overlapping intervals, the earlier rule, tested at about 0.6% for level 0.95)."""
    rows = []
    for alpha, sub in fits.groupby("alpha"):
        est = {r.quantity: (r.value, (r.ci_lo, r.ci_hi)) for r in sub.itertuples()
               if not (np.isnan(r.value) or np.isnan(r.ci_lo))}
        checks = scaling_theory_checks(alpha_n=est.get("alpha_N"), alpha_d=est.get("alpha_D"),
                                       alpha_s=est.get("alpha_S"), alpha=float(alpha), level=level)
        for c in checks:
            pci = c.predicted_ci or [c.predicted, c.predicted]
            rows.append({"alpha": float(alpha), "check": c.name, "measured": c.measured,
                         "measured_ci_lo": c.measured_ci[0], "measured_ci_hi": c.measured_ci[1],
                         "predicted": c.predicted, "predicted_ci_lo": pci[0], "predicted_ci_hi": pci[1],
                         "consistent": c.consistent, "rule": c.rule})
    return pd.DataFrame(rows, columns=["alpha", "check", "measured", "measured_ci_lo", "measured_ci_hi", "predicted",
                                       "predicted_ci_lo", "predicted_ci_hi", "consistent", "rule"])


def emergence_slope(emergence: pd.DataFrame, level: float = 0.95) -> dict:
    """Slope of log(steps-to-learn) vs log(frequency) for the widest fresh-data model (theory -1)."""
    e = emergence[emergence.data_size == (-1 if (emergence.data_size == -1).any() else emergence.data_size.max())]
    e = e[e.width == e.width.max()].dropna(subset=["learned_step"])
    pts = e.groupby("frequency", as_index=False)["learned_step"].mean()
    out = {"slope": math.nan, "ci": [math.nan, math.nan], "n_points": int(len(pts)), "theory": -1.0}
    if len(pts) >= 3 and pts.learned_step.nunique() >= 2:
        f = fit_loglog_ols(pts.frequency.values, pts.learned_step.values, level=level)
        out.update(slope=f.slope, ci=list(f.ci), r2=f.r2)
    return out


def study_results(st: Store, refs: dict, alpha: float) -> dict:
    """The study's `results` (the CLI's JSON): exponents with CIs beside theory (and the consistency rules),
    emergence slope, final losses (each model at its own last logged step)."""
    fits = st.read_table(refs["fits"])
    level = float(st.lineage(refs["fits"].content_hash).get("params", {}).get("level", 0.95))
    res: dict = {"alpha": alpha, "alpha_theory": alpha, "alpha_S_theory": alpha / (alpha + 1),
                 "alpha_D_theory": alpha / (alpha + 1), "consistent_rule": exponent_rule(level)}
    for r in fits.itertuples():
        res[r.quantity] = r.value
        res[f"{r.quantity}_ci"] = [r.ci_lo, r.ci_hi]
        res[f"{r.quantity}_consistent"] = None if pd.isna(r.consistent) else bool(r.consistent)
        if r.note:
            res[f"{r.quantity}_note"] = r.note  # e.g. why it could not be fitted
    checks = theory_checks(fits, level)
    res["theory_checks"] = checks.to_dict(orient="records")
    res["theory_check_rules"] = {rule: describe_rule(rule, level) for rule in checks["rule"].unique()}
    em = st.read_table(refs["emergence"])
    slope = emergence_slope(em)
    res["steps_to_learn_slope"] = slope["slope"]
    res["steps_to_learn_slope_ci"] = slope["ci"]
    runs = st.read_table(refs["runs"])
    last = final_rows(runs)
    res["final_loss_by_width"] = {str(int(w)): float(v) for w, v in
                                  last[last.data_size == last.data_size.min()].groupby("width").mean_loss.mean().items()}
    steps = st.read_table(refs["step_test"])
    res["step_test"] = steps.to_dict(orient="records")
    for r in st.read_table(refs["quanta"]).itertuples():  # counting quanta: n vs N, C, n vs D (Figure 9)
        res[r.quantity] = r.value
        res[f"{r.quantity}_ci"] = [r.ci_lo, r.ci_hi]
        res[f"{r.quantity}_theory"] = r.theory
    res["report_dir"] = refs["report"].uri
    return jsonable(res)


# ------------------------------------------------------------------------------------------ Prefect tasks
def _load_curves(st: Store, refs: list[ArtifactRef]) -> list[dict]:
    return [st.read_zarr(r)[0] for r in refs]


@quanta_task(name="runs-table")
def build_runs_table(curves_refs: list[ArtifactRef], *, threshold_bits: float, store: str) -> ArtifactRef:
    st = Store(store)
    df = runs_table(_load_curves(st, curves_refs), threshold_bits)
    return st.write_table("sparse_parity.runs", df, inputs=curves_refs, params={"threshold_bits": threshold_bits})


@quanta_task(name="emergence-table")
def build_emergence_table(curves_refs: list[ArtifactRef], spec_ref: ArtifactRef, *, threshold_bits: float,
                          store: str) -> ArtifactRef:
    st = Store(store)
    probs = st.read_zarr(spec_ref)[0]["probs"]
    df = emergence_table(_load_curves(st, curves_refs), probs, threshold_bits)
    return st.write_table("sparse_parity.emergence", df, inputs=[*curves_refs, spec_ref],
                          params={"threshold_bits": threshold_bits})


@quanta_task(name="step-test")
def build_step_test(runs_ref: ArtifactRef, *, n_min: float | None, n_max: float | None, store: str) -> ArtifactRef:
    """One step or a power law (the uniform-frequency control's question), for every alpha of the runs; keyed on
    the alpha_N window only, so other fit settings leave it `Cached`."""
    st = Store(store)
    df = step_test(st.read_table(runs_ref), n_min, n_max)
    return st.write_table("sparse_parity.step_test", df, inputs=[runs_ref], params={"n_min": n_min, "n_max": n_max})


@quanta_task(name="fit-exponents")
def build_fits(runs_ref: ArtifactRef, *, fit_cfg: FitConfig, store: str) -> ArtifactRef:
    st = Store(store)
    df = fit_exponents(st.read_table(runs_ref), fit_cfg)
    return st.write_table("sparse_parity.fits", df, inputs=[runs_ref], params=fit_cfg.model_dump())
