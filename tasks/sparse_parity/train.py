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

from schemas.sparse_parity import GridConfig, SparseParityConfig
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.devices import resolve_device, tensor_cores
from tasks.sparse_parity.data import Sampler, SparseParitySpec, encode, eval_set, load_spec
from tasks.sparse_parity.model import WidthGrid, init_mlp, n_params

LN2 = math.log(2.0)


def log_steps(steps: int, n_points: int) -> np.ndarray:
    """Log-spaced, distinct steps in [1, steps], always including `steps`."""
    s = np.unique(np.round(np.geomspace(1, steps, n_points)).astype(np.int64))
    return s


@dataclass
class Group:
    """Models that share batches: one data stream (fresh samples if `data` is None, else a finite set)."""

    seed: int
    data_size: int = -1  # -1: fresh samples every step
    data: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (task, bits, label) of the training set


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
    with tensor_cores(device):
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
TRAIN_FIELDS = ("widths", "depth", "steps", "batch_size", "lr", "weight_decay", "log_points", "eval_samples_per_task",
                "device")


def train_params(grid: GridConfig) -> dict:
    """The grid fields that affect training (not, e.g., the learned threshold): the shard's cache inputs."""
    return {k: getattr(grid, k) for k in TRAIN_FIELDS}


def grid_groups(cfg: SparseParityConfig) -> list[tuple[int, int]]:
    """(data_size, seed) groups of the width grid; data_size -1 = fresh samples every step."""
    g = cfg.grid
    sizes = ([-1] if (g.data_sizes is None or g.fresh_data) else []) + list(g.data_sizes or [])
    return [(d, s) for d in sizes for s in g.seeds]


def training_plan(cfg: SparseParityConfig) -> list[tuple[dict, list[tuple[int, int]]]]:
    """[(train params, groups of one shard)]: the width grid's shards, then the data grid's (one width, stacked
    (D, seed) models). Each shard is one cached task."""
    plan = []
    params = train_params(cfg.grid)
    groups = grid_groups(cfg)
    n = cfg.grid.groups_per_shard
    plan += [(params, groups[i:i + n]) for i in range(0, len(groups), n)]
    if cfg.data_grid is not None:
        dg = cfg.data_grid
        dparams = dict(params, widths=[dg.width], steps=dg.steps or cfg.grid.steps)
        seeds = dg.seeds or cfg.grid.seeds
        if dg.shard_by == "data_size":
            plan += [(dparams, [(d, s) for s in seeds]) for d in dg.data_sizes]
        else:
            plan += [(dparams, [(d, s)]) for d in dg.data_sizes for s in seeds]
    return plan


def finite_data_groups(plan) -> list[tuple[int, int]]:
    """The (D, seed) groups of a plan that train on a finite training set, each once."""
    return list(dict.fromkeys(g for _, shard in plan for g in shard if g[0] > 0))


@quanta_task(name="train-shard", task_run_name="train-shard-{groups}")
def train_shard(spec_ref: ArtifactRef, groups: list[tuple[int, int]], train_set_refs: list[ArtifactRef | None],
                params: dict, store: str) -> ArtifactRef:
    """Train all widths for the given (data_size, seed) groups as one batched computation; write the curves."""
    from prefect import get_run_logger

    st = Store(store)
    spec = load_spec(st, spec_ref)
    device = resolve_device(params["device"], "grid.device")
    group_objs = []
    for (data_size, seed), ref in zip(groups, train_set_refs):
        data = None
        if ref is not None:
            arrays, _ = st.read_zarr(ref)
            data = (arrays["task"], arrays["bits"], arrays["label"])
        group_objs.append(Group(seed=seed, data_size=data_size, data=data))
    log_at = log_steps(params["steps"], params["log_points"])
    ev = eval_set(spec, params["eval_samples_per_task"], seed=spec.seed, device=device)
    logger = get_run_logger()

    def progress(step, mean):
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
    return st.write_zarr("sparse_parity.curves", arrays, attrs, inputs=inputs, params={**params, "groups": groups})
