"""Artifact kinds shared by studies (reports)."""
from __future__ import annotations

from schemas.registry import register

REPORT = register("report", "dir", 1, None, "a report directory: report.md, plots (PNG), tables (CSV)")
