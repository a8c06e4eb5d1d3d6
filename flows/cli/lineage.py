"""`quanta lineage TARGET [--down] [--format text|json|mermaid|dot]`: what produced an artifact, a flow run's
artifacts or a report (or, with --down, what was computed from them), as a tree, JSON, a Mermaid flowchart or a
Graphviz digraph.

TARGET is one of: a content-hash prefix; an artifact's uri or path (a file inside a directory artifact, such as
`quanta-store/report/<hash>.d/report.md`, names that artifact); a kind (`report`: the newest artifact of that kind);
a flow run id (everything that run wrote, and everything it used from earlier runs' caches, read from the Prefect
API); a Prefect artifact key of a report (`sparse-parity-report`: the newest one).
"""
from __future__ import annotations

import json
import re
import sys

from flows.cli.options import add_store_option

FORMATS = ("text", "json", "mermaid", "dot")
_ARTIFACT_KEY = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)+$")


def add_parser(sub) -> None:
    p = sub.add_parser("lineage", help="what produced an artifact, a flow run's artifacts or a report "
                                       "(or, with --down, what depends on them)")
    p.add_argument("target", metavar="TARGET",
                   help="content-hash prefix, uri or path, kind, flow run id, or report key (sparse-parity-report)")
    add_store_option(p)
    p.add_argument("--down", action="store_true", help="what was computed from TARGET instead of what produced it")
    p.add_argument("--format", choices=FORMATS, default="text",
                   help="text (default), json, mermaid (a flowchart: paste into markdown), dot (Graphviz)")
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.set_defaults(func=cmd_lineage)


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def cmd_lineage(args) -> int:
    from storage import Store
    from storage import lineage_graph as G

    fmt = "json" if args.json else args.format
    st = Store(args.store)
    records = st.lineage_index()
    if G.is_flow_run_id(args.target):
        return _flow_run(st, records, args.target.strip().lower(), args.down, fmt)
    try:
        root = G.resolve(records, args.target)
    except KeyError as e:
        root = _report_by_key(records, args.target) if _ARTIFACT_KEY.match(args.target) else None
        if root is None:
            return _error(f"{e.args[0]} (store {st.url})")
    if args.down:
        nodes = G.downstream_closure(records, [root["content_hash"]])
        chain = G.downstream(records, root)
    else:
        nodes = G.upstream_closure({r["content_hash"]: r for r in records}.get, [root["content_hash"]])
        chain = G.upstream(records, root)
    what = "dependents of" if args.down else "lineage of"
    graph = G.graph_of(nodes, title=f"{what} {root['kind']}@{root['content_hash'][:12]}")
    if fmt == "json":
        print(json.dumps({"artifact": root, "direction": "down" if args.down else "up",
                          "chain": [{"depth": d, **r} for d, r in chain], **graph.to_json()}, default=str))
        return 0
    if fmt != "text":
        print(graph.to_mermaid() if fmt == "mermaid" else graph.to_dot())
        return 0
    print(f"{what} {root['kind']}@{root['content_hash'][:12]} ({root.get('uri')})")
    if args.down:
        chain = [(0, root)] + chain
    for depth, r in chain:
        params = r.get("params") or {}
        ptxt = ", ".join(f"{k}={v}" for k, v in params.items() if not isinstance(v, dict)) \
            if isinstance(params, dict) else ""
        ptxt = ptxt if len(ptxt) <= 100 else ptxt[:97] + "..."  # all of it: --format json
        print(f"{'  ' * depth}- {G.describe(r)}" + (f"  [{ptxt}]" if ptxt else ""))
    return 0


def _report_by_key(records: list[dict], key: str) -> dict | None:
    """The store record of the newest Prefect report artifact with this key (None if none, or no API)."""
    from storage import lineage_graph as G

    from flows.run_artifacts import latest_report_uri

    try:
        uri = latest_report_uri(key)
        return G.resolve(records, uri) if uri else None
    except Exception:  # noqa: BLE001  (no API, or the report is not in this store)
        return None


def _flow_run(st, records: list[dict], run_id: str, down: bool, fmt: str) -> int:
    """Everything a flow run wrote, plus what it used from earlier runs (its task results, from the Prefect API),
    and (up) their inputs, transitively, or (down) what was computed from them."""
    from storage import lineage_graph as G

    from flows.run_artifacts import run_usage

    by_hash = {r["content_hash"]: r for r in records}
    produced = {r["content_hash"] for r in G.produced_by_run(records, run_id)}
    used: set[str] = set()
    run_name = ""
    try:
        usage = run_usage([run_id]).get(run_id)
        if usage is not None:
            by_uri = {r.get("uri"): h for h, r in by_hash.items()}
            used = {by_uri[u] for _, u in usage.refs if u in by_uri}
            run_name = f"{usage.name} ({usage.flow_name}, {usage.state})"
    except Exception as e:  # noqa: BLE001  (no API: the records still say what the run wrote)
        print(f"warning: Prefect API not reachable ({type(e).__name__}); showing only what the run wrote",
              file=sys.stderr)
    roots = produced | used
    if not roots:
        return _error(f"flow run {run_id} wrote or used no artifact of store {st.url}")
    roles = {h: G.PRODUCED if h in produced else G.REUSED for h in roots}
    if down:
        nodes = G.downstream_closure(records, roots)
    else:
        nodes = G.upstream_closure(by_hash.get, roots)
        roles.update({h: G.UPSTREAM for h in nodes if h not in roles})
    title = (f"flow run {run_id} {run_name}".rstrip() + f": wrote {len(produced)}, reused {len(used - produced)}"
             + (f", {sum(r == G.UPSTREAM for r in roles.values())} upstream" if not down else ""))
    graph = G.graph_of(nodes, roles, title)
    if fmt == "json":
        print(json.dumps({"flow_run_id": run_id, "direction": "down" if down else "up", **graph.to_json()},
                         default=str))
    elif fmt == "mermaid":
        print(graph.to_mermaid())
    elif fmt == "dot":
        print(graph.to_dot())
    else:
        print(graph.to_text())
    return 0
