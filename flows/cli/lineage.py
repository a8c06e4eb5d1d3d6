"""`quanta lineage ARTIFACT [--down] [--json]`: what produced an artifact, or what was computed from it."""
from __future__ import annotations

import json
import sys

from flows.cli.options import add_store_option


def add_parser(sub) -> None:
    p = sub.add_parser("lineage", help="what produced an artifact (or, with --down, what depends on it)")
    p.add_argument("artifact", help="content-hash prefix, uri, or path of an artifact")
    add_store_option(p)
    p.add_argument("--down", action="store_true", help="list dependents instead of producers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lineage)


def cmd_lineage(args) -> int:
    from storage import Store
    from storage import lineage as L

    st = Store(args.store)
    records = st.lineage_index()
    try:
        root = L.resolve(records, args.artifact)
    except KeyError as e:
        print(f"error: {e.args[0]} (store {st.url})", file=sys.stderr)
        return 2
    chain = L.downstream(records, root) if args.down else L.upstream(records, root)
    if args.json:
        print(json.dumps({"artifact": root, "direction": "down" if args.down else "up",
                          "chain": [{"depth": d, **r} for d, r in chain]}, default=str))
        return 0
    print(f"{'dependents of' if args.down else 'lineage of'} {root['kind']}@{root['content_hash'][:12]} "
          f"({root.get('uri')})")
    if args.down:
        chain = [(0, root)] + chain
    for depth, r in chain:
        params = r.get("params") or {}
        ptxt = ", ".join(f"{k}={v}" for k, v in params.items() if not isinstance(v, dict)) \
            if isinstance(params, dict) else ""
        ptxt = ptxt if len(ptxt) <= 100 else ptxt[:97] + "..."  # all of it: --json
        print(f"{'  ' * depth}- {r['kind']}@{r['content_hash'][:12]}  by {r.get('producer')} "
              f"(flow run {str(r.get('flow_run_id'))[:8]}, {r.get('created_at', '')[:19]}, "
              f"code {r.get('code_version', '?')})" + (f"  [{ptxt}]" if ptxt else ""))
    return 0
