"""`quanta fit` at scale: seconds to fit a CSV of 1e4, 1e5 and 1e6 rows with uncertainty, beside the objective's own
evaluation time at each size.

Each size: a CSV of a planted law L = 1.7 + 400 x^-0.3 (x log-uniform in 1e6..1e10, 5% log-normal noise) is read and
every cell checked (the CLI's `_read_columns`: pandera), then fitted (`fit_power_law`, the CLI's defaults: ci="auto",
so the 1e4-row fit is a 200-resample bootstrap and the larger ones the asymptotic sandwich). Measured side by side:
one evaluation of the objective with its gradient over all rows (`LogSumExpLaw.fun_grad`). The ratio is the fit's
cost in full-data objective evaluations at 1e6 rows (fit seconds / one evaluation's seconds; lower is better): a
machine-independent measure of how much work beyond the data's own pass the fit does (multistart on a subsample, a
polish on all rows, the sandwich).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from flows.cli.fit import _read_columns
from tasks.stats import fit_power_law
from tasks.stats.huber import LogSumExpLaw, single_threaded_blas

GOAL = "1e6 rows fitted with CIs <= 60 s on 2 cores (ratio: fit cost in full-data objective evaluations, lower=better)"
TRUE = {"E": 1.7, "A": 400.0, "a": 0.3}


def planted_csv(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = np.exp(rng.uniform(np.log(1e6), np.log(1e10), n))
    y = (TRUE["E"] + TRUE["A"] * x ** -TRUE["a"]) * np.exp(rng.normal(0.0, 0.05, n))
    pd.DataFrame({"params": x, "loss": y}).to_csv(path, index=False, float_format="%.9g")
    return path


def eval_seconds(x: np.ndarray, y: np.ndarray, repeats: int = 5) -> float:
    law = LogSumExpLaw(np.log(x)[:, None], np.log(y), True, 1e-3)
    theta = law.from_natural(np.array([TRUE["E"], TRUE["A"], TRUE["a"]]))
    with single_threaded_blas():
        law.fun_grad(theta)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            law.fun_grad(theta)
            times.append(time.perf_counter() - t0)
    return min(times)


def run(sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)) -> dict:
    out: dict = {"name": "quanta fit: 1e4/1e5/1e6-row CSV with CIs", "device": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            csv = planted_csv(Path(tmp) / f"runs_{n}.csv", n)
            t0 = time.perf_counter()
            cols = _read_columns(str(csv), "loss", ["params"])
            t_read = time.perf_counter() - t0
            t0 = time.perf_counter()
            fit = fit_power_law(cols["params"], cols["loss"], names=("params", "loss"))
            t_fit = time.perf_counter() - t0
            t_eval = eval_seconds(cols["params"], cols["loss"])
            tag = f"{n:.0e}".replace("+0", "")
            out[f"seconds_{tag}"] = t_read + t_fit
            out[f"read_seconds_{tag}"] = t_read
            out[f"fit_seconds_{tag}"] = t_fit
            out[f"rows_per_s_{tag}"] = n / (t_read + t_fit)
            out[f"eval_ms_{tag}"] = t_eval * 1e3
            out[f"ci_method_{tag}"] = fit.ci_method
            lo, hi = fit.ci["a"]
            out[f"a_{tag}"] = f"{fit.params['a']:.4f} [{lo:.4f}, {hi:.4f}]"
            out["ratio"] = t_fit / t_eval  # the largest size's, as the last written
    out["goal"] = GOAL
    return out


if __name__ == "__main__":
    r = run()
    for k, v in r.items():
        print(f"{k}: {v}")
