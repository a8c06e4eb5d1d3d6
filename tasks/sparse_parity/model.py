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


class WidthGrid(nn.Module):
    """G groups x M widths of depth-`depth` MLPs (2 logits each) in one flat parameter `flat`.

    Views of `flat` (H = sum(widths), T = n_ctrl control bits, n = n_bits task bits, S = sum(w²)):
    `w_ctrl` [G, T, H] the first layer's control-bit columns (a lookup table: row t feeds subtask t's samples),
    `w_bits` [G, n, H] its task-bit columns (transposed), `b_in` [G, H]; per hidden layer d `w_hidden{d}` [G, S]
    (model m's [w, w] weight, rows = outputs, packed at offset sum_{j<m} w_j²) and `b_hidden{d}` [G, H];
    `w_out` [G, 2, H] (unit h feeds only its own model's 2 logits), `b_out` [G, 2, M].
    Model (g, m) owns hidden units offsets[m]:offsets[m+1] of every layer.

    Gradients are written into `flat.grad` by `accumulate_grads` + `finish_grads` (no autograd graph). The loss
    is the sum of the models' own losses, so each model's gradient is exactly its own, and AdamW, being
    elementwise, moves every model as if it were trained alone.
    """

    def __init__(self, n_ctrl: int, n_bits: int, widths: list[int], depth: int, seeds: list[int]):
        super().__init__()
        self.n_ctrl, self.n_bits, self.widths, self.depth = n_ctrl, n_bits, list(widths), depth
        self.n_groups = G = len(seeds)
        self.offsets = np.concatenate([[0], np.cumsum(widths)]).tolist()
        self.sq_offsets = np.concatenate([[0], np.cumsum([w * w for w in widths])]).tolist()
        self.shapes = _layout(n_ctrl, n_bits, widths, depth)
        self.flat = nn.Parameter(torch.zeros(G * grid_param_count(n_ctrl, n_bits, widths, depth)))
        p = self.views(self.flat.data)
        with torch.no_grad():
            for g, seed in enumerate(seeds):
                for m, w in enumerate(widths):
                    lin = [x for x in init_mlp(n_ctrl + n_bits, w, depth, seed) if isinstance(x, nn.Linear)]
                    sl = self.unit_slice(m)
                    p["w_ctrl"][g, :, sl] = lin[0].weight[:, :n_ctrl].T
                    p["w_bits"][g, :, sl] = lin[0].weight[:, n_ctrl:].T
                    p["b_in"][g, sl] = lin[0].bias
                    for d in range(depth - 1):
                        self.block(p[f"w_hidden{d}"], m)[g] = lin[d + 1].weight
                        p[f"b_hidden{d}"][g, sl] = lin[d + 1].bias
                    p["w_out"][g, :, sl] = lin[-1].weight
                    p["b_out"][g, :, m] = lin[-1].bias
        self._ws: dict[int, list[torch.Tensor]] = {}

    # ----------------------------------------------------------------------------------------- layout helpers
    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The named parts of a flat [G * P] tensor (the parameter or its gradient), as views [G, ...]."""
        out, i, G = {}, 0, self.n_groups
        for name, shape in self.shapes.items():
            n = G * math.prod(shape)
            out[name] = flat[i:i + n].view(G, *shape)
            i += n
        return out

    def unit_slice(self, m: int) -> slice:
        return slice(self.offsets[m], self.offsets[m + 1])

    def block(self, packed: torch.Tensor, m: int) -> torch.Tensor:
        """Model m's [G, w, w] hidden weight inside a packed [G, S] tensor (a view)."""
        w = self.widths[m]
        return packed[:, self.sq_offsets[m]:self.sq_offsets[m + 1]].view(-1, w, w)

    def _workspace(self, rows: int) -> list[torch.Tensor]:
        """[G, rows, H] buffers: one per layer (+1 for depth > 1), reused every step."""
        ws = self._ws.get(rows)
        if ws is None:
            if len(self._ws) >= 3:  # training's chunk, its last chunk, evaluation's chunk
                self._ws.clear()
            n = self.depth + (self.depth > 1)
            ws = [torch.empty(self.n_groups, rows, sum(self.widths), device=self.flat.device) for _ in range(n)]
            self._ws[rows] = ws
        return ws

    def _group_rows(self, task: torch.Tensor) -> torch.Tensor:
        """Row of the [G * T, H] lookup table of each sample: task [G, c] -> [G * c]."""
        return (task + (torch.arange(self.n_groups, device=task.device) * self.n_ctrl)[:, None]).reshape(-1)

    def lookup_table(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """[G, T, H]: the first layer's control-bit column of subtask t plus its bias."""
        return p["w_ctrl"] + p["b_in"][:, None, :]

    # ------------------------------------------------------------------------------------------- forward
    @torch.no_grad()
    def logit_gap(self, task: torch.Tensor, bits: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """z1 - z0 of every model: task [G, c] int64 (or [c], shared by the groups), bits [G, c, n] or [c, n]
        float32 -> [G, M, c]. Leaves each layer's post-ReLU activations in the workspace."""
        G, M, c = self.n_groups, len(self.widths), task.shape[-1]
        p = self.views(self.flat.data)
        h = self._workspace(c)
        if self.n_ctrl:
            table = self.lookup_table(p) if table is None else table
            torch.index_select(table.view(G * self.n_ctrl, -1), 0, self._group_rows(task.expand(G, c)),
                               out=h[0].view(G * c, -1))
        else:
            h[0].copy_(p["b_in"][:, None, :].expand_as(h[0]))
        h[0].baddbmm_(bits.expand(G, c, -1), p["w_bits"]).relu_()
        for d in range(1, self.depth):
            h[d].copy_(p[f"b_hidden{d - 1}"][:, None, :].expand_as(h[d]))
            for m in range(M):
                sl = self.unit_slice(m)
                h[d][:, :, sl].baddbmm_(h[d - 1][:, :, sl], self.block(p[f"w_hidden{d - 1}"], m).transpose(1, 2))
            h[d].relu_()
        v = p["w_out"][:, 1] - p["w_out"][:, 0]  # [G, H]
        gap = torch.empty(G, M, c, device=h[0].device)
        last = h[self.depth - 1]
        for m in range(M):
            sl = self.unit_slice(m)
            torch.bmm(v[:, None, sl], last[:, :, sl].transpose(1, 2), out=gap[:, m:m + 1])
        gap += (p["b_out"][:, 1] - p["b_out"][:, 0])[:, :, None]
        return gap

    @torch.no_grad()
    def per_sample_loss(self, task: torch.Tensor, bits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (nats) of every model on every sample: [G, M, c] (task, bits as in `logit_gap`; y [c] or
        [G, c] int64). Two-class CE = softplus((1 - 2y)·gap)."""
        sign = 1.0 - 2.0 * y.to(torch.float32)
        gap = self.logit_gap(task, bits)
        return F.softplus(gap.mul_(sign[:, None, :] if sign.dim() == 2 else sign))

    # ------------------------------------------------------------------------------------------ backward
    @torch.no_grad()
    def start_grads(self) -> torch.Tensor:
        """Zero the gradient for a new step; returns the [G, T, H] lookup table the step's chunks share."""
        if self.flat.grad is None:
            self.flat.grad = torch.zeros_like(self.flat)
        else:
            self.flat.grad.zero_()
        return self.lookup_table(self.views(self.flat.data))

    @torch.no_grad()
    def accumulate_grads(self, task: torch.Tensor, bits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                         table: torch.Tensor) -> torch.Tensor:
        """Add one chunk's share of d(sum over models of each model's weighted mean loss) to `flat.grad`.

        task [G, c] int64 (sorted within each group makes the row scatter-add cache-friendly), bits [G, c, n]
        float32, y [G, c] int64, weight [G, c] float32: each sample's weight in its group's mean (a group's
        weights over the whole batch sum to 1); table from `start_grads`. Until `finish_grads`, the gradient of
        the layer under the output holds its D-sums (module docstring), not yet scaled by v. Returns the chunk's
        share of every model's loss [G, M] (nats).
        """
        G, M, c, L = self.n_groups, len(self.widths), task.shape[1], self.depth
        p, dp = self.views(self.flat.data), self.views(self.flat.grad)
        sign = (1.0 - 2.0 * y.to(torch.float32))[:, None, :]  # [G, 1, c]
        z = self.logit_gap(task, bits, table).mul_(sign)  # [G, M, c]
        loss = (F.softplus(z) * weight[:, None, :]).sum(-1)
        g_gap = torch.sigmoid(z).mul_(sign).mul_(weight[:, None, :])  # d loss / d gap
        db = g_gap.sum(-1)
        dp["b_out"][:, 1] += db
        dp["b_out"][:, 0] -= db
        h = self._workspace(c)
        D = h[L - 1].sign_()  # in place: 1[h > 0] (h >= 0), then times each model's d loss / d gap
        for m in range(M):
            D[:, :, self.unit_slice(m)].mul_(g_gap[:, m, :, None])
        v = p["w_out"][:, 1] - p["w_out"][:, 0]
        grad = D  # d loss / d pre-activation of layer d (for d = L - 1: D, still to be scaled by v)
        for d in range(L - 1, 0, -1):
            wd, dwd = p[f"w_hidden{d - 1}"], dp[f"w_hidden{d - 1}"]
            dp[f"b_hidden{d - 1}"] += grad.sum(1)
            prev, dprev = h[d - 1], h[L] if grad is not h[L] else h[d]
            for m in range(M):
                sl, wm = self.unit_slice(m), self.block(wd, m)
                self.block(dwd, m).baddbmm_(grad[:, :, sl].transpose(1, 2), prev[:, :, sl])
                if d == L - 1:  # the true gradient is D·v: fold v into the weight (w x w, not rows x w)
                    wm = wm * v[:, self.unit_slice(m), None]
                torch.bmm(grad[:, :, sl], wm, out=dprev[:, :, sl])
            torch.ops.aten.threshold_backward.grad_input(dprev, prev, 0.0, grad_input=dprev)
            grad = dprev
        dp["w_bits"].baddbmm_(bits.transpose(1, 2), grad)
        if self.n_ctrl:
            dp["w_ctrl"].view(G * self.n_ctrl, -1).index_add_(0, self._group_rows(task), grad.view(G * c, -1))
        else:
            dp["b_in"] += grad.sum(1)
        return loss

    @torch.no_grad()
    def finish_grads(self, table: torch.Tensor) -> None:
        """After the step's chunks: scale the D-sums of the layer under the output by v, derive dL/dv from them,
        and the first-layer bias gradient from the lookup table's (every sample looks up one row)."""
        p, dp = self.views(self.flat.data), self.views(self.flat.grad)
        v = p["w_out"][:, 1] - p["w_out"][:, 0]  # [G, H]
        if self.depth == 1:
            dv = (p["w_bits"] * dp["w_bits"]).sum(1)
            if self.n_ctrl:
                dv += (table * dp["w_ctrl"]).sum(1)
                dp["w_ctrl"].mul_(v[:, None, :])
            else:
                dv += p["b_in"] * dp["b_in"]
                dp["b_in"].mul_(v)
            dp["w_bits"].mul_(v[:, None, :])
        else:
            d = self.depth - 2
            wd, dwd, bd, dbd = p[f"w_hidden{d}"], dp[f"w_hidden{d}"], p[f"b_hidden{d}"], dp[f"b_hidden{d}"]
            dv = bd * dbd
            for m in range(len(self.widths)):  # rows of model m's block: its units
                sl, wm, dwm = self.unit_slice(m), self.block(wd, m), self.block(dwd, m)
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
        p, sl = self.views(self.flat.data), self.unit_slice(m)
        first = torch.cat([p["w_ctrl"][g, :, sl], p["w_bits"][g, :, sl]], dim=0).T
        out, li = {"0.weight": first, "0.bias": p["b_in"][g, sl]}, 2
        for d in range(self.depth - 1):
            out[f"{li}.weight"], out[f"{li}.bias"] = self.block(p[f"w_hidden{d}"], m)[g], p[f"b_hidden{d}"][g, sl]
            li += 2
        out[f"{li}.weight"], out[f"{li}.bias"] = p["w_out"][g, :, sl], p["b_out"][g, :, m]
        return {k: v.detach().cpu().clone().contiguous() for k, v in out.items()}
