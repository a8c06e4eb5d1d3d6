"""`quanta store verify [--repair] [--store DIR] [--json]`: re-hash every artifact of a store (storage.verify)."""
from __future__ import annotations

import json
import sys

from flows.cli.options import add_store_option

EXIT_BAD = 1


def add_parsers(store_sub) -> None:
    p = store_sub.add_parser(
        "verify", help="re-hash every artifact; report (and with --repair quarantine) the bad ones",
        description="Re-hash every artifact of the store from its stored bytes (streaming: any size, directory "
                    "artifacts too) and report the damaged ones, unreadable lineage records and artifacts whose write "
                    "never finished. With --repair, move each bad one (data and lineage record) to "
                    "<store>/_quarantine/<time>/ so that the next run recomputes it, and remove what killed writers "
                    "left in _tmp/ and _lineage/.",
        epilog="exit codes: 0 every artifact verified; 1 something is bad (also after --repair quarantined it); "
               "2 no store there (or another bad input)")
    add_store_option(p)
    p.add_argument("--repair", action="store_true", help="quarantine bad artifacts (the next run recomputes them)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_verify)


def cmd_verify(args) -> int:
    from storage import Store
    from storage.verify import verify_store

    store = Store(args.store)
    store.check_root(writing=args.repair)
    report = verify_store(store, repair=args.repair)
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0 if report.ok else EXIT_BAD
    size = f"{report.bytes / 1e6:.1f} MB" if report.bytes else "size unrecorded"
    print(f"store {report.store}: {report.checked} artifact(s) re-hashed ({size}), {len(report.bad)} bad")
    for finding in report.bad:
        print(f"  {finding.line()}")
    if report.debris:
        verb = "removed" if report.debris_removed else "found (--repair removes them)"
        print(f"  {len(report.debris)} temporary entr{'y' if len(report.debris) == 1 else 'ies'} of dead writers "
              f"{verb}")
    if report.bad and not args.repair:
        print(f"repair: quanta store verify --repair --store {report.store}   (then rerun the study)", file=sys.stderr)
    elif report.bad:
        print("quarantined: the next run of the studies that made them recomputes them")
    return 0 if report.ok else EXIT_BAD
