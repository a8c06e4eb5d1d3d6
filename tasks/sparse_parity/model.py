"""The models of a sparse-parity training grid: ReLU MLPs with 2 logits, alone or many as one computation.

- `init_mlp` is the reference single model (an `nn.Sequential` with torch's default Linear init from its own seed);
- `WidthGrid` holds G groups x M widths in one flat parameter and computes every model's loss gradient by hand in
  a few large batched operations (tests compare each model's whole trajectory with `init_mlp` trained alone).

Cost per sample and group (H = sum(widths), n = n_bits): the first layer's task-bit matmul, 2·n·H FLOPs forward
and 2·n·H for its weight gradient (its input gradient is not needed); the control bits are one-hot, so their part
of the first layer is a row lookup and its gradient a row scatter-add; hidden layers 2·sum(w²) per matmul (one per
width block, never the sum(widths)² block-diagonal); the output layer each model's own 2 logits.
How the output layer stays cheap: two-class cross-entropy depends on the logits only through the gap
z1 - z0 = h·v + c (v = w_out[1] - w_out[0]), so the forward pass is one dot product per unit; its backward pass
needs no extra pass over the activations: with D = 1[h > 0]·dL/dgap (per sample and unit), the gradient of the
layer under the output is v·(its usual weight gradient computed from D), and dL/dv = sum_b h·dL/dgap follows from
the same sums because h = relu(W·input + b) is linear where D is non-zero: dL/dv[h] = sum_j W[h,j]·S[h,j] + b[h]·s[h]
with S, s the weight and bias gradients computed from D.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tasks.sparse_parity.data import derive_seed


def n_params(in_dim: int, width: int, depth: int, n_out: int = 2) -> int:
    return in_dim * width + width + (depth - 1) * (width * width + width) + width * n_out + n_out


def model_seed(seed: int, width: int) -> int:
    """The init seed of the model of `width` in seed group `seed` (the same for every training-set size D, so the
    models of a data grid differ only in their data)."""
    return derive_seed("init", seed, width)


def init_mlp(in_dim: int, width: int, depth: int, seed: int) -> nn.Sequential:
    """The reference single model, with torch's default Linear init (weights and biases U(±1/sqrt(fan_in)))
    drawn from its own generator: no global RNG state, so shards initialising in parallel threads (a Dask worker
    with several threads) cannot change each other's models."""
    gen = torch.Generator().manual_seed(model_seed(seed, width))
    dims = [in_dim] + [width] * depth + [2]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
        lin = nn.utils.skip_init(nn.Linear, fan_in, fan_out)
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            lin.weight.uniform_(-bound, bound, generator=gen)
            lin.bias.uniform_(-bound, bound, generator=gen)
        layers.append(lin)
        if i < depth:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _layout(n_ctrl: int, n_bits: int, widths: list[int], depth: int) -> dict[str, tuple[int, ...]]:
    """Per-group shapes of the parts of the flat parameter, in order."""
    H, M, S = sum(widths), len(widths), sum(w * w for w in widths)
    parts: dict[str, tuple[int, ...]] = {"w_ctrl": (n_ctrl, H), "w_bits": (n_bits, H), "b_in": (H,)}
    for d in range(depth - 1):
        parts[f"w_hidden{d}"], parts[f"b_hidden{d}"] = (S,), (H,)
    parts["w_out"], parts["b_out"] = (2, H), (2, M)
    return parts


def grid_param_count(n_ctrl: int, n_bits: int, widths: list[int], depth: int) -> int:
    """Numbers in one group of a WidthGrid (= the sum of its models' n_params)."""
    return sum(math.prod(s) for s in _layout(n_ctrl, n_bits, widths, depth).values())


def workspace_bytes(n_bits: int, widths: list[int], depth: int, groups: int, rows: int) -> int:
    """Bytes of a WidthGrid's workspace for `rows`-row chunks (float32): one [G, rows, H] buffer per layer (+1 for
    depth > 1), the logit gap and its gradient [G, M, rows], the chunk's inputs."""
    H, M = sum(widths), len(widths)
    return 4 * groups * rows * (H * (depth + (depth > 1)) + 3 * M + n_bits + 4)


@dataclass
class _Chunk:
    """Buffers for `rows`-row chunks, reused every step, with each model's views made once: h[i] [G, rows, H]
    (one per layer, +1 spare for depth > 1), blocks[i][m] = model m's units of h[i], gap [G, M, rows]."""

    h: list[torch.Tensor]
    blocks: list[list[torch.Tensor]]
    gap: torch.Tensor
    gap_rows: list[torch.Tensor]


