"""Training grids of one-hidden-layer (or deeper) ReLU MLPs on multitask sparse parity.

Many models train as one computation:
- *widths side by side*: all widths of a group see the same batch, so their hidden units are concatenated into one
  wide layer (the output layer and deeper layers are block-diagonal, so no unit of one model feeds another);
- *groups stacked*: groups that differ in data (finite training set size D, seed) have equal shape, so their
  parameters are stacked on a leading axis and run with batched matmuls (the same computation as
  `torch.func.stack_module_state` + `vmap`, written out with `torch.baddbmm`).
The loss is the sum of every model's own mean loss, so each model's gradient is exactly its own, and AdamW is
elementwise: every model follows the trajectory it would follow trained alone (`train_single` is that reference;
tests compare them). Per-step cost is one wide network instead of len(widths) x len(groups) small ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tasks.sparse_parity import SparseParitySpec, Sampler, encode

LN2 = math.log(2.0)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("grid.device = 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(device)


def _use_tensor_cores(device: torch.device) -> None:
    """On CUDA, float32 matmuls may use TF32 tensor cores (~1e-3 relative error, far below seed-to-seed noise)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def log_steps(steps: int, n_points: int) -> np.ndarray:
    """Log-spaced, distinct steps in [1, steps], always including `steps`."""
    s = np.unique(np.round(np.geomspace(1, steps, n_points)).astype(np.int64))
    return s


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


@dataclass
class Group:
    """Models that share batches: one data stream (fresh samples if `data` is None, else a finite set)."""

    seed: int
    data_size: int = -1  # -1: fresh samples every step
    data: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (task, bits, label) of the training set


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


@dataclass
class GridResult:
    steps: np.ndarray  # [S] logged steps
    loss_bits: np.ndarray  # [G, M, S, T] per-subtask test loss, bits
    mean_loss_bits: np.ndarray  # [G, M, S] Zipf-weighted mean test loss, bits
    widths: list[int]
    groups: list[Group]
    n_params: list[int]
    states: list[list[dict]] = field(default_factory=list)  # [G][M] final parameters (if asked)


class _GroupBatches:
    """Per-group batch streams, each with its own generator: a group's batches do not depend on other groups."""

    def __init__(self, spec: SparseParitySpec, groups: list[Group], batch_size: int, device: torch.device):
        self.spec, self.batch_size, self.device = spec, batch_size, device
        self.samplers = [Sampler(spec, seed=7_777_777 + 131 * g.seed + g.data_size, device=device) for g in groups]
        self.sets = []
        for g in groups:
            if g.data is None:
                self.sets.append(None)
            else:
                t, bits, y = (torch.as_tensor(a, device=device) for a in g.data)
                self.sets.append((t.long(), bits.to(torch.uint8), y.long()))

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """task [G, B] int64, bits [G, B, n_bits] float32, y [G, B] int64, weight [G, B] float32 (0 pads small
        full-batch sets)."""
        ts, bs, ys, ws = [], [], [], []
        B = self.batch_size
        for sampler, data in zip(self.samplers, self.sets):
            w = torch.ones(B, device=self.device)
            if data is None:
                t, bits, y = sampler.sample(B)
            else:
                n = data[0].shape[0]
                if n <= B:  # the whole set every step (full batch), padded to B with zero weight
                    idx = torch.arange(B, device=self.device) % n
                    w[n:] = 0.0
                else:  # a minibatch without replacement
                    idx = torch.randperm(n, generator=sampler.gen, device=self.device)[:B]
                t, bits, y = data[0][idx], data[1][idx], data[2][idx]
            ts.append(t)
            bs.append(bits)
            ys.append(y)
            ws.append(w)
        return torch.stack(ts), torch.stack(bs).float(), torch.stack(ys), torch.stack(ws)


