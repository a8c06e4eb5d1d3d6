"""Adding a study is one folder of work: a flow module, a tasks package, a schema module and configs. What must
follow from them (the registry, the import contract, the CLI's list, the deployments) is checked here, and a missing
piece is named."""
from __future__ import annotations

import ast
import configparser
from pathlib import Path

from flows.studies import STUDIES

ROOT = Path(__file__).resolve().parents[2]


def _defines(path: Path, *names: str) -> bool:
    tree = ast.parse(path.read_text())
    found = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
             for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
    return set(names) <= found


def test_every_flow_module_with_a_flow_and_config_is_a_registered_study():
    modules = {f"flows.{p.stem}" for p in (ROOT / "flows").glob("*.py") if _defines(p, "FLOW", "CONFIG")}
    registered = {s.module for s in STUDIES.values()}
    assert modules, "no flow module defines FLOW and CONFIG"
    assert modules - registered == set(), f"flow modules missing from flows.studies.STUDIES: {modules - registered}"
    assert registered - modules == set(), f"STUDIES names modules without FLOW and CONFIG: {registered - modules}"


def test_every_study_has_its_default_config_and_a_schema_module():
    for name, study in STUDIES.items():
        assert (ROOT / study.default_config).is_file(), f"{name}: default config {study.default_config} is missing"
        package = Path(study.default_config).parts[1]  # configs/<package>/...
        assert (ROOT / "tasks" / package).is_dir(), f"{name}: configs/{package} has no tasks/{package} package"
        assert (ROOT / "schemas" / f"{package}.py").is_file(), f"{name}: no schemas/{package}.py"


def test_every_study_package_is_in_the_import_contract():
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".importlinter")
    named = {m.strip() for section in parser.sections() if section.startswith("importlinter:contract")
             for key in ("modules", "source_modules", "forbidden_modules") if key in parser[section]
             for m in parser[section][key].split()}
    packages = {f"tasks.{p.name}" for p in (ROOT / "tasks").iterdir() if (p / "__init__.py").is_file()}
    missing = packages - named
    assert missing == set(), f".importlinter names no contract for {sorted(missing)}: add the package to one"


def test_the_cli_lists_every_study():
    from flows.cli import build_parser

    run = build_parser()._subparsers._group_actions[0].choices["run"]
    help_text = next(a.help for a in run._actions if a.dest == "study")
    missing = [name for name in STUDIES if name not in help_text]
    assert not missing, f"`quanta run --help` does not list {missing}"


def test_every_study_module_has_the_registry_contract():
    """CONFIG, FLOW, results(st, refs, config) and preflight(config): one name for each, in every study."""
    import importlib
    import inspect

    for name, study in STUDIES.items():
        mod = importlib.import_module(study.module)
        for attr in ("CONFIG", "FLOW", "results", "preflight"):
            assert hasattr(mod, attr), f"{name}: {study.module} defines no {attr}"
        assert list(inspect.signature(mod.results).parameters) == ["st", "refs", "config"], \
            f"{name}: results(st, refs, config) is the signature every study shares"
        assert list(inspect.signature(mod.preflight).parameters) == ["config"], f"{name}: preflight(config)"
