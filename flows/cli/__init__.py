"""The `quanta` command line.

    quanta run STUDY [--config FILE] [--set section.key=value ...] [--store DIR] [--refresh] [--json]
                     [--dask-address tcp://host:8786 | local] [--verbose]
    quanta studies                                             # list studies and their default configs
    quanta lineage TARGET [--store DIR] [--down] [--format text|json|mermaid|dot]
                                                               # TARGET: hash prefix, uri, path, kind, report key
                                                               #   or flow run id
    quanta fit --csv FILE --y COL --x COL [--x COL2] ...        # fit your own scaling data
    quanta serve [--study STUDY ...]                           # serve the scheduled deployments
    quanta store ls [--kind KIND] [--json]                     # what is in the store
    quanta store gc [--keep-last N] [--older-than 30d] [--dry-run]   # remove what no kept run needs
    quanta store verify [--repair] [--store DIR] [--json]      # re-hash every artifact; quarantine bad ones

Each subcommand lives in its own module (`flows.cli.run`, `.lineage`, `.fit`, `.serve`, `.store`); `main` applies the
project's Prefect settings once, before any of them imports Prefect.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import warnings

from flows.cli import fit, lineage, run, serve, store
from flows.prefect_home import configure_prefect


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quanta", description="The Quantization Model of Neural Scaling, "
                                     "as cached, lineage-tracked Prefect flows.")
    sub = parser.add_subparsers(dest="command", required=True)
    run.add_parser(sub)
    lineage.add_parser(sub)
    fit.add_fit_parser(sub)
    serve.add_parser(sub)
    store.add_parser(sub)
    run.add_studies_parser(sub)
    return parser


@contextlib.contextmanager
def _store_warnings_as_lines():
    """The store's warnings (a skipped unreadable lineage record or flow run) as `warning: ...` lines on stderr, every time."""
    from flows.run_artifacts import UnreadableRunWarning
    from storage.lineage import LineageRecordWarning

    as_lines = (LineageRecordWarning, UnreadableRunWarning)
    with warnings.catch_warnings():
        for category in as_lines:
            warnings.simplefilter("always", category)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, as_lines):
                print(f"warning: {message}", file=sys.stderr)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a `schemas.UserInputError` from any of them (a store path, a config) is one line on
    stderr and exit code 2."""
    from schemas import EXIT_USER_ERROR, UserInputError

    args = build_parser().parse_args(argv)
    configure_prefect()
    try:
        with _store_warnings_as_lines():
            return int(args.func(args) or 0)
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
