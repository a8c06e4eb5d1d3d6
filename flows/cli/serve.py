"""`quanta serve [--study S ...]`: serve the scheduled deployments (flows/deployments.py)."""
from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the scheduled deployments (prefect.yaml / flows/deployments.py)")
    p.add_argument("--study", action="append", default=[], help="only these studies")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from flows.deployments import serve

    try:
        serve(args.study or None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
