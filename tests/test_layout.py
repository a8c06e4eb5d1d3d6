"""The layout is a contract: layering (import-linter), module size and names, no private names across modules, and
imports without side effects."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "storage", "tasks", "flows")
MAX_LINES = 500


def project_modules() -> list[tuple[str, Path]]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append((".".join(parts), path))
    return out


def test_import_contracts_hold():
    """schemas <- storage <- tasks <- flows; studies independent (qdg may consume lm and sparse parity);
    tasks.stats free of Prefect and the store (.importlinter)."""
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "broken" in proc.stdout and " 0 broken" in proc.stdout


def test_modules_are_small_and_not_named_like_the_standard_library():
    too_long, clashes = [], []
    for name, path in project_modules():
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            too_long.append(f"{name}: {n} lines")
        if name.rsplit(".", 1)[-1] in sys.stdlib_module_names:
            clashes.append(name)
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"
    assert not clashes, f"modules named like standard-library ones: {clashes}"


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for name, path in project_modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                offenders += [f"{name}: from {node.module} import {a.name}" for a in node.names
                              if a.name.startswith("_") and a.name != "__version__"]
    assert not offenders, offenders


def test_importing_every_module_has_no_side_effects(tmp_path):
    """No PREFECT_/QUANTA_ variable set (third-party libraries set a few of their own), no directory created, no matplotlib backend chosen, no torch precision changed."""
    names = [n for n, _ in project_modules() if not n.endswith("__main__")]
    code = f"""
import json, os, sys
sys.path.insert(0, {str(ROOT)!r})
before = dict(os.environ)
import matplotlib
backend = matplotlib.rcParams._get_backend_or_none()
import importlib
for name in {names!r}:
    importlib.import_module(name)
import torch
print(json.dumps({{"env": sorted(k for k in os.environ if os.environ.get(k) != before.get(k)
                         and k.startswith(("PREFECT_", "QUANTA_", "MPL", "OMP_", "TORCH"))),
                  "backend_before": backend, "backend_after": matplotlib.rcParams._get_backend_or_none(),
                  "precision": torch.get_float32_matmul_precision(), "cwd_files": sorted(os.listdir("."))}}))
"""
    home, cwd, qhome = tmp_path / "home", tmp_path / "cwd", tmp_path / "quanta-prefect-home"
    home.mkdir()
    cwd.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "QUANTA_PREFECT_HOME": str(qhome)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["env"] == [], f"importing set environment variables: {out['env']}"
    assert out["backend_after"] == out["backend_before"], "importing chose a matplotlib backend"
    assert out["precision"] == "highest"
    assert out["cwd_files"] == [], f"importing created files: {out['cwd_files']}"
    assert not qhome.exists(), "importing created the project's Prefect home"


def test_tests_read_task_runs_only_once_they_are_final():
    """Task runs reach the Prefect server as events, recorded asynchronously: a test that reads them right after a
    flow returns can miss the last ones (CI saw `KeyError: 'lm-train-L1-d8'`). Tests read them through
    flows.running.final_task_runs / final_task_states (or tests/fault_helpers.py over them); a direct
    `read_task_runs` call is allowed only on a line that says it is a live read of a flow still running."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if "read_task_runs(" in line and "live read" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "read task runs through flows.running.final_task_runs:\n" + "\n".join(offenders)
