"""Benchmark: what pinning MKL's code path costs (flows.prefect_home.configure_numerics sets MKL_CBWR=AVX2).

MKL reads MKL_CBWR once per process, so the two sides run in subprocesses, alternated: a demo-grid training step
(tasks.sparse_parity.train.GridTrainer, the demo config's widths and batch) timed over `STEPS` steps, best of each
side over `ROUNDS` alternations. ratio = step time with MKL_CBWR unset / step time with MKL_CBWR=AVX2 (>= 1: the
pinned path is no slower).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from storage.settings import PROJECT_ROOT

GOAL = ">= 0.95 (the pinned path costs at most 5% of a training step)"
STEPS, ROUNDS = 200, 3
CHILD = """
import json, time, torch
from schemas.config import load_config
from schemas.sparse_parity import SparseParityConfig
from tasks.sparse_parity.data import make_spec
from tasks.sparse_parity.train import GridTrainer, Group
cfg = load_config(SparseParityConfig, "configs/sparse_parity/demo.toml")
spec = make_spec(cfg.task)
g = cfg.grid
t = GridTrainer(spec, g.widths, [Group(seed=0)], depth=g.depth, batch_size=g.batch_size, lr=1e-3,
                weight_decay=0.01, device=torch.device("cpu"))
for _ in range(20):
    t.step()
best = float("inf")
for _ in range(3):
    t0 = time.perf_counter()
    for _ in range({steps}):
        t.step()
    best = min(best, (time.perf_counter() - t0) / {steps})
print(json.dumps({{"step_s": best}}))
"""


def _step_seconds(cbwr: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    if cbwr is not None:
        env["MKL_CBWR"] = cbwr
    out = subprocess.run([sys.executable, "-c", CHILD.format(steps=STEPS)], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["step_s"])


def run() -> dict:
    unset, pinned = [], []
    for _ in range(ROUNDS):
        unset.append(_step_seconds(None))
        pinned.append(_step_seconds("AVX2"))
    return {"name": "demo-grid training step, MKL_CBWR unset / MKL_CBWR=AVX2", "device": "cpu",
            "ratio": min(unset) / min(pinned), "unset_step_s": min(unset), "avx2_step_s": min(pinned),
            "rounds": ROUNDS, "steps": STEPS}


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
