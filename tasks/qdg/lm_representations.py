"""QDG on language models: the representations over MLP hidden units, |gradient| from a stored gradient block, and
the agreement between representations' clusterings.

Unit stage (task `qdg-units`, artifact `qdg.unit_block`, one cached task per block of selected rows): for each
selected token and every MLP hidden unit of every layer (the output of the MLP's activation function, the modules
named `*.mlp.act` in GPT-NeoX and GPT-2, concatenated over layers: sum of the layer widths dims), at the position
whose output predicts the token (its position - 1 in its window: the logits of the token's loss, as in the
gradients):
- `a`: the activation,
- `dlogit`: d(target logit)/da,
- `dloss`: d(loss)/da (loss in nats),
from one forward pass per window for all its selected tokens and one batched backward pass (autograd to the hooked
activations only, never to the parameters) for their 2 x k outputs. The windows are the gradients' (`token_windows`),
so `loss` is the stored token loss.

Read from it (task `qdg-unit-representation`, each a `qdg.gradient_block`, never JL-projected: the dims are small):
- activations: a (the paper code's activation baseline)
- attribution: a * dlogit (APD-style: each unit's first-order share of the target logit)
- ablation: -a * dloss, the first-order estimate of L(unit zeroed) - L (exact ablation would take a forward pass per
  unit and token; asked for with `ablation_first_order = true`)

abs_gradient from an unprojected gradient block (task `qdg-abs-gradient`): |g / ||g||| already has norm 1 and equals
|g| / || |g| ||, so it is exact and costs one read; with a projection |g| must be taken before it, and
`gradient_block(representation="abs_gradient")` recomputes the gradients instead. The same holds for every
`Transform` (task `qdg-transformed-block`): each step is invariant to the row's scale, so an unprojected block's
transform is read from its unit rows; with a projection `gradient_block(transform=...)` applies it before projecting.
"""
from __future__ import annotations

import inspect
import itertools

import numpy as np
import pandas as pd
import torch
from torch import nn

from schemas.errors import UserInputError
from schemas.qdg_transform import Transform
from storage import ArtifactRef, Store
from tasks.caching import LOCKING, quanta_task
from tasks.devices import resolve_device
from tasks.lm.model_source import ModelSource
from tasks.progress import Progress
from tasks.qdg.clustering import labels_ari
from tasks.qdg.gradients import BlockCache, normalise_rows, write_gradient_block
from tasks.qdg.selection import effective_context, token_windows, window_batch
from tasks.qdg.transforms import transform_rows, transformed_layout

UNIT_REPRESENTATIONS = ("activations", "attribution", "ablation")


class UnitRepresentationError(UserInputError):
    """The model has no MLP activation modules this stage knows (one line naming the model's modules)."""


def mlp_activation_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of each layer's MLP activation function, in layer order: modules named `*.mlp.act`."""
    found = [(n, m) for n, m in model.named_modules() if n.endswith(".mlp.act")]
    if not found:
        names = [n for n, _ in model.named_modules() if n.endswith("mlp")][:4]
        raise UnitRepresentationError(
            f"representations: activations, attribution and ablation need each layer's MLP activation module "
            f"named '<layer>.mlp.act' (GPT-NeoX, GPT-2); {type(model).__name__} has none (its MLPs: {names})")
    return found


