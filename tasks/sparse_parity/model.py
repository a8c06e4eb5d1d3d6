"""The models of a sparse-parity training grid: one-hidden-layer (or deeper) ReLU MLPs, alone or many as one network.

- `init_mlp` is the reference single model (an `nn.Sequential` with torch's default Linear init from its own seed);
- `WidthGrid` holds G groups x M widths as stacked, block-structured parameters whose forward pass equals running
  each reference model on its own inputs (tests compare them).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def n_params(in_dim: int, width: int, depth: int, n_out: int = 2) -> int:
    return in_dim * width + width + (depth - 1) * (width * width + width) + width * n_out + n_out


def model_seed(seed: int, width: int) -> int:
    return (seed * 1_000_003 + width * 7919 + 17) % (2**31 - 1)


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



class WidthGrid(nn.Module):
    """G groups x M widths of depth-`depth` MLPs, as stacked block-structured parameters.

    Shapes (H = sum(widths)): first layer W [G, H, in], b [G, H]; hidden layers W [G, H, H] (block-diagonal
    mask), b [G, H]; output W [G, H, 2] (each hidden unit feeds only its own model's 2 logits), b [G, M, 2].
    forward(task [G, B], bits [G, B, n_bits]) -> logits [G, B, M, 2]. The input's first `n_ctrl` dims are the
    one-hot control bits, so the first layer's control part is a row lookup (index, not a dense matmul): the same
    function as the dense layer, with n_ctrl/(n_ctrl + n_bits) of its cost removed.
    """

    def __init__(self, in_dim: int, widths: list[int], depth: int, seeds: list[int], n_ctrl: int = 0):
        super().__init__()
        self.n_ctrl = n_ctrl
        self.widths = list(widths)
        self.depth = depth
        G, H, M = len(seeds), sum(widths), len(widths)
        owner = torch.repeat_interleave(torch.arange(M), torch.tensor(widths))  # hidden unit -> model
        self.register_buffer("owner_onehot", F.one_hot(owner, M).float())  # [H, M]
        self.register_buffer("block_mask", (owner[:, None] == owner[None, :]).float())  # [H, H]
        self.offsets = np.concatenate([[0], np.cumsum(widths)]).tolist()
        W = [torch.zeros(G, H, in_dim)] + [torch.zeros(G, H, H) for _ in range(depth - 1)]
        b = [torch.zeros(G, H) for _ in range(depth)]
        Wo, bo = torch.zeros(G, H, 2), torch.zeros(G, M, 2)
        for g, seed in enumerate(seeds):
            for m, w in enumerate(widths):
                ref = init_mlp(in_dim, w, depth, seed)
                lin = [l for l in ref if isinstance(l, nn.Linear)]
                sl = slice(self.offsets[m], self.offsets[m + 1])
                with torch.no_grad():
                    W[0][g, sl] = lin[0].weight
                    b[0][g, sl] = lin[0].bias
                    for d in range(1, depth):
                        W[d][g, sl, sl] = lin[d].weight
                        b[d][g, sl] = lin[d].bias
                    Wo[g, sl] = lin[-1].weight.T
                    bo[g, m] = lin[-1].bias
        self.W = nn.ParameterList([nn.Parameter(w) for w in W])
        self.b = nn.ParameterList([nn.Parameter(x) for x in b])
        self.Wo, self.bo = nn.Parameter(Wo), nn.Parameter(bo)

    def forward(self, task: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        G = task.shape[0]
        W0 = self.W[0]
        pre = torch.baddbmm(self.b[0].unsqueeze(1), bits, W0[:, :, self.n_ctrl:].transpose(1, 2))
        if self.n_ctrl:  # one-hot input = row lookup; F.embedding's backward is a fast index_add
            ctrl = W0[:, :, :self.n_ctrl].transpose(1, 2).reshape(G * self.n_ctrl, -1)  # [G * n_ctrl, H]
            offset = (torch.arange(G, device=task.device) * self.n_ctrl)[:, None]
            pre = pre + F.embedding(task + offset, ctrl)
        h = torch.relu(pre)
        for d in range(1, self.depth):
            h = torch.relu(torch.baddbmm(self.b[d].unsqueeze(1), h, (self.W[d] * self.block_mask).transpose(1, 2)))
        # [G, H, M*2]: unit h contributes only to its own model's logits
        wo = (self.Wo.unsqueeze(2) * self.owner_onehot[None, :, :, None]).flatten(2)
        B = task.shape[1]
        return torch.bmm(h, wo).view(G, B, len(self.widths), 2) + self.bo.unsqueeze(1)

    def model_state(self, g: int, m: int) -> dict[str, torch.Tensor]:
        """Model (g, m)'s parameters as the state_dict of its reference nn.Sequential (init_mlp)."""
        sl = slice(self.offsets[m], self.offsets[m + 1])
        out, li = {}, 0
        for d in range(self.depth):
            w = self.W[d][g, sl] if d == 0 else self.W[d][g, sl, sl]
            out[f"{li}.weight"], out[f"{li}.bias"] = w.detach().cpu().clone(), self.b[d][g, sl].detach().cpu().clone()
            li += 2
        out[f"{li}.weight"] = self.Wo[g, sl].T.detach().cpu().clone()
        out[f"{li}.bias"] = self.bo[g, m].detach().cpu().clone()
        return out
