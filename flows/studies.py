"""The study registry: each study's flow module and default config.

A flow module defines `CONFIG` (its pydantic config model), `FLOW` (its Prefect flow), `results(st, refs, config)`
(the headline numbers its flow returns and `quanta run --json` prints) and `preflight(config)`: checks that need the
machine or the file system (a device, memory, input files) and must fail before any work runs, raising a `schemas.UserInputError` (a `ConfigError`, or e.g. `tasks.devices.DeviceError`) with
one line that names the field, file or value.

Errors a user's input causes that only a task can find (a corpus whose every file is rejected) are raised as
subclasses of `schemas.UserInputError` inside the flow; `quanta run` prints them as one line and exits 2 as well."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from storage.settings import PROJECT_ROOT


@dataclass(frozen=True)
class Study:
    name: str
    module: str  # flows module defining `FLOW` and `CONFIG`
    default_config: str  # relative to the project root

    def load(self):
        mod = importlib.import_module(self.module)
        return mod.CONFIG, mod.FLOW

    def preflight(self, config) -> None:
        """The study's preflight(config): machine and file checks, before any work."""
        importlib.import_module(self.module).preflight(config)


STUDIES: dict[str, Study] = {
    "sparse-parity": Study("sparse-parity", "flows.sparse_parity", "configs/sparse_parity/demo.toml"),
    "alpha-sweep": Study("alpha-sweep", "flows.alpha_sweep", "configs/sparse_parity/alpha_sweep_demo.toml"),
    "lm-losses": Study("lm-losses", "flows.lm_losses", "configs/lm/demo.toml"),
    "qdg": Study("qdg", "flows.qdg", "configs/qdg/demo.toml"),
    "qdg-sparse-parity": Study("qdg-sparse-parity", "flows.qdg_sparse_parity", "configs/qdg/sparse_parity_demo.toml"),
    "qdg-calibration": Study("qdg-calibration", "flows.qdg_calibration", "configs/qdg/calibration.toml"),
}


def available_studies() -> list[str]:
    out = []
    for name, study in STUDIES.items():
        try:
            importlib.import_module(study.module)
            out.append(name)
        except ModuleNotFoundError:
            continue
    return out


def default_config_path(study: str) -> Path:
    return PROJECT_ROOT / STUDIES[study].default_config
