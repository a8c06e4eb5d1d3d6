"""`quanta fit`: fit a scaling law to your own CSV table, with confidence intervals.

    quanta fit --csv runs.csv --y loss --x params                 # L = E + A * N^-a
    quanta fit --csv runs.csv --y loss --x params --x tokens      # L = E + A/N^a + B/D^b
    quanta fit --csv runs.csv --y loss --x params --no-offset --json

Intervals (``--ci auto``): expanded-percentile bootstrap below 20,000 rows, the asymptotic sandwich covariance
from there (a 1M-row table fits in seconds; see tasks.stats.uncertainty). Long fits report
progress (count, rate, ETA) on stderr. Data that a decreasing power law does not describe are refused (constant or
rising loss) or flagged with a warning on stderr and in the JSON (no significant trend, a parameter at its bound).

Exit codes: 0 success; 2 bad input (missing file or column, non-numeric/empty/NaN/non-positive
cell, too few points, constant or rising loss) or a fit that did not converge, with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from schemas import EXIT_USER_ERROR, UserInputError
from tasks.progress import Progress
from tasks.stats import FitError, PowerLawFit, fit_chinchilla, fit_power_law
from tasks.stats.powerlaw import CI_METHODS
PROGRESS_INTERVAL_S = 2.0  # the first progress line after this long, then at most one per interval


class _InputError(UserInputError):
    """A user-facing input problem: one line on stderr (the CLI's `error: ` prefix), exit code 2."""


def add_fit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``fit`` subcommand to an argparse ``subparsers`` object; returns its parser.

    The parser's default ``func`` is :func:`run_fit`.
    """
    p = subparsers.add_parser(
        "fit",
        help="fit a scaling law (E + A x^-a, or E + A/N^a + B/D^b) to a CSV table",
        description=(
            "Fit L(x) = E + A*x^-a (one --x) or L(N, D) = E + A/N^a + B/D^b (two --x: N then D) "
            "to columns of a CSV file: Huber loss on log residuals, L-BFGS from a grid of "
            "initialisations, bootstrap (or, for large tables, asymptotic) confidence intervals."
        ),
    )
    p.add_argument("--csv", required=True, metavar="FILE", help="CSV file with a header row")
    p.add_argument("--y", required=True, metavar="COL", help="column with the loss (positive)")
    p.add_argument(
        "--x", required=True, action="append", metavar="COL",
        help="column with the scale variable (positive); give twice for the 2-D law (N, then D)",
    )
    p.add_argument("--no-offset", action="store_true", help="fix the irreducible loss E at 0")
    p.add_argument("--bootstrap", type=int, default=200, metavar="B",
                   help="bootstrap resamples for the CIs (default 200; 0 = no CIs)")
    p.add_argument("--ci", choices=CI_METHODS, default="auto",
                   help="interval method (default auto: expanded-percentile bootstrap below 20000 rows, "
                        "asymptotic sandwich from there)")
    p.add_argument("--huber-delta", type=float, default=1e-3, metavar="d",
                   help="Huber threshold on log residuals (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="bootstrap seed (default 0)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the CIs (default 0.95)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run_fit)
    return p


def _positive_numbers(cells: pd.Series) -> pd.Series:
    """Element-wise: the cell is a finite number > 0 (short rows read as NaN, i.e. empty)."""
    values = pd.to_numeric(cells.str.strip(), errors="coerce")
    return values.notna() & np.isfinite(values) & (values > 0)


def cell_schema(columns: list[str]) -> pa.DataFrameSchema:
    """The CSV cells the fit reads, as text: each a finite positive number (pandera; other columns ignored)."""
    check = pa.Check(_positive_numbers, name="positive finite number")
    return pa.DataFrameSchema({c: pa.Column(checks=check, nullable=True) for c in columns}, strict=False)


def value_schema(columns: list[str]) -> pa.DataFrameSchema:
    """The same contract on columns already parsed as float64: finite and > 0, no NaN (the fast path)."""
    checks = [pa.Check(np.isfinite, name="finite"), pa.Check.gt(0)]
    return pa.DataFrameSchema({c: pa.Column(float, checks=checks, nullable=False) for c in columns}, strict=False)


def _cell_problem(raw: Any) -> str:
    """What is wrong with one failing cell, in words that name its value."""
    text = raw.strip() if isinstance(raw, str) else ""  # short rows come back as NaN
    if text == "":
        return "empty cell"
    value = pd.to_numeric(pd.Series([text]), errors="coerce").iloc[0]
    if pd.isna(value):
        return f"NaN value {text!r}" if text.lower().lstrip("+-") == "nan" else f"non-numeric value {text!r}"
    if math.isinf(value):
        return f"infinite value {text!r}"
    return f"non-positive value {text}"


def _read_csv(path: str, **kwargs) -> pd.DataFrame:
    """pandas.read_csv with file and parse errors as one-line input errors."""
    try:
        return pd.read_csv(path, skipinitialspace=True, **kwargs)
    except FileNotFoundError:
        raise _InputError(f"CSV file not found: {path}") from None
    except IsADirectoryError:
        raise _InputError(f"--csv {path} is a directory, not a CSV file") from None
    except PermissionError:
        raise _InputError(f"cannot read CSV file {path}: permission denied") from None
    except pd.errors.EmptyDataError:
        raise _InputError(f"CSV file {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise _InputError(f"cannot parse CSV file {path}: {exc}") from None


def _read_columns(path: str, y_col: str, x_cols: list[str]) -> dict[str, np.ndarray]:
    """Read the needed columns as floats, every cell checked by a pandera schema; the first bad cell (columns in --x,
    --y order) is reported with its column, 1-based data row, line of the file and value.

    Fast path (a million rows in about a second): the columns parsed as float64 by pandas' C parser and checked by
    `value_schema`. Any problem (a cell that is not a number, empty, NaN, infinite, not positive) falls back to
    reading the columns as text and `cell_schema`, whose failure cases name the cell."""
    header = _read_csv(path, nrows=0)
    header.columns = [str(c).strip() for c in header.columns]
    available = ", ".join(repr(c) for c in header.columns)
    for col in [y_col, *x_cols]:
        if col not in header.columns:
            raise _InputError(f"column {col!r} not found in {path}; available columns: {available}")
    wanted = list(dict.fromkeys([*x_cols, y_col]))

    def usecols(c) -> bool:
        return str(c).strip() in wanted

    try:
        values = _read_csv(path, usecols=usecols, dtype=float)
        values.columns = [str(c).strip() for c in values.columns]
        if len(values):
            value_schema(wanted).validate(values)
            return {col: values[col].to_numpy() for col in wanted}
    except (ValueError, TypeError, pa.errors.SchemaError):
        pass
    df = _read_csv(path, usecols=usecols, dtype=str, keep_default_na=False)  # as text: name the exact bad cell
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise _InputError(f"CSV file {path} has a header but no data rows")
    try:
        cell_schema(wanted).validate(df, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        cases = cases[cases["column"].isin(wanted) & cases["index"].notna()]
        if not len(cases):
            raise _InputError(f"bad cells in {path}: {exc}") from None
        cases = cases.assign(order=cases["column"].map(wanted.index)).sort_values(["order", "index"])
        first = cases.iloc[0]
        row = int(first["index"]) + 1
        problem = _cell_problem(df.at[int(first["index"]), first["column"]])
        where = f"column {first['column']!r}, row {row} (line {row + 1} of {path})"
        tail = "; the law needs positive values" if problem.startswith("non-positive") else ""
        raise _InputError(f"{problem} in {where}{tail}") from None
    return {col: pd.to_numeric(df[col].str.strip()).to_numpy(dtype=float) for col in wanted}


class _StderrProgress:
    """The fit's ``progress(stage, done, total)`` callback: the project's `Progress` meter (count, rate, ETA) on
    stderr, one per stage. Silent for fits shorter than PROGRESS_INTERVAL_S: the first line comes after that long."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("quanta.fit.progress")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.handler = logging.StreamHandler(sys.stderr)  # the stderr of this run (tests swap it)
        self.handler.setFormatter(logging.Formatter("quanta fit: %(message)s"))
        self.logger.addHandler(self.handler)
        self.stage: str | None = None
        self.meter: Progress | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage or self.meter is None:
            self._finish()
            self.stage = stage
            self.meter = Progress(stage, total, unit="fit", interval=PROGRESS_INTERVAL_S, logger=self.logger)
        if done < total:
            self.meter.update(1)
        else:  # the stage's last step: one closing line, if the stage ran long enough to show progress
            self.meter.n = done
            if time.monotonic() - self.meter.start >= PROGRESS_INTERVAL_S:
                self.meter.close()
            self.meter = None

    def _finish(self) -> None:
        if self.meter is not None and self.meter.last != self.meter.start:  # it has spoken: close with the count
            self.meter.close()
        self.meter = None

    def close(self) -> None:
        self._finish()
        self.logger.removeHandler(self.handler)


def _format_table(fit: PowerLawFit, y_col: str, x_cols: list[str]) -> str:
    pct = f"{fit.level * 100:g}%"
    if fit.law == "1d":
        head = f"L({x_cols[0]}) = E + A * {x_cols[0]}^-a"
    else:
        head = f"L({x_cols[0]}, {x_cols[1]}) = E + A / {x_cols[0]}^a + B / {x_cols[1]}^b"
    if not fit.offset:
        head += "   (E fixed at 0)"
    lines = [
        f"fit of {y_col!r}:  {head}",
        f"method {fit.method}, intervals {fit.ci_method}, n_points {fit.n_points}, bootstrap {fit.n_bootstrap}"
        + (f" ({fit.n_bootstrap_failed} failed)" if fit.n_bootstrap_failed else "")
        + f", Huber delta {fit.huber_delta:g}, loss {fit.loss:.4g}, converged {fit.converged}",
        "",
        f"  {'param':<6} {'value':>12}   {pct + ' CI':<27} {'se':>10}",
    ]
    for name, value in fit.params.items():
        lo, hi = fit.ci[name]
        ci = f"[{lo:.5g}, {hi:.5g}]" if math.isfinite(lo) and math.isfinite(hi) else "n/a"
        se = fit.se[name]
        se_s = f"{se:.3g}" if math.isfinite(se) else "n/a"
        lines.append(f"  {name:<6} {value:>12.6g}   {ci:<27} {se_s:>10}")
    return "\n".join(lines)


def run_fit(args: argparse.Namespace) -> int:
    """Run ``quanta fit`` with parsed ``args``; prints the result, returns the exit code."""
    try:
        x_cols = list(args.x)
        if len(x_cols) not in (1, 2):
            raise _InputError(f"give one --x (1-D law) or two (2-D law: N then D); got {len(x_cols)}")
        if len(set(x_cols)) != len(x_cols):
            raise _InputError(f"the two --x columns must differ; got {x_cols[0]!r} twice")
        if args.bootstrap < 0:
            raise _InputError(f"--bootstrap must be >= 0; got {args.bootstrap}")
        if not args.huber_delta > 0:
            raise _InputError(f"--huber-delta must be > 0; got {args.huber_delta}")
        if not 0 < args.level < 1:
            raise _InputError(f"--level must be in (0, 1); got {args.level}")
        cols = _read_columns(args.csv, args.y, x_cols)
        progress = _StderrProgress()
        common = dict(offset=not args.no_offset, huber_delta=args.huber_delta, n_bootstrap=args.bootstrap,
                      level=args.level, seed=args.seed, ci=args.ci, progress=progress)
        try:
            if len(x_cols) == 1:
                fit = fit_power_law(cols[x_cols[0]], cols[args.y], names=(x_cols[0], args.y), **common)
            else:
                fit = fit_chinchilla(cols[x_cols[0]], cols[x_cols[1]], cols[args.y],
                                     names=(x_cols[0], x_cols[1], args.y), **common)
        finally:
            progress.close()
        if "not-decreasing" in fit.warnings:
            raise _InputError(f"{fit.warnings['not-decreasing']}; refusing to report a scaling law")
    except (_InputError, FitError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    for message in fit.warnings.values():
        print(f"warning: {message}", file=sys.stderr)

    if args.json:
        out = fit.to_dict()
        out.update({"x": x_cols, "y": args.y, "csv": str(args.csv)})
        print(json.dumps(out))
    else:
        print(_format_table(fit, args.y, x_cols))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m flows.cli.fit --csv ... --y ... --x ...``."""
    parser = argparse.ArgumentParser(prog="quanta")
    sub = parser.add_subparsers(dest="command", required=True)
    add_fit_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "fit":
        argv = ["fit", *argv]
    args = parser.parse_args(argv)
    return run_fit(args)


if __name__ == "__main__":
    sys.exit(main())