class UnitValues:
    """Per-token activations of every MLP hidden unit (all layers, concatenated) at the position predicting the
    token, with d(target logit)/da and d(loss)/da there. `widths[l]` units per layer; `dim` = their sum."""

    def __init__(self, model: nn.Module, context_length: int, positions_per_backward: int = 32):
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")  # plain torch ops: the batched backward (vmap) handles them
        self.model = model.eval()
        self.modules = mlp_activation_modules(model)
        self.context_length = int(context_length)
        self.chunk = max(1, int(positions_per_backward) // 2)  # 2 outputs per token, batched backward
        self.device = next(model.parameters()).device
        self.keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.widths: list[int] = []
        self.dim = 0

    def window(self, x: torch.Tensor, pos: torch.Tensor, target: torch.Tensor):
        """One window x (1, L), its selected positions (k,) and targets (k,) -> a, dlogit, dloss (k, dim) float32
        and the losses (k,)."""
        acts: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: acts.append(out)) for _, m in self.modules]
        emb = self.model.get_input_embeddings()
        # the graph must reach the activations even where the parameters do not require gradients
        hooks.append(emb.register_forward_hook(lambda _m, _i, out: out if out.requires_grad
                                               else out.detach().requires_grad_(True)))
        try:
            with torch.enable_grad():
                if self.keep_logits:  # only the k rows of logits that predict the selected tokens
                    z_all = self.model(input_ids=x, use_cache=False, logits_to_keep=pos - 1).logits[0].float()
                else:
                    z_all = self.model(input_ids=x, use_cache=False).logits[0, pos - 1].float()
        finally:
            for h in hooks:
                h.remove()
        z = z_all.gather(1, target[:, None])[:, 0]  # z_all (k, V): the logits predicting each selected token
        losses = torch.logsumexp(z_all, -1) - z
        if not self.widths:
            self.widths = [int(a.shape[-1]) for a in acts]
            self.dim = int(sum(self.widths))
        at = (pos - 1).tolist()
        a = torch.cat([t[0, at] for t in acts], dim=1).detach().float()
        k = len(at)
        dlogit = torch.empty(k, self.dim, device=x.device)
        dloss = torch.empty(k, self.dim, device=x.device)
        for c0 in range(0, k, self.chunk):
            c = slice(c0, min(k, c0 + self.chunk))
            m = c.stop - c.start
            outs = torch.cat([z[c], losses[c]])
            eye = torch.eye(2 * m, device=x.device, dtype=outs.dtype)
            grads = torch.autograd.grad(outs, acts, grad_outputs=eye, is_grads_batched=True,
                                        retain_graph=c.stop < k)
            rows = torch.arange(m, device=x.device)
            here = torch.as_tensor(at[c], device=x.device)
            per = torch.cat([g[torch.cat([rows, rows + m]), 0, torch.cat([here, here])] for g in grads], dim=1)
            dlogit[c], dloss[c] = per[:m].float(), per[m:].float()
        return a, dlogit, dloss, losses.detach()

    def compute(self, ids: np.ndarray, offsets: np.ndarray, token_index: np.ndarray, emit,
                progress: Progress | None = None) -> None:
        """`emit(rows, a, dlogit, dloss, losses)` for the tokens `token_index`, window by window (rows: positions
        in `token_index`)."""
        token_index = np.asarray(token_index, dtype=np.int64)
        starts, pos = token_windows(token_index, offsets, self.context_length)
        ids = np.asarray(ids)
        target = ids[token_index].astype(np.int64)
        for s in np.unique(starts):
            rows = np.flatnonzero(starts == s)
            x = window_batch(ids, np.array([s]), np.array([pos[rows].max()])).to(self.device)
            out = self.window(x, torch.as_tensor(pos[rows], device=self.device),
                              torch.as_tensor(target[rows], device=self.device))
            emit(rows, *out)
            if progress is not None:
                progress.update(rows.size)


def unit_rows(arrays: dict, representation: str) -> np.ndarray:
    """The raw rows of a unit representation from a `qdg.unit_block`'s arrays (before normalisation)."""
    a = np.asarray(arrays["a"], dtype=np.float32)
    if representation == "activations":
        return a
    if representation == "attribution":
        return a * np.asarray(arrays["dlogit"], dtype=np.float32)
    if representation == "ablation":
        return -a * np.asarray(arrays["dloss"], dtype=np.float32)
    raise ValueError(f"unit representations are {UNIT_REPRESENTATIONS}, not {representation!r}")


