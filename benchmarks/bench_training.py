"""Batched width-grid training vs the same models trained one at a time: steps/s ratio, side by side.

Both sides do the same work: every width of the grid for `steps` AdamW steps on the same batches (the batched
side shares one batch per step across widths, as in the study; the one-at-a-time side is a plain nn.Sequential
per width, `train_single`). Evaluation is excluded (one eval at the end on both sides).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from schemas.config import load_config
from schemas.sparse_parity import SparseParityConfig
from storage.settings import PROJECT_ROOT
from tasks.sparse_parity import eval_set, make_spec
from tasks.training import Group, resolve_device, train_grid, train_single


def run(config: str = "configs/sparse_parity/demo.toml", steps: int = 150, device: str = "auto",
        repeats: int = 2) -> dict:
    cfg = load_config(SparseParityConfig, PROJECT_ROOT / config)
    dev = resolve_device(device)
    spec = make_spec(cfg.task)
    g = cfg.grid
    ev = eval_set(spec, 4, seed=0, device=dev)
    log_at = np.array([steps])
    kw = dict(depth=g.depth, steps=steps, batch_size=g.batch_size, lr=g.lr, weight_decay=g.weight_decay,
              log_at=log_at, eval_data=ev, device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # warm-up both paths once (allocator, kernels)
    train_grid(spec, g.widths, [Group(seed=0)], **{**kw, "steps": 5, "log_at": np.array([5])})
    train_single(spec, g.widths[0], Group(seed=0), **{**kw, "steps": 5, "log_at": np.array([5])})
    batched, single = [], []
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both sides
        sync(); t0 = time.perf_counter()
        train_grid(spec, g.widths, [Group(seed=0)], **kw)
        sync(); batched.append(time.perf_counter() - t0)
        sync(); t0 = time.perf_counter()
        for w in g.widths:
            train_single(spec, w, Group(seed=0), **kw)
        sync(); single.append(time.perf_counter() - t0)
    tb, ts = min(batched), min(single)
    return {
        "name": "batched width grid vs one at a time",
        "config": config, "device": str(dev), "widths": len(g.widths), "batch_size": g.batch_size,
        "steps": steps,
        "batched_grid_steps_per_s": steps / tb,
        "one_at_a_time_grid_steps_per_s": steps / ts,
        "ratio": ts / tb,
        "goal": ">= 3x on CPU, >= 20x on GPU",
    }


if __name__ == "__main__":
    r = run()
    print(f"{r['name']}: {r['ratio']:.2f}x ({r['batched_grid_steps_per_s']:.1f} vs "
          f"{r['one_at_a_time_grid_steps_per_s']:.1f} grid-steps/s on {r['device']})")
