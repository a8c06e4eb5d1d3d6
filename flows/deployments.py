"""Scheduled deployments of the studies, served by Prefect's `serve` (no work pool, no worker).

    quanta serve [--study sparse-parity ...]      # = serve(studies); blocks, Ctrl-C to stop

Each available study of `flows.studies.STUDIES` becomes the deployment `<study>/scheduled`, whose parameters are
the study's default config (its demo TOML, validated, dumped to JSON: the Prefect UI shows it as a form) and the
store (made absolute when the deployments are built, so scheduled runs share caches with `quanta run`).

Knobs (environment; STUDY is the study name upper-cased with '-' -> '_', e.g. QUANTA_SCHEDULE_SPARSE_PARITY):
    QUANTA_SCHEDULE_<STUDY>   a cron expression ("0 2 * * *"), a number of seconds ("3600": an interval), or
                              "off" (no schedule: the deployment runs only when triggered). Defaults: DEFAULT_SCHEDULES.
    QUANTA_SCHEDULE_TIMEZONE  IANA time zone of the cron schedules (default UTC).
    QUANTA_CONFIG_<STUDY>     a TOML config to run instead of the study's default one.
    QUANTA_STORE              the store root (default ./quanta-store).

Schedules fire only on a Prefect server that runs its scheduler service (`make ui`, then
PREFECT_API_URL=http://127.0.0.1:4200/api); the ephemeral API a bare `quanta run` starts has no scheduler, so
`serve` refuses to start without PREFECT_API_URL.

`prefect.yaml` declares the same deployments for `prefect deploy --all` (a work pool and a worker instead of
`serve`); `python -m flows.deployments` prints it from the same definitions (tests check that the two agree).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from flows.studies import STUDIES, available_studies
from storage.settings import PROJECT_ROOT, default_store_root

DEPLOYMENT_NAME = "scheduled"
# Nightly / weekly, staggered so that two studies do not compete for the CPU. A rerun with unchanged code and
# config is all `Cached` (seconds); after a code change only the affected tasks recompute.
DEFAULT_SCHEDULES: dict[str, str] = {
    "sparse-parity": "0 2 * * *",  # 02:00 every night
    "lm-losses": "0 3 * * *",  # 03:00 every night
    "alpha-sweep": "0 4 * * 6",  # 04:00 on Saturdays (the longest demo)
    "qdg": "30 3 * * *",  # 03:30, after lm-losses: its lm tasks come back Cached
    "qdg-sparse-parity": "0 5 * * 0",  # 05:00 on Sundays
    "qdg-calibration": "0 6 * * 0",  # 06:00 on Sundays (about 50 min; only changed code or config recompute)
}
FALLBACK_SCHEDULE = "0 5 * * *"  # a study added to STUDIES without an entry above
DEFAULT_TIMEZONE = "UTC"
WORK_POOL = "quanta"  # prefect.yaml's work pool (a `process` pool: `prefect work-pool create quanta --type process`)
_OFF = {"", "off", "none", "manual", "false", "0"}


def _env_name(prefix: str, study: str) -> str:
    return f"{prefix}{study.upper().replace('-', '_')}"


def schedule_spec(study: str) -> str | None:
    """The study's schedule as text: $QUANTA_SCHEDULE_<STUDY>, else its default; None when switched off."""
    raw = os.environ.get(_env_name("QUANTA_SCHEDULE_", study))
    value = (DEFAULT_SCHEDULES.get(study, FALLBACK_SCHEDULE) if raw is None else raw).strip()
    return None if value.lower() in _OFF else value


def schedule_kwargs(study: str) -> dict[str, Any]:
    """`to_deployment` keyword arguments for the study's schedule: {"schedules": [Cron | Interval]} or {}.

    A value made of digits (optionally with a decimal point) is an interval in seconds; anything else must be
    a valid cron expression. Raises ValueError naming the environment variable when it is not."""
    from prefect.schedules import Cron, Interval

    spec = schedule_spec(study)
    if spec is None:
        return {}
    var = _env_name("QUANTA_SCHEDULE_", study)
    tz = os.environ.get("QUANTA_SCHEDULE_TIMEZONE") or DEFAULT_TIMEZONE
    try:
        if spec.replace(".", "", 1).isdigit():
            seconds = float(spec)
            if seconds <= 0:
                raise ValueError("an interval must be positive")
            return {"schedules": [Interval(seconds, timezone=tz)]}
        return {"schedules": [Cron(spec, timezone=tz)]}
    except Exception as e:  # noqa: BLE001  (pydantic / croniter errors: say which variable is wrong)
        raise ValueError(f"{var}={spec!r} is not a cron expression, a number of seconds, or 'off' ({e})") from None


def config_path(study: str) -> Path:
    """$QUANTA_CONFIG_<STUDY>, else the study's default TOML."""
    raw = os.environ.get(_env_name("QUANTA_CONFIG_", study))
    return Path(raw) if raw else PROJECT_ROOT / STUDIES[study].default_config


def default_store() -> str:
    """The store every deployment writes to: $QUANTA_STORE or ./quanta-store, absolute (URLs unchanged)."""
    root = default_store_root()
    return root if "://" in root else os.path.abspath(root)


def study_parameters(study: str) -> dict[str, Any]:
    """The deployment's parameters: {"config": <validated config as JSON data>, "store": <store root>}.

    The config travels as plain JSON data (what the UI form edits); the flow's signature turns it back into
    the pydantic model when a run starts (Prefect validates parameters against the flow's annotations)."""
    from schemas.config import load_config

    config_cls, _ = STUDIES[study].load()
    config = load_config(config_cls, config_path(study))
    return {"config": config.model_dump(mode="json"), "store": default_store()}


