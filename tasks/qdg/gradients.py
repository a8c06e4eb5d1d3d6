"""QDG stage 2, gradients: for each selected token, the gradient of its loss (nats) w.r.t. the model's parameters except
embeddings, unembedding and layer norms (configurable), flattened, optionally JL-projected, L2-normalised.

Batched, never one full forward pass per token: the selected tokens of a block are grouped by the window that
predicts them (`tasks.qdg.selection.token_windows`: the context their loss was computed with); each window is
truncated after its last selected token (attention is causal, so the prediction is unchanged) and the logits are
computed only where a selected token is predicted (transformers' `logits_to_keep`). Windows with the same number k
of selected tokens are stacked: `torch.func.vmap` over windows of `jacrev` over their k losses, i.e. one forward pass
per window and the k backward passes of its tokens batched, for up to `positions_per_backward` tokens at once (the
most full gradients a block holds beyond its output rows). Attention runs in the "eager" implementation (plain
torch ops, which vmap batches).

`naive_token_gradients` is the reference the tests and the benchmark compare with: one full forward and backward
pass per token on its whole window.

Blocks: `gradient_block_plan(n, block_rows)` cuts the selection into [start, stop) blocks at multiples of
`block_rows`; each block is one cached task whose key covers the selection rows it reads (their token indices), not
the whole selection's hash. Selections are prefix-stable in n_tokens (see tasks.qdg.selection), so when n_tokens
grows, every full block keeps its key and only the last partial block and the new blocks are computed.
"""
from __future__ import annotations

import hashlib
import inspect
import re
from dataclasses import dataclass

import numpy as np
import torch
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from torch import nn

from schemas.errors import UserInputError
from schemas.qdg import GradientConfig
from schemas.qdg_transform import Transform
from storage import ArtifactRef, Store
from tasks.caching import LOCKING, ProjectCode, VerifiedCache, quanta_task
from tasks.devices import resolve_device
from tasks.lm.model_source import ModelSource
from tasks.progress import Progress
from tasks.qdg.projection import Projector
from tasks.qdg.selection import effective_context, token_windows, window_batch
from tasks.qdg.transforms import transform_rows, transformed_layout

IN_MEMORY_BLOCK_BYTES = 256 << 20  # a block's output rows are buffered in memory up to this size, else written row by row


class GradientConfigError(UserInputError):
    """The gradient settings select no parameter (one line naming the patterns)."""


# --------------------------------------------------------------------------------------- which parameters
def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)) or bool(
        re.search(r"(layer|rms)_?norm", type(module).__name__, re.IGNORECASE))


def parameter_groups(model: nn.Module) -> dict[str, set[int]]:
    """ids of the parameters of each excludable kind: "embedding" (every nn.Embedding, input and position
    embeddings), "unembedding" (the output embedding, even when tied to the input one) and "layernorm" (LayerNorm,
    RMSNorm and GroupNorm modules, and any module class named like a layer/RMS norm)."""
    groups: dict[str, set[int]] = {"embedding": set(), "unembedding": set(), "layernorm": set()}
    inp = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for module in model.modules():
        if isinstance(module, nn.Embedding) or module is inp:
            groups["embedding"].update(id(p) for p in module.parameters(recurse=False))
        if module is out:
            groups["unembedding"].update(id(p) for p in module.parameters(recurse=False))
        if _is_norm(module):
            groups["layernorm"].update(id(p) for p in module.parameters(recurse=False))
    return groups


def gradient_parameter_names(model: nn.Module, cfg: GradientConfig) -> list[str]:
    """Names (model.named_parameters order; tied parameters once) of the parameters whose gradients are taken:
    not in cfg.exclude_modules, matching one of cfg.include (if any) and none of cfg.exclude (re.search)."""
    groups = parameter_groups(model)
    dropped = set().union(*(groups[k] for k in cfg.exclude_modules)) if cfg.exclude_modules else set()
    names = [n for n, p in model.named_parameters()
             if id(p) not in dropped
             and (not cfg.include or any(re.search(r, n) for r in cfg.include))
             and not any(re.search(r, n) for r in cfg.exclude)]
    if not names:
        raise GradientConfigError(
            f"gradients: no parameter left (exclude_modules = {list(cfg.exclude_modules)}, include = "
            f"{list(cfg.include)}, exclude = {list(cfg.exclude)}; the model's parameters are e.g. "
            f"{[n for n, _ in model.named_parameters()][:6]})")
    return names