# ------------------------------------------------------------------------------------------------- tasks
@quanta_task(name="qdg-units", task_run_name="qdg-units-{start}-{stop}", cache_policy=BlockCache(**LOCKING))
def units_block(selection: ArtifactRef, tokens: ArtifactRef, *, model: ModelSource, start: int, stop: int,
                context_length: int, dtype: str, device: str, positions_per_backward: int, store: str) -> ArtifactRef:
    """The `qdg.unit_block` of selection rows [start, stop) (the model as in `gradient_block`)."""
    st = Store(store)
    df = st.read_table(selection)
    if not 0 <= start < stop <= len(df):
        raise ValueError(f"unit block [{start}, {stop}) is outside the selection's {len(df)} rows")
    rows = df.iloc[start:stop]
    dev = resolve_device(device, "gradients.device")
    lm, label = model.load(st, dtype, dev)
    ctx = effective_context(lm, context_length)
    values = UnitValues(lm, ctx, positions_per_backward)
    arrays, _ = st.read_zarr(tokens)
    n = len(rows)
    out: dict[str, np.ndarray] = {}

    def emit(local, a, dlogit, dloss, losses):
        if not out:
            out.update({name: np.full((n, values.dim), np.nan, np.float32) for name in ("a", "dlogit", "dloss")})
            out["loss"] = np.full(n, np.nan, np.float32)
        for name, t in (("a", a), ("dlogit", dlogit), ("dloss", dloss), ("loss", losses)):
            out[name][local] = t.detach().float().cpu().numpy()

    with Progress(f"qdg-units-{start}-{stop}", n, unit="token") as progress:
        values.compute(arrays["ids"], arrays["offsets"], rows["token_index"].to_numpy(dtype=np.int64), emit,
                       progress)
    out["row"] = rows["row"].to_numpy(dtype=np.int64)
    attrs = {"model": label, "layers": [name for name, _ in values.modules], "widths": values.widths,
             "context_length": ctx, "rows": [int(start), int(stop)], "dtype": dtype,
             "position": "the position whose output predicts the token (its loss's logits)", "loss_unit": "nats"}
    return st.write_zarr("qdg.unit_block", out, attrs, inputs=[selection, tokens] + model.inputs,
                         params={**model.params(), "start": start, "stop": stop, "device": str(dev)})


@quanta_task(name="qdg-unit-representation")
def unit_representation(units: ArtifactRef, *, representation: str, store: str) -> ArtifactRef:
    """The `qdg.gradient_block` of a unit representation (activations, attribution, ablation) from a
    `qdg.unit_block`: rows L2-normalised, "norm" the raw row's norm, "loss" the token's loss."""
    st = Store(store)
    arrays, attrs = st.read_zarr(units)
    raw = torch.from_numpy(np.ascontiguousarray(unit_rows(arrays, representation)))
    dim = raw.shape[1]

    def compute(emit):
        unit, norms = normalise_rows(raw)
        emit(np.arange(len(raw)), unit, norms, torch.from_numpy(arrays["loss"]))

    battrs = {"model": attrs["model"], "representation": representation, "dim": int(dim), "gradient_dim": int(dim),
              "projection": "none", "layers": attrs["layers"], "widths": attrs["widths"],
              "context_length": attrs["context_length"], "rows": attrs.get("rows"),
              "norm": f"L2 norm of the raw {representation} row", "loss_unit": "nats"}
    return write_gradient_block(st, compute, arrays["row"], int(dim), battrs, [units],
                                params={"representation": representation})


