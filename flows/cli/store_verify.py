"""Placeholder: filled by the work on issue 8."""
from __future__ import annotations


def add_parsers(store_sub) -> None:
    return None
