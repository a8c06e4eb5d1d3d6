"""`quanta store ...`: upkeep of the artifact store (`ls`, `gc`: flows.cli.store_upkeep) and its integrity
(`verify [--repair]`: flows.cli.store_verify)."""
from __future__ import annotations

from flows.cli import store_upkeep, store_verify


def add_parser(sub) -> None:
    p = sub.add_parser("store", help="list, clean up and verify the artifact store")
    store_sub = p.add_subparsers(dest="store_command", required=True)
    store_upkeep.add_parsers(store_sub)
    store_verify.add_parsers(store_sub)