@quanta_task(name="qdg-abs-gradient")
def abs_gradient_block(gradient_block: ArtifactRef, *, store: str) -> ArtifactRef:
    """abs_gradient from an unprojected `qdg.gradient_block` of gradients: |g| of each unit row (still a unit
    vector), the same norms and losses."""
    st = Store(store)
    group = st.open_zarr(gradient_block)
    attrs = {k: v for k, v in group.attrs.asdict().items() if k != "quanta"}  # (the store's lineage record)
    if attrs.get("projection") != "none" or attrs.get("representation", "gradient") != "gradient":
        raise ValueError(f"abs_gradient is read from an unprojected gradient block (got projection "
                         f"{attrs.get('projection')!r}, representation {attrs.get('representation', 'gradient')!r})")
    g, dim = group["g"], int(group["g"].shape[1])
    norm, loss = np.asarray(group["norm"][...]), np.asarray(group["loss"][...])
    step = max(1, (64 << 20) // (4 * dim))

    def compute(emit):
        for i in range(0, g.shape[0], step):
            unit = torch.from_numpy(np.abs(np.asarray(g[i:i + step], dtype=np.float32)))
            local = np.arange(i, i + len(unit))
            emit(local, unit, torch.from_numpy(norm[local]), torch.from_numpy(loss[local]))

    return write_gradient_block(st, compute, np.asarray(group["row"][...]), dim,
                                {**attrs, "representation": "abs_gradient"}, [gradient_block],
                                params={"representation": "abs_gradient", "from": gradient_block.content_hash})


@quanta_task(name="qdg-transformed-block")
def transformed_block(gradient_block: ArtifactRef, *, transform: Transform, store: str) -> ArtifactRef:
    """A `Transform` of an unprojected parameter-space `qdg.gradient_block` (gradient, abs_gradient or
    logit_gradient), from its unit rows: the transformed rows L2-normalised, the same norms and losses."""
    st = Store(store)
    group = st.open_zarr(gradient_block)
    attrs = {k: v for k, v in group.attrs.asdict().items() if k != "quanta"}
    if attrs.get("projection") != "none" or "parameter_sizes" not in attrs:
        raise ValueError(f"a transform is read from an unprojected parameter-space gradient block (got projection "
                         f"{attrs.get('projection')!r}, parameter sizes {attrs.get('parameter_sizes')!r})")
    names, sizes = list(attrs["parameters"]), [int(v) for v in attrs["parameter_sizes"]]
    kept_names, kept_sizes = transformed_layout(names, sizes, transform)
    g, dim = group["g"], int(sum(kept_sizes))
    norm, loss = np.asarray(group["norm"][...]), np.asarray(group["loss"][...])
    step = max(1, (64 << 20) // (4 * int(g.shape[1])))

    def compute(emit):
        for i in range(0, g.shape[0], step):
            raw = transform_rows(torch.from_numpy(np.asarray(g[i:i + step], dtype=np.float32)), names, sizes,
                                 transform)
            unit, _ = normalise_rows(raw.clone() if transform.is_identity() else raw)
            local = np.arange(i, i + len(unit))
            emit(local, unit, torch.from_numpy(norm[local]), torch.from_numpy(loss[local]))

    return write_gradient_block(st, compute, np.asarray(group["row"][...]), dim,
                                {**attrs, "dim": dim, "parameters": kept_names, "parameter_sizes": kept_sizes,
                                 "transform": transform.label()}, [gradient_block],
                                params={"transform": transform.model_dump(), "from": gradient_block.content_hash})


def agreement_table(labels: dict[str, list[pd.DataFrame]]) -> pd.DataFrame:
    """`qdg.representation_ari`: for each pair of representations (in the given order) and each k, the adjusted
    Rand index between their clusterings (the tables of one seed, one per k)."""
    by = {r: {int(t["k"].iloc[0]): t for t in tables} for r, tables in labels.items()}
    rows = []
    for a, b in itertools.combinations(list(by), 2):
        for k in sorted(set(by[a]) & set(by[b])):
            ta, tb = by[a][k], by[b][k]
            rows.append({"k": k, "seed": int(ta["seed"].iloc[0]), "a": a, "b": b, "ari": labels_ari(ta, tb),
                         "n_tokens": len(ta)})
    return pd.DataFrame(rows, columns=["k", "seed", "a", "b", "ari", "n_tokens"]).astype(
        {"k": "int64", "seed": "int64", "a": "str", "b": "str", "ari": "float64", "n_tokens": "int64"})


@quanta_task(name="qdg-representation-ari", task_run_name="qdg-representation-ari")
def representation_agreement(labels: dict[str, list[ArtifactRef]], *, store: str) -> ArtifactRef:
    """`qdg.representation_ari` from each representation's `qdg.labels` (first seed, one per k)."""
    st = Store(store)
    table = agreement_table({r: [st.read_table(ref) for ref in refs] for r, refs in labels.items()})
    return st.write_table("qdg.representation_ari", table, inputs=[r for refs in labels.values() for r in refs],
                          params={"representations": list(labels)})
