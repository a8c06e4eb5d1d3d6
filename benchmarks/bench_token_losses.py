"""Benchmark: per-token loss collection throughput vs the model's bare forward pass at the same batch shape.

Collection = windowing the documents, the forward pass, cross-entropy of every position, scattering the
losses into the flat float32 array (tasks.lm.losses.per_token_losses). Bare forward = `model(x).logits` on
batches of the same shape, nothing else. ratio = collection throughput / forward throughput (goal >= 0.8).
Run: `python benchmarks/bench_token_losses.py` (CPU, and CUDA when present).
"""
from __future__ import annotations

GOAL = "ratio >= 0.8"

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from schemas.lm import ModelSize  # noqa: E402
from tasks.lm.losses import per_token_losses  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_device(device: torch.device, size: ModelSize, vocab: int, ctx: int, batch: int, n_batches: int,
                 repeats: int = 3) -> dict:
    from transformers import GPTNeoXForCausalLM

    from tasks.lm.suite import neox_config

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(neox_config(size, vocab, ctx)).to(device).eval()
    # documents of exactly ctx tokens: one full window each, so both sides run (batch, ctx) shapes
    n_docs = batch * n_batches
    ids = np.random.default_rng(0).integers(0, vocab, n_docs * ctx).astype(np.int32)
    offsets = np.arange(0, n_docs * ctx + 1, ctx, dtype=np.int64)
    x = torch.as_tensor(ids.reshape(n_docs, ctx), dtype=torch.long)

    def forward_only():
        with torch.inference_mode():
            for i in range(n_batches):
                model(input_ids=x[i * batch:(i + 1) * batch].to(device)).logits
        _sync(device)

    def collect():
        per_token_losses(model, ids, offsets, ctx, batch, device)
        _sync(device)

    forward_only(), collect()  # warm-up
    t_fwd, t_col = [], []
    for _ in range(repeats):  # interleaved, best of `repeats`
        t = time.perf_counter(); forward_only(); t_fwd.append(time.perf_counter() - t)
        t = time.perf_counter(); collect(); t_col.append(time.perf_counter() - t)
    tokens = n_docs * ctx
    fwd, col = tokens / min(t_fwd), tokens / min(t_col)
    return {"device": str(device), "model": size.label, "vocab": vocab, "context": ctx, "batch": batch,
            "tokens": tokens, "forward_tokens_per_s": fwd, "collect_tokens_per_s": col, "ratio": col / fwd}


def run(quick: bool = False) -> dict:
    """{device: result}; each result has `ratio` = collection / bare-forward throughput."""
    out = {}
    cpu_cfg = dict(size=ModelSize(d_model=64, n_layers=2, n_heads=4), vocab=1024, ctx=64, batch=64,
                   n_batches=2 if quick else 6)
    out["cpu"] = bench_device(torch.device("cpu"), **cpu_cfg)
    if torch.cuda.is_available():
        gpu_cfg = dict(size=ModelSize(d_model=512, n_layers=6, n_heads=8), vocab=50304, ctx=512, batch=16,
                       n_batches=4 if quick else 16)
        out["cuda"] = bench_device(torch.device("cuda"), **gpu_cfg)
    for r in out.values():
        print(f"token losses [{r['device']}, {r['model']}, V={r['vocab']}, batch {r['batch']}x{r['context']}]: "
              f"collect {r['collect_tokens_per_s']:.0f} tok/s vs bare forward {r['forward_tokens_per_s']:.0f} tok/s"
              f" -> ratio {r['ratio']:.3f} (goal >= 0.8)")
    return out


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
