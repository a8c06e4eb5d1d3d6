""""Final" rows are each model's own last logged step: a data grid trained for other `steps` than the width grid
keeps the width grid in every final table (alpha_N points, final losses, the results' losses by width)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from schemas.sparse_parity import FitConfig, ReportConfig
from storage import Store
from tasks.sparse_parity.analysis import (emergence_table, final_rows, fit_exponents, runs_table, scaling_data,
                                          step_test, study_results)
from tasks.sparse_parity.report import build_report
from tasks.sparse_parity.quanta import quanta_table
from tasks.sparse_parity.train import n_params

WIDTHS = (10, 20, 40, 80, 160)


def _curves(steps, widths, data_size, alpha=0.4, n_tasks=4, seeds=(0,)):
    """Planted curves: loss = 3 N^-alpha (step / last step)^-0.25 (bits), one model per (width, seed)."""
    steps = np.asarray(steps)
    widths = np.repeat(widths, len(seeds))
    seed = np.tile(seeds, len(widths) // len(seeds))
    N = np.array([n_params(30, w, 1) for w in widths])
    mean = (3.0 * N[:, None] ** -alpha * (steps[None, :] / steps[-1]) ** -0.25).astype(np.float32)
    return {"steps": steps, "loss_bits": np.repeat(mean[:, :, None], n_tasks, axis=2), "mean_loss_bits": mean,
            "width": widths, "n_params": N, "data_size": np.full(len(widths), data_size), "seed": seed,
            "alpha": np.full(len(widths), alpha)}


@pytest.fixture
def curves():
    width_grid = _curves([1, 10, 100, 1000], WIDTHS, -1)
    # the data grid trains longer (other `steps`): its last logged step is beyond the width grid's
    data_grid = [_curves([1, 30, 300, 3000], (40,), d, seeds=(0, 1)) for d in (100, 400, 1600, 6400)]
    return [width_grid, *data_grid]


def test_final_rows_take_each_models_own_last_step(curves):
    runs = runs_table(curves, 0.1)
    assert runs.step.max() == 3000  # the old rule kept only step 3000: the data grid alone
    final = final_rows(runs)
    assert len(final) == runs.model_id.nunique() == len(WIDTHS) + 8
    assert final.groupby("model_id").size().max() == 1
    fresh = final[final.data_size == -1]
    assert sorted(fresh.width) == sorted(WIDTHS) and set(fresh.step) == {1000}
    assert set(final[final.data_size > 0].step) == {3000}
    # alpha_N uses every width of the width grid at its last step, and recovers the planted exponent
    pts = scaling_data(runs, FitConfig())["alpha_N"]
    assert len(pts) == len(WIDTHS)
    fits = fit_exponents(runs, FitConfig(method="ols")).set_index("quantity")
    assert fits.loc["alpha_N", "value"] == pytest.approx(0.4, abs=1e-4)


def test_report_and_results_keep_the_width_grid(curves, tmp_path):
    runs = runs_table(curves, 0.1)
    em = emergence_table(curves, np.full(4, 0.25), 0.1)
    cfg = FitConfig(bootstrap=20, method="ols")
    fits = fit_exponents(runs, cfg)
    rep = build_report(runs, fits, em, curves, cfg, ReportConfig(plots=False))
    final = rep.tables["final_losses"]
    assert sorted(final[final.data_size == -1].width) == sorted(WIDTHS)
    assert len(final) == len(WIDTHS) + 8
    st = Store(str(tmp_path / "store"))
    refs = {"runs": st.write_table("sparse_parity.runs", runs),
            "fits": st.write_table("sparse_parity.fits", fits, params=cfg.model_dump()),
            "emergence": st.write_table("sparse_parity.emergence", em),
            "step_test": st.write_table("sparse_parity.step_test", step_test(runs)),
            "quanta": st.write_table("sparse_parity.quanta", quanta_table(runs)),
            "report": SimpleNamespace(uri=str(tmp_path / "report"))}
    res = study_results(st, refs, 0.4)
    assert sorted(map(int, res["final_loss_by_width"])) == sorted(WIDTHS)
    expected = runs[(runs.data_size == -1) & (runs.step == 1000)].set_index("width").mean_loss
    for w, v in res["final_loss_by_width"].items():
        assert v == pytest.approx(expected[int(w)])
    assert "inside the measured 95% interval" in res["consistent_rule"]
    # the step test and the quanta counts read the same final rows: every width of the width grid
    assert res["step_test"][0]["n_points"] == len(WIDTHS)
    json.dumps(res, allow_nan=False)
