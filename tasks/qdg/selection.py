"""QDG stage 1, selection: the tokens whose gradients are clustered.

Tokens whose loss under the selection model (a label of `lm.token_losses` attrs["models"], or "smallest" = the first
column: models are ordered by non-embedding parameters) is below `max_loss_nats`, minus induction tokens (the token
completes a trigram (t-2, t-1, t) already seen earlier in its document), then a seeded subsample of `n_tokens`.

Order: row r of the selection is the r-th candidate of one seeded permutation of all candidates, so the selection of
n tokens is a prefix of the selection of n' > n tokens (same candidates and seed): gradient blocks of the first rows
stay valid when `n_tokens` grows (see `tasks.qdg.gradients`).

Context: a token's loss was computed in the window of `tasks.lm.losses.document_windows` that predicts it (windows
of `context_length` tokens overlapping by one); `token_windows` gives that window and the token's position in it,
and every later stage uses the same context. Since attention is causal, the window truncated just after the token
gives the same prediction as the whole window.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from schemas.errors import UserInputError
from schemas.qdg import SelectionConfig
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.devices import resolve_device
from tasks.lm.losses import batch_plan
from tasks.lm.model_source import ModelSource
from tasks.progress import Progress


class SelectionError(UserInputError):
    """The selection cannot give the study it was asked for (one line: the counts, and what to change)."""


# ------------------------------------------------------------------------------------------------ windows
def token_windows(token_index: np.ndarray, offsets: np.ndarray, context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """For flat token indices: (start, position) of the window that predicts each token, as in
    `tasks.lm.losses.document_windows` (window k of a document starting at a covers [a + k(C-1), a + k(C-1) + C)).
    The token is `start + position`, predicted from tokens [start, start + position). Shapes (n,), int64;
    position is in [1, C-1]. A document's first token has no prediction: an error."""
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2, got {context_length}")
    token_index = np.asarray(token_index, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    if token_index.size and (token_index.min() < 0 or token_index.max() >= offsets[-1]):
        raise ValueError(f"token indices must be in [0, {int(offsets[-1])})")
    doc = np.searchsorted(offsets, token_index, side="right") - 1
    in_doc = token_index - offsets[doc]
    if (in_doc < 1).any():
        bad = int(token_index[np.argmax(in_doc < 1)])
        raise ValueError(f"token {bad} is the first of its document: it has no prediction")
    step = context_length - 1
    k = (in_doc - 1) // step
    return offsets[doc] + k * step, in_doc - k * step


def window_batch(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
    """(n, max(lengths)) int64 token ids of the windows ids[start:start + length], right-padded with 0 (padding
    after a position never changes a causal model's output there)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    width = int(lengths.max()) if lengths.size else 0
    ar = np.arange(width)
    idx = np.asarray(starts, dtype=np.int64)[:, None] + ar[None, :]
    valid = ar[None, :] < lengths[:, None]
    out = np.where(valid, np.asarray(ids)[np.minimum(idx, len(ids) - 1)], 0)
    return torch.as_tensor(out.astype(np.int64))


def effective_context(model, context_length: int) -> int:
    """The context the losses were computed with: `context_length`, capped by the model's maximum positions
    (as in tasks.lm.losses.token_loss_column)."""
    return int(min(context_length, getattr(model.config, "max_position_embeddings", context_length) or context_length))


# ------------------------------------------------------------------------------------------------ selection
def model_column(models: list[str], label: str) -> int:
    """Column of `label` in `lm.token_losses` (attrs["models"]); "smallest" is the first."""
    if label == "smallest":
        return 0
    if label not in models:
        raise SelectionError(f"selection.model {label!r} is not a model of the token losses {list(models)} "
                             "(or 'smallest')")
    return list(models).index(label)


def induction_mask(ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(n_tokens,) bool: True where token t completes a trigram (ids[t-2], ids[t-1], ids[t]) that already occurred,
    ending at an earlier position, in the same document (the paper's induction filter)."""
    ids = np.asarray(ids, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    out = np.zeros(len(ids), dtype=bool)
    if len(ids) < 3:
        return out
    doc = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    t = np.arange(2, len(ids))
    t = t[doc[t - 2] == doc[t]]  # trigrams inside one document
    if t.size == 0:
        return out
    trigrams = np.stack([doc[t], ids[t - 2], ids[t - 1], ids[t]], axis=1)
    # the first occurrence of each (document, trigram) is not an induction token; every later one is
    _, first = np.unique(trigrams, axis=0, return_index=True)
    out[t] = True
    out[t[first]] = False
    return out


def selection_candidates(loss: np.ndarray, ids: np.ndarray, offsets: np.ndarray, cfg: SelectionConfig,
                         label: str) -> tuple[np.ndarray, dict]:
    """Token indices (ascending) that pass the threshold and the induction filter, and the counts at each step.
    Raises SelectionError when they are fewer than cfg.n_tokens."""
    loss = np.asarray(loss, dtype=np.float64)
    predicted = np.isfinite(loss)
    if not predicted.any():
        raise SelectionError(f"selection: model {label!r} has no predicted token in the token losses")
    below = predicted & (loss < cfg.max_loss_nats)
    counts = {"predicted": int(predicted.sum()), "below_threshold": int(below.sum())}
    if counts["below_threshold"] == 0:
        raise SelectionError(
            f"selection.max_loss_nats = {cfg.max_loss_nats} selects no token: the lowest loss under model {label!r} "
            f"is {np.nanmin(loss):.4g} nats (over {counts['predicted']} predicted tokens); raise "
            "selection.max_loss_nats")
    keep = below
    if cfg.exclude_induction:
        keep = below & ~induction_mask(ids, offsets)
    counts["induction_dropped"] = int(below.sum() - keep.sum())
    counts["candidates"] = int(keep.sum())
    if counts["candidates"] < cfg.n_tokens:
        dropped = (f", of which {counts['induction_dropped']} induction tokens were dropped"
                   if cfg.exclude_induction else "")
        fixes = "lower selection.n_tokens, raise selection.max_loss_nats"
        fixes += ", set selection.exclude_induction = false" if counts["induction_dropped"] else ""
        raise SelectionError(
            f"selection: only {counts['candidates']} tokens qualify ({counts['below_threshold']} of "
            f"{counts['predicted']} have loss < {cfg.max_loss_nats} nats under model {label!r}{dropped}) but "
            f"selection.n_tokens = {cfg.n_tokens}: {fixes}, or use a larger corpus (lm.max_eval_tokens)")
    return np.flatnonzero(keep).astype(np.int64), counts


def subsample(candidates: np.ndarray, n_tokens: int, seed: int) -> np.ndarray:
    """The first `n_tokens` of one seeded permutation of `candidates`: deterministic, and a prefix of the result
    for any larger n_tokens (same candidates and seed)."""
    order = np.random.default_rng(seed).permutation(len(candidates))
    return np.asarray(candidates, dtype=np.int64)[order[:n_tokens]]


@torch.inference_mode()
def predict_tokens(model, ids: np.ndarray, offsets: np.ndarray, token_index: np.ndarray, context_length: int,
                   batch_size: int = 32, device: str | torch.device | None = None,
                   progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The model's argmax prediction (int64) and loss (nats, float32) at each token, each token predicted from its
    own window (`token_windows`): one forward pass per window, truncated after its last selected token."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    token_index = np.asarray(token_index, dtype=np.int64)
    starts, pos = token_windows(token_index, offsets, context_length)
    windows, which = np.unique(starts, return_inverse=True)
    need = np.zeros(len(windows), dtype=np.int64)
    np.maximum.at(need, which, pos)  # the window up to its last selected token's context
    predicted = np.zeros(len(token_index), dtype=np.int64)
    loss = np.zeros(len(token_index), dtype=np.float32)
    ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    for batch in batch_plan(need, batch_size):
        x = window_batch(ids, windows[batch], need[batch]).to(device)
        logits = model(input_ids=x).logits.float()
        row_of = np.full(len(windows), -1)
        row_of[batch] = np.arange(len(batch))
        tok = np.flatnonzero(np.isin(which, batch))
        b = torch.as_tensor(row_of[which[tok]], device=device)
        z = logits[b, torch.as_tensor(pos[tok] - 1, device=device)]  # (n, V): logits predicting each token
        target = ids_t[token_index[tok]].to(device)
        loss[tok] = (torch.logsumexp(z, -1) - z.gather(1, target[:, None])[:, 0]).cpu().numpy()
        predicted[tok] = z.argmax(-1).cpu().numpy()
        if progress is not None:
            progress.update(len(tok))
    return predicted, loss


def check_losses(recomputed: np.ndarray, stored: np.ndarray, token_index: np.ndarray, dtype: str, what: str) -> None:
    """The model and context reproduce the stored losses (within float32 / half-precision rounding), else an error
    that says what differs."""
    tol = 1e-3 if dtype == "float32" else 5e-2
    diff = np.abs(np.asarray(recomputed, np.float64) - np.asarray(stored, np.float64))
    bad = diff > tol * (1 + np.abs(stored))
    if bad.any():
        i = int(np.argmax(diff))
        raise SelectionError(
            f"{what}: the model does not reproduce the stored token losses (token {int(token_index[i])}: "
            f"{recomputed[i]:.6g} vs {stored[i]:.6g} nats; {int(bad.sum())} of {len(diff)} differ): is it the model "
            "and context_length the losses were computed with?")


def load_selection_model(model: ModelSource, label: str, st: Store, dtype: str, device: torch.device):
    """The selection model, checked to be the model `label` whose losses select the tokens."""
    lm, name = model.load(st, dtype, device)
    if name != label:
        raise SelectionError(f"selection: the model given is {name!r}, not the selection model {label!r}")
    return lm


def selection_label(models: list[str], cfg: SelectionConfig) -> str:
    return list(models)[model_column(models, cfg.model)]


@quanta_task(name="qdg-select-tokens")
def select_tokens(tokens: ArtifactRef, token_losses: ArtifactRef, *, model: ModelSource, cfg: SelectionConfig,
                  context_length: int, dtype: str = "float32", device: str = "auto", store: str) -> ArtifactRef:
    """The selection table (`qdg.selection`) of `cfg` on an `lm.tokens` artifact and its `lm.token_losses`.

    model: the selection model (tasks.lm.model_source.ModelSource: a trained suite's `lm.model`, or a pretrained
    hub name or directory at a revision), used to compute the predicted (argmax) token of each selected token with the
    context its loss was computed with (and to check that it reproduces the stored losses)."""
    st = Store(store)
    loss_arrays, loss_attrs = st.read_zarr(token_losses)
    if loss_attrs["tokens"] != tokens.content_hash:
        raise SelectionError(f"selection: the token losses {token_losses.short} were computed on tokens "
                             f"{loss_attrs['tokens'][:12]}, not on {tokens.short}")
    models = list(loss_attrs["models"])
    col = model_column(models, cfg.model)
    label = models[col]
    arrays, _ = st.read_zarr(tokens)
    ids, offsets = arrays["ids"], arrays["offsets"]
    loss = loss_arrays["loss"][:, col]
    candidates, counts = selection_candidates(loss, ids, offsets, cfg, label)
    token_index = subsample(candidates, cfg.n_tokens, cfg.seed)

    dev = resolve_device(device, "gradients.device")
    lm = load_selection_model(model, label, st, dtype, dev)
    ctx = effective_context(lm, context_length)
    stored_ctx = loss_attrs.get("context_length")
    if isinstance(stored_ctx, list) and int(stored_ctx[col]) != ctx:
        raise SelectionError(f"selection: context_length {ctx} differs from the {stored_ctx[col]} the losses of "
                             f"{label!r} were computed with")
    with Progress("qdg-select-tokens", len(token_index), unit="token") as progress:
        predicted, recomputed = predict_tokens(lm, ids, offsets, token_index, ctx, device=dev, progress=progress)
    check_losses(recomputed, loss[token_index], token_index, dtype, f"selection model {label!r}")

    doc = np.searchsorted(np.asarray(offsets), token_index, side="right") - 1
    df = pd.DataFrame({
        "row": np.arange(len(token_index), dtype=np.int64),
        "token_index": token_index,
        "doc_id": np.asarray(arrays["doc_id"], dtype=np.int64)[doc],
        "position": token_index - np.asarray(offsets, dtype=np.int64)[doc],
        "target": np.asarray(ids, dtype=np.int64)[token_index],
        "predicted": predicted,
        "loss": loss[token_index].astype(np.float64),
    })
    print(f"selection: {counts['below_threshold']} of {counts['predicted']} tokens below {cfg.max_loss_nats} nats "
          f"under {label}, {counts['induction_dropped']} induction tokens dropped, {len(df)} of "
          f"{counts['candidates']} candidates kept; argmax = target for {np.mean(predicted == df.target):.1%}")
    return st.write_table("qdg.selection", df, inputs=[tokens, token_losses] + model.inputs,
                          params={**cfg.model_dump(), "model_label": label, "model_name": model.name,
                                  "revision": model.revision, "context_length": ctx, **counts})
