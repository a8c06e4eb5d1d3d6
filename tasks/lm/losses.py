"""Per-token losses: the cross-entropy (nats) of every token of the eval split under every model of the suite.

Each document is cut into windows of the model's context length that overlap by one token (window k covers
tokens [k(C-1), k(C-1)+C)), so every token except the first of its document is predicted exactly once, from
the tokens before it in its window. Position 0 of a document has no prediction: its loss is NaN.

Each model's column is its own cached task and artifact (`lm.loss_column`); `assemble_token_losses` stacks
the columns into the tokens x models array (`lm.token_losses`) ordered by non-embedding parameters.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.devices import resolve_device
from tasks.lm.model_source import ModelSource
from tasks.lm.suite import param_counts
from tasks.progress import Progress


class NonFiniteLossError(FloatingPointError):
    """A model gave a NaN or infinite loss to a token it predicts: the column is not stored."""


def check_finite(loss: np.ndarray, offsets: np.ndarray, label: str) -> None:
    """Every predicted token (all but the first of each document) must have a finite loss; raises
    NonFiniteLossError naming the model, how many tokens and the first one."""
    predicted = np.ones(len(loss), dtype=bool)
    predicted[np.asarray(offsets[:-1], dtype=np.int64)[np.diff(offsets) > 0]] = False
    bad = np.flatnonzero(predicted & ~np.isfinite(loss))
    if len(bad):
        raise NonFiniteLossError(f"model {label} gave a non-finite loss ({loss[bad[0]]}) to {len(bad)} of "
                                 f"{int(predicted.sum())} predicted tokens (first: token {int(bad[0])}); "
                                 "its weights are probably NaN/inf")


def document_windows(offsets: np.ndarray, context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the windows of every document; windows of one document overlap by one token.
    Documents of one token get no window. Shapes (n_windows,), int64."""
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2, got {context_length}")
    step = context_length - 1
    starts, lengths = [], []
    for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        n = b - a
        if n < 2:
            continue
        k = np.arange(0, max(1, -(-(n - 1) // step)), dtype=np.int64)  # ceil((n-1)/step) windows
        s = a + k * step
        starts.append(s)
        lengths.append(np.minimum(context_length, b - s))
    if not starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(starts), np.concatenate(lengths)


def batch_plan(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Window indices grouped in batches of similar length (longest first) to waste little on padding."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def per_token_losses(model, ids: np.ndarray, offsets: np.ndarray, context_length: int, batch_size: int = 16,
                     device: str | torch.device | None = None, progress=None) -> np.ndarray:
    """Loss (nats, float32) of every token of `ids` under `model`; NaN where there is no prediction.

    ids: (n_tokens,) int; offsets: (n_docs + 1,) document boundaries. Windows are right-padded inside a
    batch; with causal attention the padding never affects the real positions."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = np.full(len(ids), np.nan, dtype=np.float32)
    starts, lengths = document_windows(np.asarray(offsets), context_length)
    if len(starts) == 0:
        return out
    ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    ar = torch.arange(context_length)
    batches = batch_plan(lengths, batch_size)
    for bi, idx in enumerate(batches):
        s = torch.as_tensor(starts[idx])
        ln = torch.as_tensor(lengths[idx])
        T = int(ln.max())
        pos = s[:, None] + ar[None, :T]
        valid = ar[None, :T] < ln[:, None]
        x = torch.where(valid, ids_t[pos.clamp_max(len(ids) - 1)], 0)
        xd = x.to(device, non_blocking=True)
        logits = model(input_ids=xd).logits
        if logits.dtype != torch.float32:
            logits = logits.float()
        # cross-entropy of position t+1 from the logits at t, without copying the (B, T, V) logits:
        # logsumexp over the vocabulary minus the target's logit
        nxt = torch.roll(xd, -1, dims=1)
        loss = (torch.logsumexp(logits, dim=-1) - logits.gather(-1, nxt[..., None]).squeeze(-1))[:, :-1].cpu()
        keep = valid[:, 1:]
        out[pos[:, 1:][keep].numpy()] = loss[keep].numpy()
        if progress is not None:
            progress(bi + 1, len(batches))
    return out


@quanta_task(name="lm-token-losses", task_run_name="lm-token-losses-{label}")
def token_loss_column(tokens: ArtifactRef, *, label: str, model: ModelSource, context_length: int, batch_size: int,
                      device: str, dtype: str, store: str) -> ArtifactRef:
    """One model's per-token losses on a tokens artifact, as `lm.loss_column`, under the column name `label`. The
    model (tasks.lm.model_source.ModelSource) is a trained `lm.model` or a pretrained hub name or directory."""
    st = Store(store)
    dev = resolve_device(device, "suite.device")
    lm, _ = model.load(st, dtype, dev)
    n_all, n_ne = param_counts(lm)
    ctx = int(min(context_length, getattr(lm.config, "max_position_embeddings", context_length) or context_length))
    arrays, attrs = st.read_zarr(tokens)
    if int(attrs["vocab_size"]) > int(lm.config.vocab_size):
        raise ValueError(f"model {label} has vocab_size {lm.config.vocab_size} < the tokenizer's "
                         f"{attrs['vocab_size']}: it was not trained with this tokenizer")
    t0 = time.time()
    progress = Progress(f"lm-token-losses-{label}", total=None, unit="batch")

    def report(done: int, total: int) -> None:
        progress.total = total
        progress.update(done - progress.n)

    loss = per_token_losses(lm, arrays["ids"], arrays["offsets"], ctx, batch_size, dev, progress=report)
    progress.close()
    secs = time.time() - t0
    check_finite(loss, arrays["offsets"], label)
    n_pred = int(np.isfinite(loss).sum())
    print(f"losses {label}: mean {np.nanmean(loss):.4f} nats over {n_pred} tokens, {n_pred / max(secs, 1e-9):.0f} "
          f"tokens/s on {dev}")
    col_attrs = {"model": label, "n_params": n_all, "n_params_nonembed": n_ne, "context_length": ctx,
                 "tokens": tokens.content_hash, "source": model.identity, "dtype": dtype}
    return st.write_zarr("lm.loss_column", {"loss": loss}, col_attrs, inputs=[tokens] + model.inputs,
                         params={"model": label, "model_name": model.name, "revision": model.revision,
                                 "context_length": ctx, "batch_size": batch_size, "device": str(dev),
                                 "seconds": round(secs, 2)})


def stack_columns(columns: list[tuple[dict, np.ndarray]]) -> tuple[dict[str, np.ndarray], dict]:
    """[(attrs, loss column)] -> arrays/attrs of `lm.token_losses`, models ordered by (non-embedding N, N, name)."""
    if not columns:
        raise ValueError("no loss columns to assemble")
    toks = {a["tokens"] for a, _ in columns}
    if len(toks) != 1:
        raise ValueError(f"loss columns were computed on different tokens artifacts: {sorted(toks)}")
    cols = sorted(columns, key=lambda c: (int(c[0]["n_params_nonembed"]), int(c[0]["n_params"]), c[0]["model"]))
    names = [a["model"] for a, _ in cols]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate model labels: {names}")
    arrays = {
        "loss": np.stack([c for _, c in cols], axis=1).astype(np.float32),
        "n_params": np.array([a["n_params"] for a, _ in cols], dtype=np.int64),
        "n_params_nonembed": np.array([a["n_params_nonembed"] for a, _ in cols], dtype=np.int64),
    }
    attrs = {"models": names, "tokens": toks.pop(), "context_length": [int(a["context_length"]) for a, _ in cols]}
    return arrays, attrs


@quanta_task(name="lm-assemble-losses")
def assemble_token_losses(columns: list[ArtifactRef], *, store: str) -> ArtifactRef:
    """Stack the per-model columns into `lm.token_losses` (tokens x models, by non-embedding N)."""
    st = Store(store)
    cols = []
    for ref in columns:
        arrays, attrs = st.read_zarr(ref)
        cols.append((attrs, arrays["loss"]))
    arrays, attrs = stack_columns(cols)
    rows = max(1, (4 << 20) // (4 * arrays["loss"].shape[1]))
    return st.write_zarr("lm.token_losses", arrays, attrs, inputs=list(columns),
                         chunks={"loss": (min(rows, max(1, arrays["loss"].shape[0])), arrays["loss"].shape[1])})