@dataclass
class _Step:
    """Views and derived tensors of the current parameters (and gradient), shared by one step's chunks:
    v = w_out[1] - w_out[0] [G, H] (v_rows[m]: model m's [G, 1, w]), the logit-gap bias [G, M, 1], the lookup
    table [G * T, H]."""

    p: dict[str, torch.Tensor]
    dp: dict[str, torch.Tensor] | None
    v: torch.Tensor
    v_rows: list[torch.Tensor]
    gap_bias: torch.Tensor
    table: torch.Tensor | None


class WidthGrid(nn.Module):
    """G groups x M widths of depth-`depth` MLPs (2 logits each) in one flat parameter `flat`.

    Views of `flat` (H = sum(widths), T = n_ctrl control bits, n = n_bits task bits, S = sum(w²)):
    `w_ctrl` [G, T, H] the first layer's control-bit columns (a lookup table: row t feeds subtask t's samples),
    `w_bits` [G, n, H] its task-bit columns (transposed), `b_in` [G, H]; per hidden layer d `w_hidden{d}` [G, S]
    (model m's [w, w] weight, rows = outputs, packed at offset sum_{j<m} w_j²) and `b_hidden{d}` [G, H];
    `w_out` [G, 2, H] (unit h feeds only its own model's 2 logits), `b_out` [G, 2, M].
    Model (g, m) owns hidden units offsets[m]:offsets[m+1] of every layer.

    A training step: `start_step()`, `accumulate_grads(...)` per chunk of the batch, `finish_grads(step)`; the
    gradient lands in `flat.grad` (no autograd graph). The loss is the sum of the models' own losses, so each
    model's gradient is exactly its own, and AdamW, being elementwise, moves every model as if trained alone.
    """

    def __init__(self, n_ctrl: int, n_bits: int, widths: list[int], depth: int, seeds: list[int]):
        super().__init__()
        self.n_ctrl, self.n_bits, self.widths, self.depth = n_ctrl, n_bits, list(widths), depth
        self.n_groups = G = len(seeds)
        self.offsets = np.concatenate([[0], np.cumsum(widths)]).tolist()
        self.sq_offsets = np.concatenate([[0], np.cumsum([w * w for w in widths])]).tolist()
        self.slices = [slice(a, b) for a, b in zip(self.offsets[:-1], self.offsets[1:])]
        self.shapes = _layout(n_ctrl, n_bits, widths, depth)
        self.flat = nn.Parameter(torch.zeros(G * grid_param_count(n_ctrl, n_bits, widths, depth)))
        p = self.views(self.flat.data)
        with torch.no_grad():
            for g, seed in enumerate(seeds):
                for m, w in enumerate(widths):
                    lin = [x for x in init_mlp(n_ctrl + n_bits, w, depth, seed) if isinstance(x, nn.Linear)]
                    sl = self.slices[m]
                    p["w_ctrl"][g, :, sl] = lin[0].weight[:, :n_ctrl].T
                    p["w_bits"][g, :, sl] = lin[0].weight[:, n_ctrl:].T
                    p["b_in"][g, sl] = lin[0].bias
                    for d in range(depth - 1):
                        self.block(p[f"w_hidden{d}"], m)[g] = lin[d + 1].weight
                        p[f"b_hidden{d}"][g, sl] = lin[d + 1].bias
                    p["w_out"][g, :, sl] = lin[-1].weight
                    p["b_out"][g, :, m] = lin[-1].bias
        self._chunks: dict[int, _Chunk] = {}

    # ----------------------------------------------------------------------------------------- layout helpers
    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The named parts of a flat [G * P] tensor (the parameter or its gradient), as views [G, ...]."""
        out, i, G = {}, 0, self.n_groups
        for name, shape in self.shapes.items():
            n = G * math.prod(shape)
            out[name] = flat[i:i + n].view(G, *shape)
            i += n
        return out

    def block(self, packed: torch.Tensor, m: int) -> torch.Tensor:
        """Model m's [G, w, w] hidden weight inside a packed [G, S] tensor (a view)."""
        w = self.widths[m]
        return packed[:, self.sq_offsets[m]:self.sq_offsets[m + 1]].view(-1, w, w)

    def _chunk(self, rows: int) -> _Chunk:
        ch = self._chunks.get(rows)
        if ch is None:
            if len(self._chunks) >= 3:  # training's chunk, its last chunk, evaluation's chunk
                self._chunks.clear()
            G, H, M, dev = self.n_groups, sum(self.widths), len(self.widths), self.flat.device
            h = [torch.empty(G, rows, H, device=dev) for _ in range(self.depth + (self.depth > 1))]
            gap = torch.empty(G, M, rows, device=dev)
            ch = _Chunk(h, [[x[:, :, sl] for sl in self.slices] for x in h], gap, [gap[:, m:m + 1] for m in range(M)])
            self._chunks[rows] = ch
        return ch

    def workspaces(self) -> list[_Chunk]:
        """The chunk workspaces held now (a captured CUDA graph keeps them referenced: `_chunk` may drop them)."""
        return list(self._chunks.values())

    def _table_rows(self, task: torch.Tensor) -> torch.Tensor:
        """Row of the [G * T, H] lookup table of each sample: task [G, c] -> [G * c]."""
        return (task + (torch.arange(self.n_groups, device=task.device) * self.n_ctrl)[:, None]).reshape(-1)

    @torch.no_grad()
    def start_step(self, with_grad: bool = True) -> _Step:
        """The current parameters' views for a step's chunks; with_grad: also zero the gradient and view it."""
        dp = None
        if with_grad:
            if self.flat.grad is None:
                self.flat.grad = torch.zeros_like(self.flat)
            else:
                self.flat.grad.zero_()
            dp = self.views(self.flat.grad)
        p = self.views(self.flat.data)
        v = p["w_out"][:, 1] - p["w_out"][:, 0]
        table = None
        if self.n_ctrl:  # the control-bit column of subtask t plus the bias: the first layer of subtask t's samples
            table = (p["w_ctrl"] + p["b_in"][:, None, :]).view(-1, v.shape[1])
        return _Step(p, dp, v, [v[:, None, sl] for sl in self.slices],
                     (p["b_out"][:, 1] - p["b_out"][:, 0])[:, :, None], table)

    # ------------------------------------------------------------------------------------------- forward
    @torch.no_grad()
    def logit_gap(self, task: torch.Tensor, bits: torch.Tensor, step: _Step | None = None,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
        """z1 - z0 of every model: task [G, c] int64 (or [c], shared by the groups), bits [G, c, n] or [c, n]
        float32 -> [G, M, c] (a workspace buffer: valid until the next call). Leaves each layer's post-ReLU
        activations in the workspace."""
        G, c = self.n_groups, task.shape[-1]
        st = self.start_step(with_grad=False) if step is None else step
        ch = self._chunk(c)
        h = ch.h
        if self.n_ctrl:
            rows = self._table_rows(task.expand(G, c)) if rows is None else rows
            torch.index_select(st.table, 0, rows, out=h[0].view(G * c, -1))
        else:
            h[0].copy_(st.p["b_in"][:, None, :].expand_as(h[0]))
        h[0].baddbmm_(bits.expand(G, c, -1), st.p["w_bits"]).relu_()
        for d in range(1, self.depth):
            h[d].copy_(st.p[f"b_hidden{d - 1}"][:, None, :].expand_as(h[d]))
            for m, (out, inp) in enumerate(zip(ch.blocks[d], ch.blocks[d - 1])):
                out.baddbmm_(inp, self.block(st.p[f"w_hidden{d - 1}"], m).transpose(1, 2))
            h[d].relu_()
        for v_m, h_m, gap_m in zip(st.v_rows, ch.blocks[self.depth - 1], ch.gap_rows):
            torch.bmm(v_m, h_m.transpose(1, 2), out=gap_m)
        return ch.gap.add_(st.gap_bias)

    @torch.no_grad()
    def per_sample_loss(self, task: torch.Tensor, bits: torch.Tensor, y: torch.Tensor, step: _Step | None = None
                        ) -> torch.Tensor:
        """Cross-entropy (nats) of every model on every sample: [G, M, c] (task, bits, step as in `logit_gap`;
        y [c] or [G, c] int64). Two-class CE = softplus((1 - 2y)·gap)."""
        sign = 1.0 - 2.0 * y.to(torch.float32)
        gap = self.logit_gap(task, bits, step)
        return F.softplus(gap.mul_(sign[:, None, :] if sign.dim() == 2 else sign))

    # ------------------------------------------------------------------------------------------ backward
    @torch.no_grad()
    def accumulate_grads(self, task: torch.Tensor, bits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                         step: _Step) -> torch.Tensor:
        """Add one chunk's share of d(sum over models of each model's weighted mean loss) to `flat.grad`.

        task [G, c] int64 (sorted within each group makes the row scatter-add cache-friendly), bits [G, c, n]
        float32, y [G, c] int64, weight [G, c] float32: each sample's weight in its group's mean (a group's
        weights over the whole batch sum to 1); step from `start_step()`. Until `finish_grads`, the gradient of
        the layer under the output holds its D-sums (module docstring), not yet scaled by v. Returns the chunk's
        share of every model's loss [G, M] (nats).
        """
        G, c, L, dp = self.n_groups, task.shape[1], self.depth, step.dp
        rows = self._table_rows(task) if self.n_ctrl else None
        sign = (1.0 - 2.0 * y.to(torch.float32))[:, None, :]  # [G, 1, c]
        z = self.logit_gap(task, bits, step, rows).mul_(sign)  # [G, M, c]
        loss = (F.softplus(z) * weight[:, None, :]).sum(-1)
        g_gap = torch.sigmoid(z).mul_(sign).mul_(weight[:, None, :])  # d loss / d gap
        db = g_gap.sum(-1)
        dp["b_out"][:, 1] += db
        dp["b_out"][:, 0] -= db
        ch = self._chunk(c)
        ch.h[L - 1].sign_()  # in place: 1[h > 0] (h >= 0), then times each model's d loss / d gap: D
        for D_m, g_m in zip(ch.blocks[L - 1], g_gap.unsqueeze(-1).unbind(1)):
            D_m.mul_(g_m)
        grad = L - 1  # index of the buffer holding d loss / d pre-activation (for layer L - 1: D, unscaled)
        for d in range(L - 1, 0, -1):
            dwd = dp[f"w_hidden{d - 1}"]
            dp[f"b_hidden{d - 1}"] += ch.h[grad].sum(1)
            out = L if grad != L else d  # a free buffer: the spare, or layer d's activations (no longer needed)
            for m, (g_m, prev_m, out_m) in enumerate(zip(ch.blocks[grad], ch.blocks[d - 1], ch.blocks[out])):
                self.block(dwd, m).baddbmm_(g_m.transpose(1, 2), prev_m)
                wm = self.block(step.p[f"w_hidden{d - 1}"], m)
                if d == L - 1:  # the true gradient is D·v: fold v into the weight (w x w, not rows x w)
                    wm = wm * step.v_rows[m].transpose(1, 2)
                torch.bmm(g_m, wm, out=out_m)
            torch.ops.aten.threshold_backward.grad_input(ch.h[out], ch.h[d - 1], 0.0, grad_input=ch.h[out])
            grad = out
        dp["w_bits"].baddbmm_(bits.transpose(1, 2), ch.h[grad])
        if self.n_ctrl:
            dp["w_ctrl"].view(G * self.n_ctrl, -1).index_add_(0, rows, ch.h[grad].view(G * c, -1))
        else:
            dp["b_in"] += ch.h[grad].sum(1)
        return loss

    @torch.no_grad()
    def finish_grads(self, step: _Step) -> None:
        """After the step's chunks: scale the D-sums of the layer under the output by v, derive dL/dv from them,
        and the first-layer bias gradient from the lookup table's (every sample looks up one row)."""
        p, dp, v = step.p, step.dp, step.v
        if self.depth == 1:
            dv = (p["w_bits"] * dp["w_bits"]).sum(1)
            if self.n_ctrl:
                dv += (step.table.view_as(dp["w_ctrl"]) * dp["w_ctrl"]).sum(1)
                dp["w_ctrl"].mul_(v[:, None, :])
            else:
                dv += p["b_in"] * dp["b_in"]
                dp["b_in"].mul_(v)
            dp["w_bits"].mul_(v[:, None, :])
        else:
            d = self.depth - 2
            wd, dwd, dbd = p[f"w_hidden{d}"], dp[f"w_hidden{d}"], dp[f"b_hidden{d}"]
            dv = p[f"b_hidden{d}"] * dbd
            for m, sl in enumerate(self.slices):  # rows of model m's block: its units
                wm, dwm = self.block(wd, m), self.block(dwd, m)
                dv[:, sl] += (wm * dwm).sum(2)
                dwm.mul_(v[:, sl, None])
            dbd.mul_(v)
        dp["w_out"][:, 1] = dv
        dp["w_out"][:, 0] = -dv
        if self.n_ctrl:
            dp["b_in"].copy_(dp["w_ctrl"].sum(1))

    # ------------------------------------------------------------------------------------------- export
    def model_state(self, g: int, m: int) -> dict[str, torch.Tensor]:
        """Model (g, m)'s parameters as the state_dict of its reference nn.Sequential (init_mlp)."""
        p, sl = self.views(self.flat.data), self.slices[m]
        first = torch.cat([p["w_ctrl"][g, :, sl], p["w_bits"][g, :, sl]], dim=0).T
        out, li = {"0.weight": first, "0.bias": p["b_in"][g, sl]}, 2
        for d in range(self.depth - 1):
            out[f"{li}.weight"], out[f"{li}.bias"] = self.block(p[f"w_hidden{d}"], m)[g], p[f"b_hidden{d}"][g, sl]
            li += 2
        out[f"{li}.weight"], out[f"{li}.bias"] = p["w_out"][g, :, sl], p["b_out"][g, :, m]
        return {k: v.detach().cpu().clone().contiguous() for k, v in out.items()}