def _select(studies: list[str] | None) -> list[str]:
    available = available_studies()
    if not studies:
        return available
    unknown = [s for s in studies if s not in STUDIES]
    if unknown:
        raise ValueError(f"unknown study {unknown[0]!r}; known: {', '.join(STUDIES)}")
    missing = [s for s in studies if s not in available]
    if missing:
        raise ValueError(f"study {missing[0]!r} is not available (its flow module {STUDIES[missing[0]].module} "
                         f"does not import)")
    return list(dict.fromkeys(studies))


def deployments(studies: list[str] | None = None) -> list:
    """One `RunnerDeployment` per study (all available studies when `studies` is None or empty)."""
    from prefect.deployments.runner import EntrypointType

    out = []
    for study in _select(studies):
        _, flow = STUDIES[study].load()
        summary = (flow.description or "").strip().splitlines()[0] if flow.description else study
        spec = schedule_spec(study)
        when = f"schedule {spec!r}" if spec else "no schedule (trigger it from the UI)"
        out.append(flow.to_deployment(
            name=DEPLOYMENT_NAME,
            parameters=study_parameters(study),
            tags=["quanta", study, "scheduled"],
            description=f"{summary}\n\nConfig: {config_path(study)}; {when}. Served by `quanta serve`.",
            # a module path (the package is installed) works from any working directory, unlike a file path
            entrypoint_type=EntrypointType.MODULE_PATH,
            **schedule_kwargs(study),
        ))
    return out


def serve(studies: list[str] | None = None, *, limit: int | None = 1) -> None:
    """Serve the deployments: register them with the Prefect API and run their scheduled (and UI-triggered)
    runs in subprocesses of this process, at most `limit` at a time (1: the studies share one machine).
    Blocks until interrupted; on Ctrl-C the schedules are paused."""
    import prefect
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise SystemExit(
            "quanta serve needs a Prefect server whose scheduler creates the scheduled runs; the ephemeral API "
            "has none.\nStart one with `make ui` (http://127.0.0.1:4200), then:\n"
            "    export PREFECT_API_URL=http://127.0.0.1:4200/api\n    quanta serve")
    deps = deployments(studies)
    if not deps:
        raise SystemExit("no study is available to serve")
    prefect.serve(*deps, limit=limit)


# ------------------------------------------------------------------------------------------- prefect.yaml
def _file_entrypoint(study: str) -> str:
    """`flows/sparse_parity.py:sparse_parity_flow`: the study's flow as `prefect deploy` names it."""
    import importlib

    mod = importlib.import_module(STUDIES[study].module)
    _, flow = STUDIES[study].load()
    rel = Path(mod.__file__).resolve().relative_to(PROJECT_ROOT)
    return f"{rel.as_posix()}:{flow.fn.__name__}"


def project_relative_includes(config: dict, config_dir: Path) -> dict:
    """A config's included configs (`lm_config`, `sparse_parity_config`: paths relative to the including file)
    rewritten relative to the project root, where the worker runs (schemas.config.include_section also looks
    there)."""
    out = dict(config)
    for key, value in config.items():
        if key.endswith("_config") and isinstance(value, str) and not Path(value).is_absolute():
            out[key] = (config_dir / value).resolve().relative_to(PROJECT_ROOT).as_posix()
    return out


def prefect_yaml_data() -> dict:
    """prefect.yaml's content, from the same definitions as `deployments()`: default schedules (not the
    environment's), the default TOML configs as written (the flow fills in defaults), no store (the worker's
    $QUANTA_STORE or ./quanta-store in the project directory)."""
    import tomllib

    deps = []
    for study in available_studies():
        _, flow = STUDIES[study].load()
        path = PROJECT_ROOT / STUDIES[study].default_config
        config = project_relative_includes(tomllib.loads(path.read_text()), path.parent)
        summary = (flow.description or study).strip().splitlines()[0]
        deps.append({
            "name": DEPLOYMENT_NAME,
            "entrypoint": _file_entrypoint(study),
            "description": f"{summary} (config: {STUDIES[study].default_config})",
            "tags": ["quanta", study, "scheduled"],
            "schedules": [{"cron": DEFAULT_SCHEDULES.get(study, FALLBACK_SCHEDULE), "timezone": DEFAULT_TIMEZONE}],
            "parameters": {"config": config},
            "work_pool": {"name": WORK_POOL},
        })
    # the workers run the project's code where it is (the default pull step, set at deploy time, is
    # `set_working_directory` to the project root): nothing to build or push
    return {"name": "quanta", "prefect-version": ">=3.8.8,<3.9", "build": None, "push": None, "deployments": deps}


_YAML_HEADER = """\
# Prefect project file: the studies' scheduled deployments, for `prefect deploy --all` with a work pool.
# The same deployments as flows/deployments.py (served without a work pool by `quanta serve`);
# generated by `python -m flows.deployments > prefect.yaml` (tests/flows/test_deployments.py checks they agree).
#
#   prefect work-pool create quanta --type process
#   prefect --no-prompt deploy --all        # from the project root (the worker runs the code from there)
#   prefect worker start --pool quanta
#
# Parameters are the default TOML configs (configs/...) as written; store = the worker's $QUANTA_STORE or
# ./quanta-store. See docs/scheduling.md.
"""


def prefect_yaml_text() -> str:
    import yaml

    body = yaml.safe_dump(prefect_yaml_data(), sort_keys=False, default_flow_style=None, width=110)
    return _YAML_HEADER + "\n" + body.replace("\ndeployments:", "\n\ndeployments:", 1)


if __name__ == "__main__":
    from flows.prefect_home import configure_prefect

    configure_prefect()
    sys.stdout.write(prefect_yaml_text())
