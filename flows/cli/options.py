"""Options shared by several subcommands."""
from __future__ import annotations


def add_store_option(p) -> None:
    p.add_argument("--store", default=None, help="store root (dir or fsspec URL); default $QUANTA_STORE or "
                                                 "./quanta-store")
