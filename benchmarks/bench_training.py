"""The sparse-parity training grid against the hardware and against the peer's way, side by side in one run.

- efficiency: useful FLOP/s of a batched training step / FLOP/s of a bare matmul of the step's largest shape (the
  first layer's [batch, n_bits] x [n_bits, sum(widths)]), same dtype (float32) and threads, timed in alternation;
  for the demo grid and for the paper grid's shape (n_bits 100, 500 subtasks, 30 widths 10..500, batch 20,000);
- against the peer's way: every width trained one at a time as its own nn.Sequential with its own batch stream
  (`train_single`, as the original scripts ran one job per width) vs the whole grid at once (`train_grid`), the
  same steps and one evaluation each; demo and paper shapes;
- evaluation share: the time per-subtask evaluation takes in a demo training run at the demo's log schedule.

FLOP model (per sample, per model group; H = sum(widths), n = n_bits, S = sum(w²)): N_dense = n·H + (depth-1)·S + 2·H
weights multiply a non-one-hot input (the control bits' first-layer rows are a lookup, biases adds: 0 FLOPs).
Useful FLOPs = 6·N_dense per sample (forward 2, backward 4: the usual 6·N·D convention, and the count issue 11 used:
0.27 GFLOP per demo step). The first layer's input gradient (2·n·H of those) is never needed, so the strict count,
reported beside it, is 6·N_dense - 2·n·H.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from schemas.config import load_config
from schemas.sparse_parity import SparseParityConfig, TaskConfig
from storage.settings import PROJECT_ROOT
from tasks.devices import resolve_device, tensor_cores
from tasks.sparse_parity import train as train_mod
from tasks.sparse_parity.data import eval_set, make_spec
from tasks.sparse_parity.train import GridTrainer, Group, log_steps, train_grid, train_single

PAPER_WIDTHS = [10, 11, 13, 15, 17, 20, 22, 26, 29, 34, 39, 44, 50, 58, 66, 76, 87, 99, 113, 130, 148, 170, 194, 223,
                255, 291, 334, 382, 437, 500]
FLOP_MODEL = ("useful FLOPs/sample = 6*(n_bits*H + (depth-1)*sum(w^2) + 2*H), H = sum(widths) (control-bit rows are "
              "lookups: 0); strict = that - 2*n_bits*H (first-layer input grad never computed)")


def flops_per_sample(n_bits: int, widths: list[int], depth: int) -> tuple[int, int]:
    """(useful 6·N_dense, strict) FLOPs per sample of one group's training step (module docstring)."""
    H = sum(widths)
    dense = n_bits * H + (depth - 1) * sum(w * w for w in widths) + 2 * H
    return 6 * dense, 6 * dense - 2 * n_bits * H


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, dev: torch.device) -> float:
    _sync(dev)
    t0 = time.perf_counter()
    fn()
    _sync(dev)
    return time.perf_counter() - t0


