"""Benchmark: QDG per-token gradients, batched (tasks.qdg.gradients.TokenGradients: vmap over windows of jacrev over
their selected positions, truncated windows, logits only where a token is predicted) vs the naive per-token loop
(naive_token_gradients: one full forward and backward pass of the token's whole window per token), on the same
tokens, both including flattening and L2 normalisation. ratio = naive time / batched time (goal >= 10x).

Model: the lm demo's largest size (configs/lm/demo.toml: GPT-NeoX d_model 96, 3 layers, vocab 1024, context 64),
random weights (timing does not depend on training); tokens: a seeded sample of a few hundred predicted tokens of a
40,000-token corpus of documents, as a QDG selection would be (mostly one selected token per window). On CUDA also
a Pythia-70m-shaped model (d_model 512, 6 layers, vocab 50,304, context 512).
Run: `python benchmarks/bench_qdg_gradients.py`.
"""
from __future__ import annotations

GOAL = "ratio >= 10x"

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from schemas.config import load_config  # noqa: E402
from schemas.lm import LMConfig, ModelSize  # noqa: E402
from schemas.qdg import GradientConfig  # noqa: E402
from storage.settings import PROJECT_ROOT  # noqa: E402
from tasks.qdg.gradients import (TokenGradients, gradient_parameter_names, naive_token_gradients,  # noqa: E402
                                 normalise_rows)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def corpus(n_tokens: int, vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random ids in documents of 50..2000 tokens: (ids, offsets)."""
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < n_tokens:
        lengths.append(int(rng.integers(50, 2000)))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return rng.integers(0, vocab, int(offsets[-1])).astype(np.int32), offsets


def bench_device(device: torch.device, size: ModelSize, vocab: int, ctx: int, n_tokens: int, n_naive: int,
                 positions_per_backward: int, repeats: int = 2) -> dict:
    from transformers import GPTNeoXForCausalLM

    from tasks.lm.suite import neox_config

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(neox_config(size, vocab, ctx)).to(device).eval()
    ids, offsets = corpus(40_000 if device.type == "cpu" else 400_000, vocab)
    predicted = np.setdiff1d(np.arange(offsets[-1]), offsets[:-1])
    tokens = np.random.default_rng(1).choice(predicted, n_tokens, replace=False)
    names = gradient_parameter_names(model, GradientConfig())
    batched = TokenGradients(model, names, ctx, positions_per_backward)

    def run_batched():
        batched.compute(ids, offsets, tokens, lambda rows, g, loss: normalise_rows(g))
        _sync(device)

    def run_naive():  # a prefix of the same tokens: the naive loop's time is linear in the tokens
        g, _ = naive_token_gradients(model, names, ids, offsets, tokens[:n_naive], ctx)
        normalise_rows(torch.as_tensor(g, device=device))
        _sync(device)

    run_batched(), run_naive()  # warm-up
    t_batched, t_naive = [], []
    for _ in range(repeats):  # interleaved, best of `repeats`
        t = time.perf_counter(); run_batched(); t_batched.append(time.perf_counter() - t)
        t = time.perf_counter(); run_naive(); t_naive.append(time.perf_counter() - t)
    batched_tps = n_tokens / min(t_batched)
    naive_tps = n_naive / min(t_naive)
    return {"device": str(device), "model": size.label, "vocab": vocab, "context": ctx, "gradient_dim": batched.dim,
            "tokens": n_tokens, "naive_tokens": n_naive, "positions_per_backward": positions_per_backward,
            "batched_tokens_per_s": batched_tps, "naive_tokens_per_s": naive_tps, "ratio": batched_tps / naive_tps}


def run(quick: bool = False) -> dict:
    """{device: result}; each result has `ratio` = batched / naive tokens per second."""
    demo = load_config(LMConfig, PROJECT_ROOT / "configs/lm/demo.toml")
    largest = max(demo.suite.sizes, key=lambda s: s.d_model * s.n_layers)
    out = {"cpu": bench_device(torch.device("cpu"), largest, demo.tokenizer.vocab_size, demo.suite.context_length,
                               n_tokens=96 if quick else 256, n_naive=32 if quick else 96, positions_per_backward=64)}
    if torch.cuda.is_available():
        pythia70m = ModelSize(d_model=512, n_layers=6, n_heads=8)
        out["cuda"] = bench_device(torch.device("cuda"), pythia70m, 50304, 512, n_tokens=64 if quick else 256,
                                   n_naive=32 if quick else 64, positions_per_backward=16)
    for r in out.values():
        print(f"qdg gradients [{r['device']}, {r['model']}, dim {r['gradient_dim']}]: batched "
              f"{r['batched_tokens_per_s']:.1f} tok/s vs naive {r['naive_tokens_per_s']:.1f} tok/s -> ratio "
              f"{r['ratio']:.2f} ({GOAL})")
    return out


if __name__ == "__main__":
    run()
