"""`quanta fit`: a good CSV gives the planted law as JSON; each bad CSV exits 2 with a clear message."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tasks.stats.huber as huber
from flows.cli.fit import add_fit_parser, run_fit

REPO = Path(__file__).resolve().parents[2]
E_TRUE, A_TRUE, a_TRUE = 1.5, 20.0, 0.6


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="quanta")
    sub = parser.add_subparsers(dest="command", required=True)
    add_fit_parser(sub)
    return parser.parse_args(["fit", *argv])


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text(",".join(header) + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


@pytest.fixture(autouse=True)
def no_progress_lines(monkeypatch):
    """Progress appears once a fit has run PROGRESS_INTERVAL_S: on a busy machine even these small fits may take that
    long, so tests that check stderr switch it off (the progress test switches it on)."""
    import flows.cli.fit as cli

    monkeypatch.setattr(cli, "PROGRESS_INTERVAL_S", 1e9)


@pytest.fixture
def good_csv(tmp_path: Path) -> Path:
    # (bootstrap CIs cover the truth ~96% of the time here, measured over 80 replicates;
    # a fixed seed keeps the test deterministic)
    rng = np.random.default_rng(1)
    x = np.logspace(1, 4, 25)
    y = (E_TRUE + A_TRUE * x**-a_TRUE) * np.exp(rng.normal(0, 0.02, x.size))
    return write_csv(tmp_path / "runs.csv", ["params", "loss", "note"], [[a, b, "ok"] for a, b in zip(x, y)])


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = run_fit(parse(*argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_good_csv_json_1d(good_csv, capsys):
    code, out, err = run(capsys, "--csv", str(good_csv), "--y", "loss", "--x", "params", "--bootstrap", "100", "--json")
    assert code == 0 and err == ""
    d = json.loads(out)  # exactly one JSON object on stdout
    for key in ("params", "ci", "se", "n_points", "method", "law", "x", "y"):
        assert key in d
    assert set(d["params"]) == set(d["ci"]) == set(d["se"]) == {"E", "A", "a"}
    assert d["law"] == "1d" and d["x"] == ["params"] and d["y"] == "loss"
    assert d["n_points"] == 25 and d["method"] == "huber-lbfgs-bootstrap"
    assert d["params"]["a"] == pytest.approx(a_TRUE, abs=0.05)
    assert d["params"]["E"] == pytest.approx(E_TRUE, rel=0.05)
    for name, true in (("E", E_TRUE), ("A", A_TRUE), ("a", a_TRUE)):
        lo, hi = d["ci"][name]
        assert lo <= true <= hi, (name, d["ci"][name])


def test_good_csv_json_2d(tmp_path, capsys):
    rng = np.random.default_rng(1)
    N = np.repeat(np.logspace(6, 9, 5), 5)
    D = np.tile(np.logspace(8, 11, 5), 5)
    y = (1.7 + 400 * N**-0.34 + 410 * D**-0.28) * np.exp(rng.normal(0, 0.01, N.size))
    csv = write_csv(tmp_path / "grid.csv", ["N", "D", "loss"], [list(r) for r in zip(N, D, y)])
    code, out, err = run(capsys, "--csv", str(csv), "--y", "loss", "--x", "N", "--x", "D", "--bootstrap", "30", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["law"] == "2d" and d["x"] == ["N", "D"] and set(d["params"]) == {"E", "A", "a", "B", "b"}
    assert d["params"]["a"] == pytest.approx(0.34, abs=0.05)
    assert d["params"]["b"] == pytest.approx(0.28, abs=0.05)


def test_no_offset_and_human_readable(good_csv, capsys):
    code, out, err = run(capsys, "--csv", str(good_csv), "--y", "loss", "--x", "params", "--no-offset",
                         "--bootstrap", "20", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["params"]["E"] == 0.0 and d["ci"]["E"] == [0.0, 0.0] and d["offset"] is False
    code, out, err = run(capsys, "--csv", str(good_csv), "--y", "loss", "--x", "params", "--bootstrap", "20",
                         "--level", "0.9")
    assert code == 0
    assert "L(params) = E + A * params^-a" in out and "90% CI" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[4:]}
    assert set(rows) == {"E", "A", "a"}
    assert float(rows["a"][1]) == pytest.approx(a_TRUE, abs=0.05)


def test_seed_makes_output_reproducible(good_csv, capsys):
    argv = ("--csv", str(good_csv), "--y", "loss", "--x", "params", "--bootstrap", "30", "--json")
    _, out1, _ = run(capsys, *argv, "--seed", "3")
    _, out2, _ = run(capsys, *argv, "--seed", "3")
    _, out3, _ = run(capsys, *argv, "--seed", "4")
    assert json.loads(out1)["ci"] == json.loads(out2)["ci"] != json.loads(out3)["ci"]


BASE_ROWS = [[10, 3.0], [30, 2.5], [100, 2.1], [300, 1.9], [1000, 1.75], [3000, 1.68], [10000, 1.62], [30000, 1.6]]


def bad_rows(row_index: int, col: int, value) -> list[list]:
    rows = [list(r) for r in BASE_ROWS]
    rows[row_index][col] = value
    return rows


@pytest.mark.parametrize(
    "rows, expected",
    [
        (bad_rows(2, 1, "abc"), ["non-numeric", "'abc'", "'loss'", "row 3"]),
        (bad_rows(6, 0, -3.0), ["non-positive", "-3.0", "'params'", "row 7"]),
        (bad_rows(1, 1, 0), ["non-positive", "'loss'", "row 2"]),
        (bad_rows(4, 1, "nan"), ["NaN", "'loss'", "row 5"]),
        (bad_rows(3, 0, ""), ["empty cell", "'params'", "row 4"]),
        (bad_rows(5, 1, "inf"), ["infinite", "'loss'", "row 6"]),
        (BASE_ROWS[:3], ["too few points", "params", "got 3"]),
    ],
    ids=["non-numeric", "negative-x", "zero-y", "nan", "empty", "inf", "too-few"],
)
def test_bad_csv_exit_2_with_clear_message(tmp_path, capsys, rows, expected):
    csv = write_csv(tmp_path / "bad.csv", ["params", "loss"], rows)
    code, out, err = run(capsys, "--csv", str(csv), "--y", "loss", "--x", "params", "--bootstrap", "0")
    assert code == 2
    assert out == ""
    assert err.startswith("error:") and "Traceback" not in err
    for piece in expected:
        assert piece in err, (piece, err)


def test_missing_file_and_missing_column(good_csv, tmp_path, capsys):
    code, _, err = run(capsys, "--csv", str(tmp_path / "nope.csv"), "--y", "loss", "--x", "params")
    assert code == 2 and "not found" in err and "nope.csv" in err
    code, _, err = run(capsys, "--csv", str(good_csv), "--y", "los", "--x", "params")
    assert code == 2
    assert "'los'" in err and "available columns: 'params', 'loss', 'note'" in err
    code, _, err = run(capsys, "--csv", str(good_csv), "--y", "loss", "--x", "params", "--x", "tokens")
    assert code == 2 and "'tokens'" in err


def test_short_row_is_an_empty_cell(tmp_path, capsys):
    csv = tmp_path / "short.csv"
    csv.write_text("params,loss\n10,3\n30\n100,2\n300,1.9\n1000,1.8\n")
    code, _, err = run(capsys, "--csv", str(csv), "--y", "loss", "--x", "params")
    assert code == 2 and "empty cell" in err and "'loss'" in err and "row 2" in err


def test_two_d_too_few_distinct(tmp_path, capsys):
    rows = [[1e6, 1e9, 3.0 - 0.1 * i] for i in range(3)] + [[1e7, 1e9, 2.5 - 0.1 * i] for i in range(3)]
    csv = write_csv(tmp_path / "g.csv", ["N", "D", "loss"], rows)
    code, _, err = run(capsys, "--csv", str(csv), "--y", "loss", "--x", "N", "--x", "D", "--bootstrap", "0")
    assert code == 2 and "too few points" in err and "distinct D" in err


def test_non_convergence_exit_2(good_csv, capsys, monkeypatch):
    monkeypatch.setattr(huber, "minimise", lambda law, theta0, bounds, **kw: (theta0, 1.0, False))
    code, out, err = run(capsys, "--csv", str(good_csv), "--y", "loss", "--x", "params", "--bootstrap", "0")
    assert code == 2 and out == "" and "did not converge" in err


def test_bad_options_exit_2(good_csv, capsys):
    code, _, err = run(capsys, "--csv", str(good_csv), "--y", "loss", "--x", "params", "--bootstrap", "-1")
    assert code == 2 and "--bootstrap" in err
    code, _, err = run(capsys, "--csv", str(good_csv), "--y", "loss", "--x", "params", "--huber-delta", "0")
    assert code == 2 and "--huber-delta" in err


def test_module_entry_point_subprocess(good_csv, tmp_path):
    cmd = [sys.executable, "-m", "flows.cli.fit", "--csv", str(good_csv), "--y", "loss", "--x", "params",
           "--bootstrap", "30", "--json"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["params"]["a"] == pytest.approx(a_TRUE, abs=0.05) and d["law"] == "1d"

    bad = write_csv(tmp_path / "bad.csv", ["params", "loss"], bad_rows(2, 1, "abc"))
    proc = subprocess.run([sys.executable, "-m", "flows.cli.fit", "--csv", str(bad), "--y", "loss", "--x", "params"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "non-numeric value 'abc'" in proc.stderr and "row 3" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- degenerate data, large tables, progress


def _law_csv(tmp_path: Path, y: np.ndarray, x: np.ndarray | None = None) -> Path:
    x = np.logspace(1, 4, len(y)) if x is None else x
    return write_csv(tmp_path / "law.csv", ["params", "loss"], [[a, b] for a, b in zip(x, y)])


def test_constant_and_rising_loss_are_refused(tmp_path, capsys):
    csv = _law_csv(tmp_path, np.full(10, 2.5))
    code, out, err = run(capsys, "--csv", str(csv), "--y", "loss", "--x", "params")
    assert code == 2 and out == "" and "loss is constant" in err and "no scaling law" in err
    x = np.logspace(1, 4, 10)
    csv = _law_csv(tmp_path, (1.0 + 0.01 * x**0.3) * np.exp(np.random.default_rng(0).normal(0, 0.01, 10)), x)
    code, out, err = run(capsys, "--csv", str(csv), "--y", "loss", "--x", "params", "--bootstrap", "20")
    assert code == 2 and out == ""
    assert "loss does not decrease with params" in err and "refusing" in err


def test_trendless_loss_gets_a_warning_on_stderr_and_in_json(tmp_path, capsys):
    y = 2.0 * np.exp(np.random.default_rng(0).normal(0, 0.05, 10))  # Spearman rho = -0.21, one-sided p = 0.28
    csv = _law_csv(tmp_path, y)
    code, out, err = run(capsys, "--csv", str(csv), "--y", "loss", "--x", "params", "--bootstrap", "20", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert "no-trend" in d["warnings"] and "warning: no significant decrease of loss" in err


def test_large_table_uses_asymptotic_intervals(tmp_path, capsys):
    rng = np.random.default_rng(5)
    n = 40_000
    x = np.exp(rng.uniform(np.log(1e6), np.log(1e10), n))
    y = (1.7 + 400.0 * x**-0.3) * np.exp(rng.normal(0, 0.05, n))
    csv = tmp_path / "big.csv"
    pd.DataFrame({"params": x, "loss": y}).to_csv(csv, index=False)
    code, out, err = run(capsys, "--csv", str(csv), "--y", "loss", "--x", "params", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["ci_method"] == "asymptotic" and d["method"] == "huber-lbfgs-sandwich" and d["n_points"] == n
    for name, true in (("E", 1.7), ("A", 400.0), ("a", 0.3)):
        lo, hi = d["ci"][name]
        assert lo <= true <= hi and d["se"][name] > 0, (name, d["ci"][name])
    assert d["ci"]["a"][1] - d["ci"]["a"][0] < 0.05


def test_ci_option_and_progress_on_stderr(good_csv, capsys, monkeypatch):
    import flows.cli.fit as cli

    code, out, err = run(capsys, "--csv", str(good_csv), "--y", "loss", "--x", "params", "--bootstrap", "30",
                         "--ci", "percentile", "--json")
    assert code == 0 and json.loads(out)["ci_method"] == "percentile"
    assert err == ""  # no progress before PROGRESS_INTERVAL_S
    monkeypatch.setattr(cli, "PROGRESS_INTERVAL_S", 0.0)  # every step "long": progress lines with count and rate
    code, out, err = run(capsys, "--csv", str(good_csv), "--y", "loss", "--x", "params", "--bootstrap", "30")
    assert code == 0
    assert "quanta fit: multistart: 36/36 fits" in err and "quanta fit: bootstrap: 30/30 fits" in err
    assert "fits/s" in err


def test_cells_are_checked_by_the_pandera_schema():
    import pandera.pandas as pa

    from flows.cli.fit import cell_schema

    df = pd.DataFrame({"params": ["10", "20", "x"], "loss": ["3", "-1", "2"], "note": ["a", "b", "c"]})
    with pytest.raises(pa.errors.SchemaErrors) as exc:
        cell_schema(["params", "loss"]).validate(df, lazy=True)
    cases = exc.value.failure_cases
    assert sorted(zip(cases["column"], cases["index"])) == [("loss", 1), ("params", 2)]