# --------------------------------------------------------------------------------------- batched gradients
def backward_plan(starts: np.ndarray, positions: np.ndarray, positions_per_backward: int) -> list[list[np.ndarray]]:
    """Batches of windows for the batched backward passes: each batch is a list of row-index arrays, one per
    window, every array of the same length k (the window's selected tokens; a window with more than
    `positions_per_backward` is split), with at most `positions_per_backward` rows per batch; windows of similar
    length are batched together."""
    order = np.lexsort((positions, starts))
    s_sorted = starts[order]
    cuts = np.flatnonzero(np.diff(s_sorted)) + 1
    units = []
    for rows in np.split(order, cuts):
        units += [rows[i:i + positions_per_backward] for i in range(0, len(rows), positions_per_backward)]
    by_k: dict[int, list[np.ndarray]] = {}
    for u in units:
        by_k.setdefault(len(u), []).append(u)
    batches = []
    for k in sorted(by_k):
        group = sorted(by_k[k], key=lambda u: int(positions[u].max()))
        per = max(1, positions_per_backward // k)
        batches += [group[i:i + per] for i in range(0, len(group), per)]
    return batches


class TokenGradients:
    """Per-token loss gradients of one causal LM w.r.t. the parameters `names` (flattened in that order, dim =
    their total size). Switches the model to eager attention (vmap batches its plain torch ops).

    output "loss": the gradient of the token's loss (nats); "logit": of the target token's logit (the
    logit_gradient representation: no softmax, hence no (1 - p) scaling and no sign set by the label). The losses
    returned are the token losses either way."""

    def __init__(self, model: nn.Module, names: list[str], context_length: int, positions_per_backward: int = 32,
                 output: str = "loss"):
        if output not in ("loss", "logit"):
            raise ValueError(f"output must be 'loss' or 'logit' (got {output!r})")
        self.output = output
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
        self.model = model.eval()
        self.names = list(names)
        self.context_length = int(context_length)
        self.positions_per_backward = int(positions_per_backward)
        params = dict(model.named_parameters())
        self.trained = {n: params[n].detach() for n in self.names}
        self.frozen = {n: p.detach() for n, p in params.items() if n not in self.trained}
        self.frozen.update(dict(model.named_buffers()))
        self.sizes = [self.trained[n].numel() for n in self.names]
        self.dim = int(sum(self.sizes))
        self.device = next(model.parameters()).device
        self.keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._buffer: torch.Tensor | None = None

    def _window_losses(self, params: dict, x: torch.Tensor, pos: torch.Tensor, target: torch.Tensor):
        """Losses (k,) of the tokens at positions `pos` (k,) of one window x (L,), predicted from the logits at
        pos - 1. Returned twice: once to differentiate, once (detached) as jacrev's aux output."""
        kwargs = {"input_ids": x[None], "use_cache": False}
        if self.keep_logits:
            logits = torch.func.functional_call(self.model, {**params, **self.frozen}, (),
                                                {**kwargs, "logits_to_keep": pos - 1}).logits[0]
        else:
            full = torch.func.functional_call(self.model, {**params, **self.frozen}, (), kwargs).logits[0]
            logits = torch.gather(full, 0, (pos - 1)[:, None].expand(-1, full.shape[-1]))
        logits = logits.double()  # float64 loss: in float32 softmax saturates once the logit gap passes ~16.6
        z = torch.gather(logits, 1, target[:, None])[:, 0]
        losses = torch.logsumexp(logits, -1) - z
        return (losses if self.output == "loss" else z), losses.detach()

    def batch(self, x: torch.Tensor, pos: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows x (W, L), positions and targets (W, k) -> raw gradients (W * k, dim) float32 and losses (W * k,),
        window-major. The gradients live in a buffer reused by the next call."""
        jac = torch.func.vmap(torch.func.jacrev(self._window_losses, has_aux=True), in_dims=(None, 0, 0, 0))
        grads, losses = jac(self.trained, x, pos, target)
        n = pos.shape[0] * pos.shape[1]
        if self._buffer is None or self._buffer.shape[0] < n:  # reused: fresh memory costs page faults every batch
            self._buffer = torch.empty(max(n, self.positions_per_backward), self.dim, dtype=torch.float32,
                                       device=x.device)
        flat = self._buffer[:n]
        off = 0
        for name, size in zip(self.names, self.sizes):
            flat[:, off:off + size] = grads.pop(name).reshape(n, size)  # free each as it is copied
            off += size
        return flat, losses.reshape(n)

    def compute(self, ids: np.ndarray, offsets: np.ndarray, token_index: np.ndarray, emit,
                progress: Progress | None = None) -> None:
        """Gradients of the tokens `token_index` (flat indices into ids), each with its loss's window.
        `emit(rows, raw_gradients (m, dim) float32 tensor, losses (m,) tensor)` receives them batch by batch, rows
        being positions in `token_index`; the gradient tensor is reused afterwards (copy what you keep)."""
        token_index = np.asarray(token_index, dtype=np.int64)
        starts, pos = token_windows(token_index, offsets, self.context_length)
        ids = np.asarray(ids)
        target = ids[token_index].astype(np.int64)
        for batch in backward_plan(starts, pos, self.positions_per_backward):
            rows = np.stack(batch)  # (W, k)
            x = window_batch(ids, starts[rows[:, 0]], pos[rows].max(axis=1)).to(self.device)
            p = torch.as_tensor(pos[rows], device=self.device)
            t = torch.as_tensor(target[rows], device=self.device)
            g, losses = self.batch(x, p, t)
            emit(rows.reshape(-1), g, losses)
            if progress is not None:
                progress.update(rows.size)


def naive_token_gradients(model: nn.Module, names: list[str], ids: np.ndarray, offsets: np.ndarray,
                          token_index: np.ndarray, context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: for each token, one forward pass of its whole window and one backward pass of its loss.
    Returns raw (unnormalised) gradients (n, dim) float32 and losses (n,) float32."""
    params = dict(model.named_parameters())
    chosen = [params[n] for n in names]
    offsets = np.asarray(offsets, dtype=np.int64)
    token_index = np.asarray(token_index, dtype=np.int64)
    starts, pos = token_windows(token_index, offsets, context_length)
    ends = offsets[np.searchsorted(offsets, token_index, side="right")]
    device = next(model.parameters()).device
    grads, losses = [], []
    for s, p, e in zip(starts.tolist(), pos.tolist(), ends.tolist()):
        x = torch.as_tensor(np.asarray(ids[s:min(s + context_length, e)], dtype=np.int64), device=device)[None]
        logits = model(input_ids=x).logits[0].float()
        loss = torch.nn.functional.cross_entropy(logits[p - 1][None], x[0, p][None])
        g = torch.autograd.grad(loss, chosen)
        grads.append(torch.cat([a.reshape(-1) for a in g]).float().cpu())
        losses.append(float(loss.detach()))
    return torch.stack(grads).numpy(), np.asarray(losses, dtype=np.float32)


def normalise_rows(raw: torch.Tensor, projector: Projector | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit rows, norms of the raw rows): the rows of `raw` (projected first, if a projector is given) divided by
    their L2 norm; without a projector `raw` itself is divided, in place. A zero or non-finite gradient is an error
    (its direction is undefined)."""
    norms = torch.linalg.vector_norm(raw, dim=1)
    out = projector(raw) if projector is not None else raw
    out_norms = norms if projector is None else torch.linalg.vector_norm(out, dim=1)
    bad = ~(torch.isfinite(out_norms) & (out_norms > 0))
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        raise FloatingPointError(f"gradient row {i} has norm {float(out_norms[i])} (raw norm {float(norms[i])}): "
                                 "its direction is undefined")
    return out.div_(out_norms[:, None]), norms


def gradient_block_plan(n_rows: int, block_rows: int) -> list[tuple[int, int]]:
    """[start, stop) row blocks cut at multiples of `block_rows` (the last may be shorter): growing n_rows keeps
    every full block as it was."""
    if n_rows < 1 or block_rows < 1:
        raise ValueError(f"need n_rows >= 1 and block_rows >= 1 (got {n_rows}, {block_rows})")
    return [(s, min(s + block_rows, n_rows)) for s in range(0, n_rows, block_rows)]


def block_chunks(rows: int, dim: int) -> tuple[int, int]:
    """Zarr chunks of a block's "g": rows-only, about 4 MiB each (at least one row)."""
    return max(1, min(rows, (4 << 20) // max(1, 4 * dim))), dim


def write_gradient_block(st: Store, compute, rows: np.ndarray, dim: int, attrs: dict, inputs: list[ArtifactRef],
                         params: dict) -> ArtifactRef:
    """Publish a `qdg.gradient_block` of len(rows) rows: `compute(emit)` calls emit(local rows, unit rows (m, dim),
    norms (m,), losses (m,)) batch by batch in any order. Small blocks are buffered in memory; a block larger than
    IN_MEMORY_BLOCK_BYTES is written row by row (one row per Zarr chunk), so memory stays bounded."""
    n = len(rows)
    norm = np.zeros(n, dtype=np.float32)
    loss = np.zeros(n, dtype=np.float32)
    seen = np.zeros(n, dtype=bool)
    with st.zarr_writer("qdg.gradient_block", attrs=attrs, inputs=inputs, params=params) as writer:
        in_memory = n * dim * 4 <= IN_MEMORY_BLOCK_BYTES
        chunks = block_chunks(n, dim) if in_memory else (1, dim)
        g = writer.group.create_array("g", shape=(n, dim), dtype="float32", chunks=chunks)
        buffer = np.zeros((n, dim), dtype=np.float32) if in_memory else None

        def emit(local: np.ndarray, unit: torch.Tensor, norms: torch.Tensor, losses: torch.Tensor) -> None:
            unit_np = unit.detach().float().cpu().numpy()
            if buffer is not None:
                buffer[local] = unit_np
            else:
                for i, r in enumerate(local.tolist()):
                    g[r:r + 1] = unit_np[i:i + 1]
            norm[local] = norms.detach().float().cpu().numpy()
            loss[local] = losses.detach().float().cpu().numpy()
            seen[local] = True

        compute(emit)
        if not seen.all():
            raise RuntimeError(f"gradient block: {int((~seen).sum())} rows were not computed")
        if buffer is not None:
            g[...] = buffer
        for name, arr in (("row", np.asarray(rows, dtype=np.int64)), ("norm", norm), ("loss", loss)):
            writer.group.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=(max(1, n),))[...] = arr
    return writer.ref


# --------------------------------------------------------------------------------------- the block task
@dataclass
class SelectionRows(CachePolicy):
    """Cache-key part of a gradient block: the selection rows [start, stop) it reads (row numbers and token
    indices), instead of the whole selection's content hash."""

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs):
        if not inputs:
            return None
        df = Store(inputs["store"]).read_table(inputs["selection"])
        rows = df.iloc[int(inputs["start"]):int(inputs["stop"])]
        data = np.ascontiguousarray(rows[["row", "token_index"]].to_numpy(dtype=np.int64))
        return hashlib.sha256(data.tobytes()).hexdigest()


@dataclass
class BlockCache(VerifiedCache):
    """The project's cache policy, with the selection entering the key by the rows a block reads."""

    def __post_init__(self):
        self.inner = (INPUTS - "selection") + TASK_SOURCE + ProjectCode() + SelectionRows()


# the parameter-space representations a gradient block computes: (TokenGradients output, |g| before projection)
PARAMETER_OUTPUTS = {"gradient": ("loss", False), "abs_gradient": ("loss", True), "logit_gradient": ("logit", False)}


@quanta_task(name="qdg-gradient-block", task_run_name="qdg-gradients-{start}-{stop}", cache_policy=BlockCache(**LOCKING))
def gradient_block(selection: ArtifactRef, tokens: ArtifactRef, *, model: ModelSource, start: int, stop: int,
                   cfg: GradientConfig, context_length: int, dtype: str, representation: str = "gradient",
                   transform: Transform = Transform(), store: str) -> ArtifactRef:
    """The `qdg.gradient_block` of selection rows [start, stop) of one parameter-space `representation`
    (PARAMETER_OUTPUTS: "gradient" = the loss gradient; "abs_gradient" = its element-wise absolute value, taken
    before the projection; "logit_gradient" = the gradient of the target token's logit): per-token gradients of a
    trained suite model or a pretrained causal LM (`model`, a tasks.lm.model_source.ModelSource), with the context
    the losses were computed with (`context_length`, capped by the model's positions). Rows of "g" are unit vectors (projected to
    cfg.projection_dims first, if set); "norm" is the L2 norm of the full, unprojected gradient; "loss" the loss
    (nats) of the gradient's own forward pass. `transform` (tasks.qdg.transforms) is applied to each raw row
    before the projection."""
    if representation not in PARAMETER_OUTPUTS:
        raise ValueError(f"gradient blocks compute {sorted(PARAMETER_OUTPUTS)}, not {representation!r}")
    output, take_abs = PARAMETER_OUTPUTS[representation]
    st = Store(store)
    df = st.read_table(selection)
    if not 0 <= start < stop <= len(df):
        raise ValueError(f"gradient block [{start}, {stop}) is outside the selection's {len(df)} rows")
    rows = df.iloc[start:stop]
    device = resolve_device(cfg.device, "gradients.device")
    lm, label = model.load(st, dtype, device)
    names = gradient_parameter_names(lm, cfg)  # fails here, before any work, if nothing is left
    ctx = effective_context(lm, context_length)
    arrays, _ = st.read_zarr(tokens)
    grads = TokenGradients(lm, names, ctx, cfg.positions_per_backward, output=output)
    kept_names, kept_sizes = transformed_layout(names, grads.sizes, transform)
    projector = (Projector(sum(kept_sizes), cfg.projection_dims, cfg.projection_seed, device)
                 if cfg.projection_dims is not None else None)
    dim = cfg.projection_dims if projector is not None else sum(kept_sizes)
    token_index = rows["token_index"].to_numpy(dtype=np.int64)

    def compute(emit):
        def on_batch(local, raw, losses):
            raw = transform_rows(raw.abs_() if take_abs else raw, names, grads.sizes, transform)
            unit, norms = normalise_rows(raw, projector)
            emit(local, unit, norms, losses)

        with Progress(f"qdg-gradients-{start}-{stop}", len(rows), unit="token") as progress:
            grads.compute(arrays["ids"], arrays["offsets"], token_index, on_batch, progress)

    attrs = {"model": label, "representation": representation, "dim": int(dim), "gradient_dim": grads.dim,
             "projection": projector.attrs if projector is not None else "none",
             "parameters": kept_names, "parameter_sizes": kept_sizes, "transform": transform.label(),
             "context_length": ctx, "rows": [int(start), int(stop)], "dtype": dtype,
             "norm": "L2 norm of the full unprojected gradient", "loss_unit": "nats"}
    return write_gradient_block(st, compute, rows["row"].to_numpy(), int(dim), attrs,
                                [selection, tokens] + model.inputs,
                                params={**model.params(), "start": start, "stop": stop, **cfg.model_dump(), "device": str(device),
                                        "representation": representation, "transform": transform.model_dump()})
