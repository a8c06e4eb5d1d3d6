"""`quanta store ls` and `quanta store gc`: what is in the store, and removing what no kept run needs.

    quanta store ls [--kind KIND] [--json]                              # artifacts, newest first; totals by kind
    quanta store gc --keep-last N [--older-than D] [--dry-run] [--json]  # D: 30d, 12h, 2w, ...

gc keeps the N newest runs and/or the runs younger than D, and everything in their lineage closure; it removes every
other artifact of the store, its lineage record, and the Prefect result (cache) files that name it. Which artifacts a
run used is read from the Prefect API (a run whose tasks were all Cached wrote nothing but used plenty); without an
API, `--records-only` uses the store's lineage records alone (a fully cached run is then invisible).
"""
from __future__ import annotations

import math

import json
import sys

from flows.cli.options import add_store_option


def add_parsers(store_sub) -> None:
    p = store_sub.add_parser("ls", help="list the store's artifacts (kind, size, age, producing run, study)")
    add_store_option(p)
    p.add_argument("--kind", action="append", default=[], help="only artifacts of this kind (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object: artifacts and totals")
    p.set_defaults(func=cmd_ls)

    g = store_sub.add_parser("gc", help="remove artifacts that no kept run needs",
                             description="Keep the newest runs (--keep-last N) and/or the recent ones (--older-than "
                                         "D: runs that started earlier are dropped) and everything in their lineage "
                                         "closure; remove the rest with their lineage records and Prefect cache files.")
    add_store_option(g)
    g.add_argument("--keep-last", type=int, default=None, metavar="N", help="keep the N newest runs")
    g.add_argument("--older-than", default=None, metavar="D",
                   help="drop runs that started more than D ago (30d, 12h, 90m, 2w; a bare number is days)")
    g.add_argument("--dry-run", action="store_true", help="show what would be removed; remove nothing")
    g.add_argument("--records-only", action="store_true",
                   help="do not ask the Prefect API which artifacts each run used (lineage records only)")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_gc)


def cmd_ls(args) -> int:
    from storage import Store
    from storage.upkeep import human_bytes, inventory, totals_by_kind

    st = Store(args.store)
    st.check_root(writing=False)
    inv = inventory(st)
    if args.kind:
        inv = inv[inv.kind.isin(args.kind)].reset_index(drop=True)
    totals = totals_by_kind(inv)
    if args.json:
        print(json.dumps({"store": st.url, "artifacts": inv.to_dict(orient="records"),
                          "totals": totals.to_dict(orient="records")}, default=str))
        return 0
    print(f"store {st.url}: {len(inv)} artifacts, {human_bytes(int(inv['bytes'].sum()))}")
    if len(inv):
        view = inv.assign(hash=inv.content_hash.str[:12], size=inv["bytes"].map(human_bytes),
                          age=inv.age_days.map(_age), run=inv.flow_run_id.fillna("-").astype(str).str[:8],
                          study=inv.study.fillna("-"))
        print(view[["kind", "hash", "size", "age", "producer", "run", "study"]].to_string(index=False))
        print()
        print(totals.assign(size=totals["bytes"].map(human_bytes))[["kind", "artifacts", "size"]]
              .to_string(index=False))
    return 0


def _age(days: float) -> str:
    if math.isnan(days):
        return "?"
    if days >= 1:
        return f"{days:.1f}d"
    hours = days * 24
    return f"{hours:.1f}h" if hours >= 1 else f"{hours * 60:.0f}m"


def cmd_gc(args) -> int:
    from storage import Store
    from storage.upkeep import apply_gc, human_bytes, merge_runs, parse_duration, plan_gc, runs_from_records

    try:
        older = parse_duration(args.older_than) if args.older_than is not None else None
        if args.keep_last is None and older is None:
            raise ValueError("say what to keep: --keep-last N and/or --older-than D")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    st = Store(args.store)
    st.check_root(writing=not args.dry_run)
    records = st.lineage_index()
    foreign = st.foreign_records(records)
    if foreign:  # a store copied by an older quanta: its records name the original's files, which gc would delete
        print(f"error: store {st.url}: {len(foreign)} lineage record(s) name artifacts outside it (e.g. "
              f"{foreign[0]['uri']}): it was copied or moved from another store by a quanta that wrote absolute uris; "
              "gc refuses it (run gc on the original store)", file=sys.stderr)
        return 2
    runs = runs_from_records(records)
    result_dirs = []
    if not args.records_only:
        from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

        from flows.run_artifacts import run_usage

        try:
            usage = run_usage()
        except Exception as e:  # noqa: BLE001  (no API: say so, and how to go on without it)
            print(f"error: cannot read the runs from the Prefect API ({type(e).__name__}: {e}); start it, or "
                  "use --records-only", file=sys.stderr)
            return 2
        runs = merge_runs(runs, usage.values(), records)
        result_dirs.append(PREFECT_LOCAL_STORAGE_PATH.value())
    try:
        plan = plan_gc(records, runs, keep_last=args.keep_last, older_than=older)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    done = {"artifacts_removed": 0, "bytes_freed": 0, "result_files_removed": 0}
    if not args.dry_run:
        done = apply_gc(st, plan, result_dirs)
    summary = {
        "store": st.url, "dry_run": bool(args.dry_run),
        "kept_runs": [_run_json(r) for r in plan.keep_runs], "dropped_runs": [_run_json(r) for r in plan.drop_runs],
        "kept_artifacts": len(plan.keep),
        "removed": [{"kind": r.get("kind"), "content_hash": r["content_hash"], "uri": r.get("uri"),
                     "flow_run_id": r.get("flow_run_id")} for r in plan.remove],
        **done,
    }
    if args.json:
        print(json.dumps(summary, default=str))
        return 0
    for label, group in (("keep", plan.keep_runs), ("drop", plan.drop_runs)):
        for r in group:
            print(f"{label} run {r.flow_run_id[:8]} {r.flow_name or '?':15s} started "
                  f"{r.started.isoformat()[:19] if r.started else '?'}  {len(r.hashes)} artifacts")
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(plan.remove)} artifacts; keeping {len(plan.keep)} that the {len(plan.keep_runs)} kept run(s) "
          f"need")
    for r in plan.remove:
        print(f"  - {r.get('kind')}@{r['content_hash'][:12]} (flow run {str(r.get('flow_run_id'))[:8]})")
    if not args.dry_run:
        print(f"freed {human_bytes(done['bytes_freed'])}; removed {done['result_files_removed']} Prefect result files")
    return 0


def _run_json(r) -> dict:
    return {"flow_run_id": r.flow_run_id, "flow_name": r.flow_name,
            "started": r.started.isoformat() if r.started else None, "artifacts": len(r.hashes)}
