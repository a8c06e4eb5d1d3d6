"""The `quanta` command line.

    quanta run STUDY [--config FILE] [--set section.key=value ...] [--store DIR] [--refresh] [--json]
                     [--dask-address tcp://host:8786]
    quanta lineage ARTIFACT [--store DIR] [--down] [--json]     # ARTIFACT: content-hash prefix or uri
    quanta fit --csv FILE --y COL --x COL [--x COL2] ...        # fit your own scaling data
    quanta serve [--study STUDY ...]                           # serve the scheduled deployments
    quanta studies                                             # list studies and their default configs
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from flows.fit_cli import add_fit_parser
from schemas import ConfigError
from schemas.config import load_config


def _add_store(p):
    p.add_argument("--store", default=None, help="store root (dir or fsspec URL); default $QUANTA_STORE or "
                                                 "./quanta-store")


def _cmd_run(args) -> int:
    from flows.common import STUDIES, default_config_path, dumps, run_study
    from storage import Store
    from storage.settings import default_store_root

    if args.study not in STUDIES:
        print(f"error: unknown study {args.study!r}; known: {', '.join(STUDIES)}", file=sys.stderr)
        return 2
    try:
        config_cls, _ = STUDIES[args.study].load()
    except ModuleNotFoundError as e:
        print(f"error: study {args.study!r} is not available ({e})", file=sys.stderr)
        return 2
    path = args.config or default_config_path(args.study)
    try:
        cfg = load_config(config_cls, path, args.set)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    store = args.store or default_store_root()
    try:
        Store(store)
    except Exception as e:  # noqa: BLE001
        print(f"error: cannot open store {store!r}: {e}", file=sys.stderr)
        return 2
    dask_address = args.dask_address or os.environ.get("QUANTA_DASK_ADDRESS")
    out = run_study(args.study, cfg, Store(store).url, refresh=args.refresh, dask_address=dask_address)
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


def _cmd_lineage(args) -> int:
    from storage import Store
    from storage import lineage as L
    from storage.settings import default_store_root

    st = Store(args.store or default_store_root())
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


def _cmd_serve(args) -> int:
    from flows.deployments import serve

    try:
        serve(args.study or None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _cmd_studies(args) -> int:
    from flows.common import STUDIES, available_studies

    avail = set(available_studies())
    for name, s in STUDIES.items():
        print(f"{name:15s} {'available' if name in avail else 'not installed':14s} default config: {s.default_config}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quanta", description="The Quantization Model of Neural Scaling, "
                                     "as cached, lineage-tracked Prefect flows.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a study")
    p.add_argument("study", help="sparse-parity, alpha-sweep, lm-losses, ...")
    p.add_argument("--config", default=None, help="TOML config (default: the study's demo config)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable); the value is parsed as TOML")
    _add_store(p)
    p.add_argument("--refresh", action="store_true", help="recompute every task, ignoring cached results")
    p.add_argument("--dask-address", default=None, help="run tasks on an existing Dask scheduler "
                                                        "(also $QUANTA_DASK_ADDRESS)")
    p.add_argument("--json", action="store_true", help="print one JSON object (last line)")
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("lineage", help="what produced an artifact (or, with --down, what depends on it)")
    p.add_argument("artifact", help="content-hash prefix, uri, or path of an artifact")
    _add_store(p)
    p.add_argument("--down", action="store_true", help="list dependents instead of producers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_lineage)
    add_fit_parser(sub)
    p = sub.add_parser("serve", help="serve the scheduled deployments (prefect.yaml / flows/deployments.py)")
    p.add_argument("--study", action="append", default=[], help="only these studies")
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser("studies", help="list studies")
    p.set_defaults(func=_cmd_studies)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
