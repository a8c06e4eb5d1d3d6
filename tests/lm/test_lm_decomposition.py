"""Monogenic/polygenic classification on planted curves; alpha_N from the project's fitter on a planted law."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from schemas.lm import AnalysisConfig, ReportConfig
from tasks.lm.decomposition import (MONOGENIC, NONE, POLYGENIC, class_fractions, classify_curves, fit_alpha_n,
                                    scaling_table)
from tasks.lm.report import build_lm_report

N = np.array([1e4, 3e4, 1e5, 3e5, 1e6, 3e6])


def planted() -> tuple[np.ndarray, dict[str, int]]:
    rows = {
        "mono_at_2": [7.0, 6.0, 0.1, 0.05, 0.02, 0.01],
        "mono_at_5": [9.0, 8.5, 8.0, 7.5, 6.0, 0.2],
        "poly_steep": list(3.0 * (N / N[0]) ** -0.5),           # slope -0.5, R^2 = 1
        "poly_noisy_ok": list(2.0 * (N / N[0]) ** -0.4 * np.exp([0, .01, -.01, .01, -.01, 0])),
        "shallow": list(3.0 * (N / N[0]) ** -0.1),              # power law, but slope > -0.3
        "noisy": [3.0, 0.5, 2.0, 0.2, 1.0, 0.1],                # steep on average, R^2 low
        "drop_not_low_enough": [7.0, 6.0, 0.5, 0.4, 0.35, 0.31],
        "not_high_before": [7.0, 4.0, 0.1, 0.05, 0.02, 0.01],
        "goes_back_up": [7.0, 6.0, 0.1, 0.05, 0.5, 0.01],
        "nan_row": [np.nan, 6.0, 0.1, 0.05, 0.02, 0.01],
        "zero_loss": [7.0, 6.0, 0.0, 0.0, 0.0, 0.0],            # exact zeros: monogenic, no log error
    }
    return np.array(list(rows.values()), dtype=np.float32), {k: i for i, k in enumerate(rows)}


def test_classification_on_planted_curves():
    """The log-log statistic (ours, `poly_statistic = "loglog"`) on planted power laws."""
    loss, row = planted()
    out = classify_curves(loss, N, poly_statistic="loglog")
    cls = out["cls"]
    assert cls[row["mono_at_2"]] == MONOGENIC and out["drop_model"][row["mono_at_2"]] == 2
    assert cls[row["mono_at_5"]] == MONOGENIC and out["drop_model"][row["mono_at_5"]] == 5
    assert cls[row["zero_loss"]] == MONOGENIC
    assert cls[row["poly_steep"]] == POLYGENIC and out["slope"][row["poly_steep"]] == pytest.approx(-0.5, abs=1e-5)
    assert out["r2"][row["poly_steep"]] == pytest.approx(1.0, abs=1e-6)
    assert cls[row["poly_noisy_ok"]] == POLYGENIC
    for name in ("shallow", "noisy", "drop_not_low_enough", "not_high_before", "goes_back_up", "nan_row"):
        assert cls[row[name]] == NONE, name
    assert out["drop_model"][row["poly_steep"]] == -1 and np.isnan(out["slope"][row["nan_row"]])
    # thresholds are parameters: a looser polygenic slope admits the shallow curve, a laxer low threshold the drop
    assert classify_curves(loss, N, poly_slope=-0.05, poly_statistic="loglog")["cls"][row["shallow"]] == POLYGENIC
    assert classify_curves(loss, N, mono_low=0.6, poly_statistic="loglog")["cls"][row["drop_not_low_enough"]] == \
        MONOGENIC
    fr = class_fractions(cls, n_valid=len(loss) - 1, n_models=len(N))
    assert fr["monogenic_fraction"] == pytest.approx(3 / 10) and fr["polygenic_fraction"] == pytest.approx(2 / 10)


def test_the_paper_statistic_regresses_nats_on_ln_n_and_calls_other_tokens_polygenic():
    """The paper code's statistic (the default): LinearRegression of the loss in nats on ln N, slope < -0.3 and
    R^2 > 0.98. A curve falling 0.5 nats per e-fold of N is polygenic there and not a power law; a steep power law
    at low loss (0.5 -> 0.04 nats) falls too few nats to count, though its log-log slope is -0.5."""
    lin = 6.0 - 0.5 * np.log(N / N[0])                      # straight in (ln N, nats), slope -0.5
    low_power = 0.5 * (N / N[0]) ** -0.5                     # straight in (ln N, ln L), slope -0.5
    loss = np.array([lin, low_power], dtype=np.float32)
    paper = classify_curves(loss, N)                        # default: poly_statistic="paper"
    loglog = classify_curves(loss, N, poly_statistic="loglog")
    assert paper["cls"].tolist() == [POLYGENIC, NONE]
    assert paper["slope"][0] == pytest.approx(-0.5, abs=1e-5) and paper["r2"][0] == pytest.approx(1.0, abs=1e-6)
    assert loglog["cls"][1] == POLYGENIC and loglog["slope"][1] == pytest.approx(-0.5, abs=1e-5)
    assert loglog["slope"][0] > paper["slope"][0]           # the same curve, another slope
    with pytest.raises(ValueError, match="poly_statistic"):
        classify_curves(loss, N, poly_statistic="log")


def test_classification_edge_cases():
    two = classify_curves(np.array([[6.0, 0.1], [2.0, 1.0]]), np.array([1.0, 2.0]))
    assert two["cls"].tolist() == [MONOGENIC, NONE] and np.isnan(two["slope"]).all()  # no polygenic with 2 models
    with pytest.raises(ValueError, match="ordered"):
        classify_curves(np.ones((2, 3)), np.array([3.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="one entry per model"):
        classify_curves(np.ones((2, 3)), np.array([1.0, 2.0]))


def test_alpha_n_recovered_from_planted_power_law():
    y = 5.0 * (N / 1e4) ** -0.083
    fit = fit_alpha_n(N, y, AnalysisConfig(bootstrap=50))
    assert fit["value"] == pytest.approx(0.083, rel=1e-3) and fit["ci_lo"] - 1e-9 <= 0.083 <= fit["ci_hi"] + 1e-9
    ols = fit_alpha_n(N, y, AnalysisConfig(fit_method="ols"))
    assert ols["value"] == pytest.approx(0.083, rel=1e-6) and ols["method"] == "ols-loglog"
    off = fit_alpha_n(N, 1.0 + 4.0 * (N / 1e4) ** -0.3, AnalysisConfig(fit_offset=True, bootstrap=20))
    assert off["value"] == pytest.approx(0.3, rel=0.05) and off["E"] == pytest.approx(1.0, rel=0.05)
    two = fit_alpha_n(N[:2], y[:2], AnalysisConfig())
    assert two["method"] == "two-point" and two["value"] == pytest.approx(0.083, rel=1e-6)
    assert np.isnan(fit_alpha_n(N[:1], y[:1], AnalysisConfig())["value"])


def test_scaling_table_and_report_without_tokenizer_calls():
    loss, _ = planted()
    table = scaling_table(loss, [f"m{i}" for i in range(6)], (N * 2).astype(int), N.astype(int))
    ok = np.isfinite(loss).all(axis=1)
    assert table.n_tokens.iloc[0] == ok.sum()
    assert table.mean_loss.to_numpy() == pytest.approx(loss[ok].astype(float).mean(axis=0))
    with pytest.raises(ValueError, match="no token"):
        scaling_table(np.full((2, 2), np.nan), ["a", "b"], np.array([1, 2]), np.array([1, 2]))

    class Tok:  # decode = characters of the ids
        def decode(self, ids, **kw):
            return "".join(chr(97 + i % 26) for i in ids)

    classes = classify_curves(loss, N, poly_statistic="loglog")
    ids = np.arange(len(loss), dtype=np.int32)
    offsets = np.array([0, len(loss)])
    fit = fit_alpha_n(N, table.mean_loss.to_numpy(), AnalysisConfig(bootstrap=10))
    rep, fr = build_lm_report(table, fit, loss, classes, {"n_valid": int(ok.sum())}, Tok(), ids, offsets,
                              AnalysisConfig(n_examples=2, poly_statistic="loglog"), ReportConfig(dpi=30))
    md = rep.markdown(embed=False)
    assert "alpha_N" in md and "monogenic_examples" in rep.tables and "polygenic_examples" in rep.tables
    mono = rep.tables["monogenic_examples"]
    assert len(mono) == 2 and set(mono.columns) >= {"context", "token", "drop_at"}
    assert {"mean_loss_vs_n", "loss_distribution_by_size", "example_curves"} <= set(rep.figures)
    assert isinstance(rep.tables["scaling"], pd.DataFrame) and fr["monogenic_fraction"] == pytest.approx(0.3)
