"""`quanta run STUDY` and `quanta studies`."""
from __future__ import annotations

import os
import sys

from flows.cli.options import add_store_option
from schemas import ConfigError
from schemas.config import load_config


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a study")
    p.add_argument("study", help="sparse-parity, alpha-sweep, lm-losses, ...")
    p.add_argument("--config", default=None, help="TOML config (default: the study's demo config)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable); the value is parsed as TOML")
    add_store_option(p)
    p.add_argument("--refresh", action="store_true", help="recompute every task, ignoring cached results")
    p.add_argument("--dask-address", default=None, help="run tasks on an existing Dask scheduler "
                                                        "(also $QUANTA_DASK_ADDRESS); 'local' starts a LocalCluster")
    p.add_argument("--json", action="store_true", help="print one JSON object (last line)")
    p.set_defaults(func=cmd_run)


def add_studies_parser(sub) -> None:
    p = sub.add_parser("studies", help="list studies")
    p.set_defaults(func=cmd_studies)


def cmd_run(args) -> int:
    from flows.running import dumps, run_study
    from flows.studies import STUDIES, default_config_path
    from storage import Store

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
        STUDIES[args.study].preflight(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        store = Store(args.store)
    except Exception as e:  # noqa: BLE001
        print(f"error: cannot open store {args.store!r}: {e}", file=sys.stderr)
        return 2
    dask_address = args.dask_address or os.environ.get("QUANTA_DASK_ADDRESS")
    out = run_study(args.study, cfg, store.url, refresh=args.refresh, dask_address=dask_address)
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