@torch.no_grad()
def evaluate(net: WidthGrid, spec: SparseParitySpec, eval_data, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-subtask test loss (bits) [G, M, T] and Zipf-weighted mean [G, M] on a fixed eval set."""
    t, bits, y = eval_data
    G, M, T = net.W[0].shape[0], len(net.widths), spec.n_tasks
    sums = torch.zeros(G, M, T, device=t.device, dtype=torch.float64)
    for i in range(0, t.shape[0], chunk):
        tt, bb = t[i:i + chunk], bits[i:i + chunk].float()
        b = tt.shape[0]
        logits = net(tt.unsqueeze(0).expand(G, -1), bb.unsqueeze(0).expand(G, -1, -1))  # [G, b, M, 2]
        ce = F.cross_entropy(logits.reshape(-1, 2), y[i:i + chunk].view(1, b, 1).expand(G, b, M).reshape(-1),
                             reduction="none")
        ce = ce.view(G, b, M).permute(0, 2, 1).double()  # [G, M, b]
        sums.index_add_(2, t[i:i + chunk], ce)
    counts = torch.bincount(t, minlength=T).double().clamp(min=1)
    per_task = (sums / counts / LN2).float()
    probs = torch.as_tensor(spec.probs, device=t.device, dtype=torch.float64)
    mean = (per_task.double() * probs).sum(-1).float()
    return per_task, mean


def train_grid(spec: SparseParitySpec, widths: list[int], groups: list[Group], *, depth: int = 1, steps: int,
               batch_size: int, lr: float, weight_decay: float, log_at: np.ndarray, eval_data,
               device: str | torch.device = "cpu", keep_states: bool = False,
               progress=None) -> GridResult:
    """Train every (group, width) model for `steps` AdamW steps; log test losses at the steps in `log_at`.

    eval_data: (task, bits, label) tensors (see sparse_parity.eval_set), on any device.
    Returns per-subtask and mean test losses in bits, [G, M, S, T] and [G, M, S].
    """
    device = torch.device(device)
    _use_tensor_cores(device)
    net = WidthGrid(spec.input_dim, widths, depth, [g.seed for g in groups], n_ctrl=spec.n_tasks).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    batches = _GroupBatches(spec, groups, batch_size, device)
    eval_data = tuple(a.to(device) for a in eval_data)
    log_at = np.asarray(log_at, dtype=np.int64)
    G, M, S, T = len(groups), len(widths), len(log_at), spec.n_tasks
    loss_bits = np.zeros((G, M, S, T), dtype=np.float32)
    mean_bits = np.zeros((G, M, S), dtype=np.float32)
    li = 0
    for step in range(1, steps + 1):
        task, bits, y, w = batches.next()
        logits = net(task, bits)  # [G, B, M, 2]
        B = task.shape[1]
        ce = F.cross_entropy(logits.reshape(-1, 2), y.unsqueeze(-1).expand(G, B, M).reshape(-1), reduction="none")
        ce = ce.view(G, B, M)
        # each model's own (weighted) mean loss; summed, so gradients stay disjoint per model
        loss = ((ce * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if li < S and step == log_at[li]:
            per_task, mean = evaluate(net, spec, eval_data)
            loss_bits[:, :, li] = per_task.cpu().numpy()
            mean_bits[:, :, li] = mean.cpu().numpy()
            li += 1
            if progress is not None:
                progress(step, mean_bits[:, :, li - 1])
    states = [[net.model_state(g, m) for m in range(M)] for g in range(G)] if keep_states else []
    return GridResult(log_at, loss_bits, mean_bits, list(widths), list(groups),
                      [n_params(spec.input_dim, w, depth) for w in widths], states)


def train_single(spec: SparseParitySpec, width: int, group: Group, *, depth: int = 1, steps: int, batch_size: int,
                 lr: float, weight_decay: float, log_at: np.ndarray, eval_data, device="cpu"):
    """Reference: one nn.Sequential trained alone on the same batches and init as in `train_grid`.
    Returns (mean_loss_bits [S], per-task loss bits [S, T], final state_dict)."""
    device = torch.device(device)
    model = init_mlp(spec.input_dim, width, depth, group.seed).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    batches = _GroupBatches(spec, [group], batch_size, device)
    eval_data = tuple(a.to(device) for a in eval_data)
    probs = torch.as_tensor(spec.probs, device=device, dtype=torch.float64)
    means, per = [], []
    li = 0
    for step in range(1, steps + 1):
        task, bits, y, w = batches.next()
        ce = F.cross_entropy(model(encode(task[0], bits[0], spec.n_tasks)), y[0], reduction="none")
        loss = (ce * w[0]).sum() / w[0].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if li < len(log_at) and step == log_at[li]:
            with torch.no_grad():
                t, bits, yy = eval_data
                ce = F.cross_entropy(model(encode(t, bits, spec.n_tasks)), yy, reduction="none").double()
                sums = torch.zeros(spec.n_tasks, dtype=torch.float64, device=device).index_add_(0, t, ce)
                pt = sums / torch.bincount(t, minlength=spec.n_tasks).double().clamp(min=1) / LN2
                per.append(pt.float().cpu().numpy())
                means.append(float((pt * probs).sum()))
            li += 1
    return np.array(means, dtype=np.float32), np.stack(per), {k: v.detach().cpu() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------ Prefect task
def _train_params(grid) -> dict:
    """The grid fields that affect training (not, e.g., the learned threshold): the shard's cache inputs."""
    keys = ("widths", "depth", "steps", "batch_size", "lr", "weight_decay", "log_points",
            "eval_samples_per_task", "device")
    return {k: getattr(grid, k) for k in keys}


def _train_shard_body(spec_ref, groups: list[tuple[int, int]], train_set_refs: list, params: dict,
                      store: str):
    from prefect import get_run_logger

    from storage import Store
    from tasks.sparse_parity import eval_set, load_spec

    st = Store(store)
    spec = load_spec(st, spec_ref)
    device = resolve_device(params["device"])
    group_objs = []
    for (data_size, seed), ref in zip(groups, train_set_refs):
        data = None
        if ref is not None:
            arrays, _ = st.read_zarr(ref)
            data = (arrays["task"], arrays["bits"], arrays["label"])
        group_objs.append(Group(seed=seed, data_size=data_size, data=data))
    log_at = log_steps(params["steps"], params["log_points"])
    ev = eval_set(spec, params["eval_samples_per_task"], seed=spec.seed, device=device)
    try:
        logger = get_run_logger()
    except Exception:  # outside a run
        logger = None

    def progress(step, mean):
        if logger is not None:
            logger.info("step %d/%d: mean test loss (bits) per width, group 0: %s", step, params["steps"],
                        " ".join(f"{v:.3f}" for v in mean[0]))

    res = train_grid(spec, params["widths"], group_objs, depth=params["depth"], steps=params["steps"],
                     batch_size=params["batch_size"], lr=params["lr"], weight_decay=params["weight_decay"],
                     log_at=log_at, eval_data=ev, device=device, progress=progress)
    G, M = len(group_objs), len(params["widths"])
    arrays = {
        "steps": res.steps.astype(np.int64),
        "loss_bits": res.loss_bits.reshape(G * M, len(res.steps), spec.n_tasks),
        "mean_loss_bits": res.mean_loss_bits.reshape(G * M, len(res.steps)),
        "width": np.tile(np.asarray(params["widths"], dtype=np.int64), G),
        "n_params": np.tile(np.asarray(res.n_params, dtype=np.int64), G),
        "data_size": np.repeat(np.asarray([g[0] for g in groups], dtype=np.int64), M),
        "seed": np.repeat(np.asarray([g[1] for g in groups], dtype=np.int64), M),
        "alpha": np.full(G * M, spec.alpha, dtype=np.float64),
    }
    attrs = {"depth": params["depth"], "lr": params["lr"], "batch_size": params["batch_size"],
             "device": str(device.type)}
    inputs = [spec_ref] + [r for r in train_set_refs if r is not None]
    return st.write_zarr("sparse_parity.curves", arrays, attrs, inputs=inputs,
                         params={**params, "groups": groups})


from tasks.base import quanta_task  # noqa: E402


@quanta_task(name="train-shard", task_run_name="train-shard-{groups}")
def train_shard(spec_ref, groups: list[tuple[int, int]], train_set_refs: list, params: dict, store: str):
    """Train all widths for the given (data_size, seed) groups as one batched computation; write the curves."""
    return _train_shard_body(spec_ref, groups, train_set_refs, params, store)