def efficiency(spec, widths: list[int], batch_size: int, depth: int, dev: torch.device, steps: int,
               rounds: int, cuda_graph: bool = False) -> dict:
    """A grid step's useful FLOP/s over a bare [B, n] x [n, H] float32 matmul's, timed in alternation (best of
    `rounds`, each `steps` steps or matmuls); cuda_graph: the step replayed as one CUDA graph (grid.cuda_graph)."""
    trainer = GridTrainer(spec, widths, [Group(seed=0)], depth=depth, batch_size=batch_size, lr=1e-3,
                          weight_decay=0.01, device=dev, cuda_graph=cuda_graph)
    a = torch.randn(batch_size, spec.n_bits, device=dev)
    b = torch.randn(spec.n_bits, sum(widths), device=dev)
    c = torch.empty(batch_size, sum(widths), device=dev)  # preallocated, as the step's buffers are
    rows = trainer.rows  # the same matmul in the step's chunks (their outputs stay in cache), for comparison
    chunked = lambda: [torch.mm(a[i:i + rows], b, out=c[i:i + rows]) for i in range(0, batch_size, rows)]  # noqa
    for _ in range(5 if cuda_graph else 1):  # warm-up: workspaces, kernels (and the graph's capture)
        trainer.step()
    torch.mm(a, b, out=c)
    step_s, mm_s, chunk_s = [], [], []
    for _ in range(rounds):
        step_s.append(_timed(lambda: [trainer.step() for _ in range(steps)], dev) / steps)
        mm_s.append(_timed(lambda: [torch.mm(a, b, out=c) for _ in range(steps)], dev) / steps)
        chunk_s.append(_timed(lambda: [chunked() for _ in range(steps)], dev) / steps)
    trainer.check_finite()
    useful, strict = flops_per_sample(spec.n_bits, widths, depth)
    t_step, t_mm, t_chunk = min(step_s), min(mm_s), min(chunk_s)
    mm_flop = 2 * batch_size * spec.n_bits * sum(widths)
    return {"step_s": t_step, "steps_per_s": 1 / t_step, "useful_gflop_per_step": useful * batch_size / 1e9,
            "useful_gflops": useful * batch_size / t_step / 1e9, "matmul_gflops": mm_flop / t_mm / 1e9,
            "efficiency": useful * batch_size / t_step / (mm_flop / t_mm),
            "efficiency_strict": strict * batch_size / t_step / (mm_flop / t_mm),
            "chunk_rows": rows, "chunked_matmul_gflops": mm_flop / t_chunk / 1e9,
            "efficiency_vs_chunked_matmul": useful * batch_size / t_step / (mm_flop / t_chunk)}


def against_peer(spec, widths: list[int], batch_size: int, depth: int, dev: torch.device, steps: int,
                 repeats: int) -> dict:
    """Grid-steps/s of the whole grid at once vs every width alone (its own model, optimizer and batch stream)."""
    ev = eval_set(spec, 2, seed=0, device=dev)
    kw = dict(depth=depth, steps=steps, batch_size=batch_size, lr=1e-3, weight_decay=0.01, log_at=np.array([steps]),
              eval_data=ev, device=dev)
    one = {**kw, "steps": 1, "log_at": np.array([1])}
    with _draw_only(steps, batch_size, spec.n_bits):
        train_grid(spec, widths, [Group(seed=0)], **one)  # warm-up
        train_single(spec, widths[-1], Group(seed=0), **one)
        grid, peer = [], []
        for _ in range(repeats):  # interleaved, so drifts in machine load hit both sides
            grid.append(_timed(lambda: train_grid(spec, widths, [Group(seed=0)], **kw), dev))
            peer.append(_timed(lambda: [train_single(spec, w, Group(seed=0), **kw) for w in widths], dev))
    return {"grid_steps_per_s": steps / min(grid), "peer_grid_steps_per_s": steps / min(peer),
            "ratio": min(peer) / min(grid)}


@contextlib.contextmanager
def _draw_only(steps: int, batch_size: int, n_bits: int):
    """Runs shorter than a prefetch (1 step at the paper shape on a CPU) draw one batch at a time while timed: each
    side then draws the batches it trains, not 30 per model (which would time the peer's 30 streams' prefetch)."""
    saved = train_mod.PREFETCH_BYTES
    if steps < train_mod.prefetch_batches(batch_size, n_bits):
        train_mod.PREFETCH_BYTES = 0
    try:
        yield
    finally:
        train_mod.PREFETCH_BYTES = saved


def eval_share(cfg: SparseParityConfig, spec, dev: torch.device, rounds: int = 5) -> dict:
    """Share of a demo training run spent in per-subtask evaluation: S evaluations (the demo's log schedule) of
    the demo's eval set beside `steps` training steps, each timed (best of `rounds`)."""
    g = cfg.grid
    trainer = GridTrainer(spec, g.widths, [Group(seed=0)], depth=g.depth, batch_size=g.batch_size, lr=g.lr,
                          weight_decay=g.weight_decay, device=dev)
    ev = eval_set(spec, g.eval_samples_per_task, seed=spec.seed, device=dev)
    trainer.step()
    trainer.evaluate(ev)
    t_step = min(_timed(lambda: [trainer.step() for _ in range(10)], dev) / 10 for _ in range(rounds))
    t_eval = min(_timed(lambda: trainer.evaluate(ev), dev) for _ in range(rounds))
    n_evals = len(log_steps(g.steps, g.log_points))
    share = n_evals * t_eval / (g.steps * t_step + n_evals * t_eval)
    return {"eval_s": t_eval, "step_s": t_step, "evaluations": n_evals, "steps": g.steps, "share": share}


