"""`quanta run STUDY [STUDY ...]` and `quanta studies`.

Several studies (`quanta run sparse-parity lm-losses qdg qdg-sparse-parity`: each with its default, demo config) are
checked first, all of them, and then run one after another on one Prefect server (the temporary one, or
PREFECT_API_URL's), each printed as it ends, and the total time last: what `make demo` does.

Exit codes of `quanta run`: 0 done; 2 bad input (a `schemas.UserInputError`: config, files, device, store), found
before any work or raised by a task inside the flow, printed as one line that names its cause (the traceback is in
the flow run's Prefect logs, and on the terminal with --verbose); 3 a damaged artifact in the store (one line naming
it and the command that repairs it); 128 + the signal when stopped by SIGTERM or SIGINT (flows.interrupts: one line,
every child process stopped, within seconds); 1 anything else (a bug: its traceback).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator

from flows.cli.options import add_store_option
from schemas import EXIT_USER_ERROR, ArtifactCorruptError, UserInputError

EXIT_DAMAGED_STORE = 3
from schemas.config import load_config


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a study")
    from flows.studies import STUDIES

    p.add_argument("study", nargs="+", help=f"{', '.join(STUDIES)} (`quanta studies`); several run one after "
                   "another, each with its default config")
    p.add_argument("--config", default=None, help="TOML config (one study only; default: $QUANTA_CONFIG_<STUDY>, "
                   "e.g. QUANTA_CONFIG_SPARSE_PARITY, else the study's demo config)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable); the value is parsed as TOML")
    add_store_option(p)
    p.add_argument("--refresh", action="store_true", help="recompute every task, ignoring cached results")
    p.add_argument("--dask-address", default=None, help="run tasks on an existing Dask scheduler "
                                                        "(also $QUANTA_DASK_ADDRESS); 'local' starts a LocalCluster")
    p.add_argument("--json", action="store_true", help="print one JSON object (last line)")
    p.add_argument("--verbose", action="store_true", help="show failures' tracebacks on the terminal too (they are "
                                                          "always in the flow run's Prefect logs)")
    p.set_defaults(func=cmd_run)
    p.epilog = ("exit codes: 0 done, 2 bad input (config, files, device, store: one line naming it), 3 a damaged "
                "artifact in the store (one line naming it and the repair), 143 / 130 stopped by SIGTERM / SIGINT, "
                "1 other failures")


def add_studies_parser(sub) -> None:
    p = sub.add_parser("studies", help="list studies")
    p.set_defaults(func=cmd_studies)


class _QuietFailures(logging.Filter):
    """Keeps Prefect's failure records (ERROR and above, tracebacks, 'Finished in state Failed') off the terminal:
    `quanta run` prints the cause as one line instead; the API handler still sends them to the Prefect logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("prefect"):
            return True
        if record.levelno >= logging.ERROR or record.exc_info:
            return False
        return "Finished in state Failed" not in record.getMessage()


@contextlib.contextmanager
def _terminal_failures(verbose: bool) -> Iterator[None]:
    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = [] if verbose else [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    quiet = _QuietFailures()
    for h in handlers:
        h.addFilter(quiet)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(quiet)


def _one_line_error(e: Exception, code: int) -> int:
    run = getattr(e, "flow_run_id", None)
    where = f" (flow run {run}: its Prefect logs have the traceback; --verbose shows it here)" if run else ""
    print(f"error: {e}{where}", file=sys.stderr)
    return code


def _load(study: str, args):
    """The config of one study (UserInputError when the study is unknown or not installed)."""
    from flows.deployments import config_path
    from flows.studies import STUDIES

    if study not in STUDIES:
        raise UserInputError(f"unknown study {study!r}; known: {', '.join(STUDIES)}")
    try:
        config_cls, _ = STUDIES[study].load()
    except ModuleNotFoundError as e:
        raise UserInputError(f"study {study!r} is not available ({e})") from None
    return load_config(config_cls, args.config or config_path(study), args.set)


def _print(out: dict, as_json: bool) -> None:
    from flows.running import dumps

    if as_json:
        print(dumps(out))
        return
    print(f"study {out['study']}: flow run {out['flow_run_id']}")
    print(f"store: {out['store']}")
    print("task states: " + ", ".join(f"{k} {v}" for k, v in sorted(out["task_states"].items())))
    for k, v in out["results"].items():
        if isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict)):
            continue  # tables: see the report, or --json
        print(f"  {k}: {v}")
    if "report" in out["artifacts"]:
        print(f"report: {out['artifacts']['report']['uri']}/report.md")
    print("inspect in the UI: `make ui`, then open http://127.0.0.1:4200 (Runs, Artifacts)")


def cmd_run(args) -> int:
    from flows.interrupts import stop_on_signals

    if len(args.study) > 1 and (args.config or args.set):
        print("error: --config and --set apply to one study: run the studies one at a time", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        with stop_on_signals():  # SIGTERM / SIGINT: one line, every child stopped, exit 128 + signal within seconds
            _run_studies(args)
    except UserInputError as e:
        return _one_line_error(e, EXIT_USER_ERROR)
    except ArtifactCorruptError as e:
        return _one_line_error(e, EXIT_DAMAGED_STORE)
    return 0


def _run_studies(args) -> None:
    from flows.local_server import temporary_api
    from flows.running import run_study
    from flows.studies import STUDIES
    from storage import Store

    dask_address = args.dask_address or os.environ.get("QUANTA_DASK_ADDRESS")
    start = time.monotonic()
    configs = [_load(study, args) for study in args.study]
    store = Store(args.store)
    store.check_root()
    for study, cfg in zip(args.study, configs):  # every study's checks before any work
        STUDIES[study].preflight(cfg)
    with temporary_api(), _terminal_failures(args.verbose):
        for study, cfg in zip(args.study, configs):
            out = run_study(study, cfg, store.url, refresh=args.refresh, dask_address=dask_address)
            _print(out, args.json)
    if len(args.study) > 1 and not args.json:
        print(f"\n{len(args.study)} studies in {time.monotonic() - start:.0f} s (wall clock, one Prefect server)")


def cmd_studies(args) -> int:
    from flows.studies import STUDIES, available_studies

    avail = set(available_studies())
    for name, s in STUDIES.items():
        print(f"{name:15s} {'available' if name in avail else 'not installed':14s} default config: {s.default_config}")
    return 0
