"""Tiny language models and a store with the lm-losses study's artifacts (tokens, a trained suite, token losses), built
locally in seconds for the QDG gradient and selection tests (no downloads)."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

from schemas.lm import ModelSize
from storage import Store
from tasks.lm.losses import per_token_losses, stack_columns
from tasks.lm.suite import neox_config, param_counts, train_lm

VOCAB = 61
CTX = 16


def synthetic_corpus(n_docs: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32, offsets int64): documents of 3..70 tokens, mostly a repeated motif per document (learnable,
    with induction trigrams) plus noise tokens; a one-token document too."""
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n_docs):
        n = 1 if d == 3 else int(rng.integers(3, 70))
        motif = rng.integers(0, VOCAB, int(rng.integers(3, 7)))
        doc = np.resize(motif, n)
        noise = rng.random(n) < 0.15
        doc[noise] = rng.integers(0, VOCAB, int(noise.sum()))
        docs.append(doc)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    return np.concatenate(docs).astype(np.int32), offsets


def train_tiny(ids: np.ndarray, offsets: np.ndarray, size: ModelSize, steps: int = 60):
    """A GPT-NeoX of `size` trained with the suite's own loop (tasks.lm.suite.train_lm) on the documents."""
    stream = np.concatenate([np.append(ids[a:b], 0) for a, b in zip(offsets[:-1], offsets[1:])]).astype(np.int64)
    model, _ = train_lm(size, stream, VOCAB, context_length=CTX, steps=steps, batch_size=16, lr=1e-2,
                        warmup_steps=5, weight_decay=0.0, seed=0)
    return model.eval()


@functools.lru_cache(maxsize=1)
def tiny_suite() -> dict[str, torch.nn.Module]:
    """Two models of a "suite" on `synthetic_corpus`, built once per process: "d16", trained (the fewest
    non-embedding parameters, so 'smallest'), and "d24", random. Do not modify them."""
    ids, offsets = synthetic_corpus()
    return {"d16": train_tiny(ids, offsets, ModelSize(d_model=16, n_layers=1, n_heads=2)),
            "d24": random_neox(d_model=24, n_layers=2, seed=1)}


def random_neox(d_model: int = 16, n_layers: int = 2, seed: int = 0):
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(neox_config(ModelSize(d_model=d_model, n_layers=n_layers, n_heads=2), VOCAB,
                                          CTX)).eval()


def random_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=CTX, n_embd=16, n_layer=2, n_head=2, bos_token_id=0,
                     eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def save_model(model, path: Path, label: str | None = None) -> Path:
    """save_pretrained (safetensors) into `path`, with the suite's quanta_model.json when `label` is given."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    (path / "generation_config.json").unlink(missing_ok=True)
    if label is not None:
        n_all, n_ne = param_counts(model)
        (path / "quanta_model.json").write_text(json.dumps({"name": label, "n_params": n_all,
                                                            "n_params_nonembed": n_ne}))
    return path


def suite_store(store: Store, models: dict[str, torch.nn.Module]) -> dict:
    """The lm-losses artifacts of a trained suite in `store`: eval tokens (`synthetic_corpus`), one `lm.model`
    per label, and their `lm.token_losses` (columns by non-embedding N). Returns refs and the raw data."""
    ids, offsets = synthetic_corpus()
    tokens = store.write_zarr("lm.tokens", {"ids": ids, "offsets": offsets,
                                            "doc_id": np.arange(len(offsets) - 1, dtype=np.int64) + 100},
                              {"vocab_size": VOCAB, "split": "eval"})
    refs, columns = {}, []
    for label, model in models.items():
        refs[label] = store.write_dir("lm.model", lambda p, m=model, lab=label: save_model(m, p, lab))
        n_all, n_ne = param_counts(model)
        loss = per_token_losses(model, ids, offsets, CTX, batch_size=4)
        columns.append(({"model": label, "n_params": n_all, "n_params_nonembed": n_ne, "context_length": CTX,
                         "tokens": tokens.content_hash}, loss))
    arrays, attrs = stack_columns(columns)
    losses = store.write_zarr("lm.token_losses", arrays, attrs, inputs=[tokens])
    return {"tokens": tokens, "token_losses": losses, "models": refs, "ids": ids, "offsets": offsets,
            "loss": dict(zip(attrs["models"], arrays["loss"].T))}
