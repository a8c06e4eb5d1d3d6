"""The model suite: GPT-NeoX models trained from scratch (a Pythia-like mini suite), or pretrained ones loaded
by name / directory. Both are loaded by the same `tasks.lm.model_source.load_causal_lm` (transformers
`from_pretrained`, safetensors only, no remote code), so a trained model in the store is used exactly like a Pythia
checkpoint.

Every size of a trained suite sees the same batches in the same order (one data-order seed for the suite),
and is its own cached Prefect task: adding a size trains only that size.
"""
from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import numpy as np
import torch

from schemas.lm import ModelSize
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.devices import resolve_device
from tasks.lm.model_source import CHECKPOINTS_DIR, quiet_transformers
from tasks.lm.tokenizer import load_tokenizer
from tasks.progress import Progress


class TrainingDivergedError(FloatingPointError):
    """A training run's loss became NaN or infinite: the task fails (nothing is stored) naming the model and the
    learning rate."""


def neox_config(size: ModelSize, vocab_size: int, context_length: int, eos_token_id: int = 0):
    """A Pythia-style GPT-NeoX config: parallel residual, rotary on 25% of head dims, untied unembedding,
    MLP width 4 d_model."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=size.d_model, num_hidden_layers=size.n_layers,
        num_attention_heads=size.n_heads, intermediate_size=4 * size.d_model,
        max_position_embeddings=context_length, use_parallel_residual=True, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        bos_token_id=eos_token_id, eos_token_id=eos_token_id, hidden_dropout=0.0, attention_dropout=0.0,
    )


def param_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, non-embedding parameters). Non-embedding = all minus the input embedding and the
    (untied) unembedding matrices, as in Kaplan et al. / the Pythia suite's 'non-embedding params'."""
    total = sum(p.numel() for p in model.parameters())
    emb = 0
    seen = set()
    for mod in (model.get_input_embeddings(), model.get_output_embeddings()):
        if mod is not None and id(mod.weight) not in seen:
            seen.add(id(mod.weight))
            emb += mod.weight.numel()
    return int(total), int(total - emb)


def training_stream(ids: np.ndarray, offsets: np.ndarray, eos_token_id: int) -> np.ndarray:
    """The train split as one stream: each document followed by an end-of-text token."""
    n_docs = len(offsets) - 1
    out = np.empty(len(ids) + n_docs, dtype=np.int64)
    pos = 0
    for d in range(n_docs):
        a, b = int(offsets[d]), int(offsets[d + 1])
        out[pos:pos + b - a] = ids[a:b]
        out[pos + b - a] = eos_token_id
        pos += b - a + 1
    return out


