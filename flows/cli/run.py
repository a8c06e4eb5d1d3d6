"""`quanta run STUDY` and `quanta studies`.

Exit codes of `quanta run`: 0 done; 2 bad input (a `schemas.UserInputError`: config, files, device, store), found
before any work or raised by a task inside the flow, printed as one line that names its cause (the traceback is in
the flow run's Prefect logs, and on the terminal with --verbose); 3 a damaged artifact in the store (one line naming
it and the command that repairs it); 1 anything else (a bug: its traceback).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from flows.cli.options import add_store_option
from schemas import EXIT_USER_ERROR, ArtifactCorruptError, UserInputError

EXIT_DAMAGED_STORE = 3
from schemas.config import load_config


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a study")
    p.add_argument("study", help="sparse-parity, alpha-sweep, lm-losses, qdg, qdg-sparse-parity (`quanta studies`)")
    p.add_argument("--config", default=None, help="TOML config (default: the study's demo config)")
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
                "artifact in the store (one line naming it and the repair), 1 other failures")


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


def cmd_run(args) -> int:
    from flows.running import dumps, run_study
    from flows.studies import STUDIES, default_config_path
    from storage import Store

    if args.study not in STUDIES:
        print(f"error: unknown study {args.study!r}; known: {', '.join(STUDIES)}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        config_cls, _ = STUDIES[args.study].load()
    except ModuleNotFoundError as e:
        print(f"error: study {args.study!r} is not available ({e})", file=sys.stderr)
        return EXIT_USER_ERROR
    path = args.config or default_config_path(args.study)
    dask_address = args.dask_address or os.environ.get("QUANTA_DASK_ADDRESS")
    try:
        cfg = load_config(config_cls, path, args.set)
        store = Store(args.store)
        with _terminal_failures(args.verbose):
            out = run_study(args.study, cfg, store.url, refresh=args.refresh, dask_address=dask_address)
    except UserInputError as e:
        return _one_line_error(e, EXIT_USER_ERROR)
    except ArtifactCorruptError as e:
        return _one_line_error(e, EXIT_DAMAGED_STORE)
    if args.json:
        print(dumps(out))
    else:
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
    return 0


def cmd_studies(args) -> int:
    from flows.studies import STUDIES, available_studies

    avail = set(available_studies())
    for name, s in STUDIES.items():
        print(f"{name:15s} {'available' if name in avail else 'not installed':14s} default config: {s.default_config}")
    return 0