def run(config: str = "configs/sparse_parity/demo.toml", device: str = "auto", quick: bool = False,
        threads: int | None = None) -> dict:
    """Every measurement above; `threads` sets torch's CPU threads for all of them (default: torch's default)."""
    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(SparseParityConfig, PROJECT_ROOT / config)
    dev = resolve_device(device)
    demo = make_spec(cfg.task)
    paper = make_spec(TaskConfig(n_tasks=500, n_bits=100, k=3, alpha=0.4, seed=0))
    paper_b = 20_000
    with tensor_cores(dev):  # TF32 matmuls on a GPU, as training runs (both sides of every ratio); no-op on the CPU
        out = _measure(cfg, demo, paper, paper_b, dev, quick)
    for r in out.values():
        r["device"] = str(dev)
        r["threads"] = torch.get_num_threads()
    out["efficiency_demo"]["flop_model"] = FLOP_MODEL
    return out


def _measure(cfg: SparseParityConfig, demo, paper, paper_b: int, dev: torch.device, quick: bool) -> dict:
    g = cfg.grid
    e_demo = efficiency(demo, g.widths, g.batch_size, g.depth, dev, steps=10, rounds=3 if quick else 8)
    e_paper = efficiency(paper, PAPER_WIDTHS, paper_b, 1, dev, steps=1 if dev.type == "cpu" else 20,
                         rounds=2 if quick else 4)
    p_demo = against_peer(demo, g.widths, g.batch_size, g.depth, dev, steps=20 if quick else 100,
                          repeats=2 if quick else 3)
    p_paper = against_peer(paper, PAPER_WIDTHS, paper_b, 1, dev, steps=1 if dev.type == "cpu" else 20, repeats=2)
    share = eval_share(cfg, demo, dev)
    demo_shape = f"demo grid ({len(g.widths)} widths, n_bits {demo.n_bits}, batch {g.batch_size})"
    paper_shape = f"paper shape (30 widths 10..500, n_bits 100, batch {paper_b})"
    out = {
        "efficiency_demo": {"name": f"grid step FLOP/s / bare matmul FLOP/s, {demo_shape}",
                            "ratio": e_demo.pop("efficiency"), "goal": ">= 0.5", **e_demo},
        "efficiency_paper": {"name": f"grid step FLOP/s / bare matmul FLOP/s, {paper_shape}",
                             "ratio": e_paper.pop("efficiency"), "goal": ">= 0.5", **e_paper},
        "peer_demo": {"name": f"whole grid at once vs one width at a time, {demo_shape}", "goal": ">= 3x",
                      **p_demo},
        "peer_paper": {"name": f"whole grid at once vs one width at a time, {paper_shape}", "goal": "(report)",
                       **p_paper},
        "eval_share": {"name": "evaluation share of a demo training run (per-subtask test losses at 24 log steps)",
                       "ratio": share.pop("share"), "goal": "<= 0.10", **share},
    }
    if dev.type == "cuda":  # the launch-bound step as one CUDA graph (on the CPU the switch changes nothing)
        e_graph = efficiency(paper, PAPER_WIDTHS, paper_b, 1, dev, steps=20, rounds=2 if quick else 4, cuda_graph=True)
        out["efficiency_paper_graph"] = {"name": f"grid step FLOP/s / bare matmul FLOP/s, {paper_shape}, CUDA graph",
                                         "ratio": e_graph.pop("efficiency"), "goal": ">= 0.5", **e_graph}
    return out


if __name__ == "__main__":
    import sys

    print(FLOP_MODEL)
    threads = next((int(a.split("=")[1]) for a in sys.argv if a.startswith("--threads=")), None)
    for r in run(quick="--quick" in sys.argv, threads=threads).values():
        details = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                            if k not in ("name", "ratio", "goal", "device", "flop_model"))
        print(f"{r['name']} [{r['device']}]: {r['ratio']:.3g} (goal {r['goal']}); {details}")