def batch_starts(stream_len: int, context_length: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """(steps, batch_size) start positions of training windows: a function of the seed only, so every model
    of the suite sees the same data in the same order."""
    hi = stream_len - context_length
    if hi < 1:
        raise ValueError(f"train split too short: {stream_len} tokens for context_length {context_length}")
    return np.random.default_rng(seed).integers(0, hi, size=(steps, batch_size), dtype=np.int64)


def lr_at(step: int, steps: int, lr: float, warmup: int, final_frac: float = 0.1) -> float:
    """Linear warmup, then cosine decay to `final_frac * lr`."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


_INIT_LOCK = threading.Lock()


def train_lm(size: ModelSize, stream: np.ndarray, vocab_size: int, *, context_length: int, steps: int,
             batch_size: int, lr: float, warmup_steps: int, weight_decay: float, seed: int,
             device: str | torch.device = "cpu", eos_token_id: int = 0, log_every: int = 25, progress=None,
             checkpoint_steps: tuple[int, ...] = (), checkpoints: dict | None = None):
    """Train one GPT-NeoX of `size` from scratch on windows of `stream` (nanoGPT-style loop: AdamW, warmup +
    cosine, grad clip 1). Returns (model on CPU in eval mode, [(step, train loss)]); `progress(step, loss)` is called
    every `log_every` steps. With `checkpoint_steps`, a CPU copy of the weights after each of those optimizer steps
    goes into `checkpoints` ({step: state_dict}). Raises TrainingDivergedError, naming the model and `lr`, as soon
    as a logged step finds that some loss so far was NaN or infinite (checked on the device every step, read back
    only when logging)."""
    from transformers import GPTNeoXForCausalLM

    quiet_transformers()
    device = torch.device(device)
    with _INIT_LOCK:  # transformers initialises from the global RNG: one model at a time per process
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(neox_config(size, vocab_size, context_length, eos_token_id)).to(device)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    starts = batch_starts(len(stream), context_length, batch_size, steps, seed)
    data = torch.as_tensor(stream, device=device)
    offs = torch.arange(context_length, device=device)
    history = []
    diverged = torch.zeros((), dtype=torch.bool, device=device)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup_steps)
        x = data[torch.as_tensor(starts[step], device=device)[:, None] + offs]
        loss = model(input_ids=x, labels=x).loss
        diverged |= ~torch.isfinite(loss.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if checkpoints is not None and step + 1 in checkpoint_steps:
            checkpoints[step + 1] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if step % log_every == 0 or step == steps - 1:
            history.append((step, float(loss.item())))
            if bool(diverged):
                raise TrainingDivergedError(
                    f"training model {size.label} diverged: its loss became {history[-1][1]} by step {step} of "
                    f"{steps} with learning rate {lr:g}; lower suite.lr (or raise suite.warmup_steps)")
            if progress is not None:
                progress(step, history[-1][1])
    return model.cpu().eval(), history


def train_params(suite) -> dict:
    """The training settings shared by every size (the cache key of a size's task: not the list of sizes)."""
    return {k: getattr(suite, k) for k in ("steps", "batch_size", "lr", "warmup_steps", "weight_decay", "seed",
                                            "context_length", "device")}


@quanta_task(name="lm-train-model", task_run_name="lm-train-{size.label}")
def train_model(train_tokens: ArtifactRef, tokenizer: ArtifactRef, *, size: ModelSize, params: dict,
                store: str, checkpoint_steps: tuple[int, ...] = ()) -> ArtifactRef:
    """Train one size on the train split; store it as an `lm.model` dir (save_pretrained: config.json +
    model.safetensors, plus the tokenizer and quanta_model.json with parameter counts and the loss curve), with
    the weights after each of `checkpoint_steps` as `checkpoints/step<N>/` (the training-dynamics analysis; only
    the suite's dynamics model is given any, so the other sizes keep their cache keys)."""
    st = Store(store)
    arrays, attrs = st.read_zarr(train_tokens)
    tok_dir = st.local_dir(tokenizer)
    tok = load_tokenizer(tok_dir)
    eos = int(tok.eos_token_id if tok.eos_token_id is not None else 0)
    stream = training_stream(arrays["ids"], arrays["offsets"], eos)
    device = resolve_device(params["device"], "suite.device")
    t0 = time.time()
    progress = Progress(f"lm-train-{size.label}", total=params["steps"], unit="step")
    model, history = train_lm(
        size, stream, int(attrs["vocab_size"]), context_length=params["context_length"], steps=params["steps"],
        batch_size=params["batch_size"], lr=params["lr"], warmup_steps=params["warmup_steps"],
        weight_decay=params["weight_decay"], seed=params["seed"], device=device, eos_token_id=eos,
        progress=lambda step, loss: progress.update(step + 1 - progress.n, loss=f"{loss:.3f}"),
        checkpoint_steps=tuple(checkpoint_steps), checkpoints=(saved := {}))
    progress.close()
    seconds = time.time() - t0
    n_all, n_ne = param_counts(model)
    print(f"trained {size.label}: {n_all} params ({n_ne} non-embedding), final train loss {history[-1][1]:.3f}, "
          f"{seconds:.1f}s on {device}")
    meta = {"name": size.label, "size": size.model_dump(mode="json"), "n_params": n_all, "n_params_nonembed": n_ne,
            "train": params, "history": history, "final_train_loss": history[-1][1], "device": str(device),
            "train_tokens": train_tokens.content_hash}

    def build(p: Path):
        model.save_pretrained(str(p), safe_serialization=True)
        tok.save_pretrained(str(p))
        (p / "quanta_model.json").write_text(json.dumps(meta, indent=2))
        (p / "generation_config.json").unlink(missing_ok=True)  # carries a timestamp-free default; not needed
        final = {k: v.clone() for k, v in model.state_dict().items()}
        for step, state in sorted(saved.items()):
            model.load_state_dict(state)
            model.save_pretrained(str(p / CHECKPOINTS_DIR / f"step{step}"), safe_serialization=True)
            (p / CHECKPOINTS_DIR / f"step{step}" / "generation_config.json").unlink(missing_ok=True)
        model.load_state_dict(final)

    return st.write_dir("lm.model", build, inputs=[train_tokens, tokenizer],
                        params={"size": size.model_dump(mode="json"), **params, "seconds": round(seconds, 2),
                                "checkpoint_steps": list(checkpoint_steps)})
