"""Batched width-grid training vs the same models trained one at a time: steps/s ratio, side by side.

All sides do the same work: every width of the grid for `steps` AdamW steps on the same batches; evaluation is
excluded (one eval at the end on each side). Measured, interleaved in one run:
- batched: `train_grid`, all widths as one network (what the study does);
- one at a time, plain: a `torch.nn.Sequential` per width (`train_single`), the obvious loop: the headline ratio;
- one at a time, same kernels: `train_grid` with one width per call, i.e. the same one-hot row-lookup first layer,
  so this ratio isolates what batching the widths alone buys.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from schemas.config import load_config
from schemas.sparse_parity import SparseParityConfig
from storage.settings import PROJECT_ROOT
from tasks.sparse_parity.data import eval_set, make_spec
from tasks.devices import resolve_device
from tasks.sparse_parity.train import Group, train_grid, train_single


def run(config: str = "configs/sparse_parity/demo.toml", steps: int = 200, device: str = "auto",
        repeats: int = 3) -> dict:
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
    batched, single, same = [], [], []
    for _ in range(repeats):  # interleaved, so drifts in machine load hit every side
        sync(); t0 = time.perf_counter()
        train_grid(spec, g.widths, [Group(seed=0)], **kw)
        sync(); batched.append(time.perf_counter() - t0)
        sync(); t0 = time.perf_counter()
        for w in g.widths:
            train_single(spec, w, Group(seed=0), **kw)
        sync(); single.append(time.perf_counter() - t0)
        sync(); t0 = time.perf_counter()
        for w in g.widths:
            train_grid(spec, [w], [Group(seed=0)], **kw)
        sync(); same.append(time.perf_counter() - t0)
    tb, ts, tk = min(batched), min(single), min(same)
    return {
        "name": "batched width grid vs one at a time",
        "config": config, "device": str(dev), "widths": len(g.widths), "batch_size": g.batch_size,
        "steps": steps,
        "batched_grid_steps_per_s": steps / tb,
        "one_at_a_time_grid_steps_per_s": steps / ts,
        "one_at_a_time_same_kernels_grid_steps_per_s": steps / tk,
        "ratio": ts / tb,
        "ratio_same_kernels": tk / tb,
        "goal": ">= 3x on CPU, >= 20x on GPU",
    }


if __name__ == "__main__":
    r = run()
    print(f"{r['name']}: {r['ratio']:.2f}x vs plain nn.Sequential, {r['ratio_same_kernels']:.2f}x vs same kernels "
          f"({r['batched_grid_steps_per_s']:.1f} vs {r['one_at_a_time_grid_steps_per_s']:.1f} vs "
          f"{r['one_at_a_time_same_kernels_grid_steps_per_s']:.1f} grid-steps/s on {r['device']})")
