"""Training grids of one-hidden-layer (or deeper) ReLU MLPs on multitask sparse parity.

Many models train as one computation (`GridTrainer`, model.WidthGrid):
- *widths side by side*: all widths of a group see the same batch, so their hidden units are concatenated into one
  wide layer; each model's output and hidden layers touch only its own units (per width block, never a
  sum(widths)² block-diagonal matrix);
- *groups stacked*: groups that differ in data (finite training set size D, seed) have equal shape, so their
  parameters are stacked on a leading axis and run with batched matmuls.
The loss is the sum of every model's own mean loss, so each model's gradient is exactly its own, and AdamW is
elementwise: every model follows the trajectory it would follow trained alone (`train_single` is that reference;
tests compare them). On the CPU a step runs in chunks of the batch whose activations stay in cache between the
forward and backward pass; the gradient is written by hand (model.py) in a few passes over the activations.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from schemas import ConfigError
from schemas.sparse_parity import GridConfig, SparseParityConfig
from storage import ArtifactRef, Store
from tasks.caching import CACHE_POLICY, quanta_task
from tasks.devices import resolve_device, tensor_cores
from tasks.progress import Progress
from tasks.sparse_parity.data import Sampler, SparseParitySpec, derive_seed, encode, eval_set, load_spec
from tasks.sparse_parity.model import WidthGrid, grid_param_count, init_mlp, n_params, workspace_bytes
from tasks.step_graph import StepGraph

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


PREFETCH_BYTES = 256 << 20  # fresh batches held ahead per group, at most


def prefetch_batches(batch_size: int, n_bits: int) -> int:
    """Fresh batches drawn at once per group: up to 32, within PREFETCH_BYTES (a batch holds about
    batch_size·(4·n_bits + 16) bytes). The paper shape: 30; the demo: 32."""
    return max(1, min(32, PREFETCH_BYTES // (batch_size * (4 * n_bits + 16))))


class _GroupBatches:
    """Per-group batch streams, each with its own counter-based stream (data.Sampler): a group's batches do not
    depend on other groups, nor on the device. Each batch is ordered by subtask (the same samples, reordered), so
    the lookup-table gradient's row scatter-add adds into one row at a time (3-4x faster than in random order).
    Fresh samples are drawn `ahead` batches at a time (`prefetch_batches`), which spreads the stream's ~260 small
    operations per draw over up to 32 steps (on a GPU, where the step is launch-bound, they would otherwise be most
    of its kernel launches). `ahead` depends on the shape only, never on the device, since it decides which stream
    words each batch gets. A finite set larger than a batch is read in epochs: a fresh random permutation per epoch, step j of
    the epoch takes its j-th slice of B (each batch a uniformly random B-subset without replacement, no sample twice
    in an epoch; the last D mod B of an epoch's order are skipped, different ones each epoch)."""

    def __init__(self, spec: SparseParitySpec, groups: list[Group], batch_size: int, device: torch.device):
        self.spec, self.batch_size, self.device = spec, batch_size, device
        self.samplers = [Sampler(spec, seed=derive_seed("batches", g.seed, g.data_size), device=device)
                         for g in groups]
        self.ahead = prefetch_batches(batch_size, spec.n_bits)
        self.queues: list[deque] = [deque() for _ in groups]
        self.ones = torch.ones(batch_size, device=device)
        self.sets = []
        self.epochs: list[tuple[torch.Tensor, int] | None] = [None] * len(groups)  # (permutation, next slice)
        for g in groups:
            if g.data is None:
                self.sets.append(None)
            else:
                t, bits, y = (torch.as_tensor(a, device=device) for a in g.data)
                order = torch.argsort(t, stable=True)  # a finite set's order is immaterial: keep it by subtask
                self.sets.append((t.long()[order], bits.to(torch.uint8)[order], y.long()[order]))

    def _fresh(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        queue = self.queues[i]
        if not queue:
            k, B = self.ahead, self.batch_size
            t, bits, y = self.samplers[i].sample(k * B)
            first = torch.arange(0, k * B, B, device=self.device)[:, None]
            order = (torch.argsort(t.view(k, B), dim=1, stable=True) + first).view(-1)
            queue.extend(zip(t[order].view(k, B), bits[order].float().view(k, B, -1), y[order].view(k, B)))
        return queue.popleft()

    def _epoch_slice(self, i: int, n: int) -> torch.Tensor:
        """Indices (B,) of group i's next minibatch of its n-sample set, sorted (see the class docstring)."""
        B, epoch = self.batch_size, self.epochs[i]
        if epoch is None or epoch[1] + B > n:
            epoch = (self.samplers[i].stream.permutation(n), 0)
        perm, start = epoch
        self.epochs[i] = (perm, start + B)
        return perm[start:start + B].sort().values

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """task [G, B] int64, bits [G, B, n_bits] float32, y [G, B] int64, weight [G, B] float32 (0 pads small
        full-batch sets)."""
        ts, bs, ys, ws = [], [], [], []
        B = self.batch_size
        for i, data in enumerate(self.sets):
            w = self.ones
            if data is None:
                t, bits, y = self._fresh(i)
            else:
                n = data[0].shape[0]
                if n <= B:  # the whole set every step (full batch), padded to B with zero weight
                    idx = torch.arange(B, device=self.device) % n
                    w = (torch.arange(B, device=self.device) < n).float()
                else:  # the epoch's next slice, in the set's (subtask) order
                    idx = self._epoch_slice(i, n)
                t, bits, y = data[0][idx], data[1][idx].float(), data[2][idx]
            ts.append(t)
            bs.append(bits)
            ys.append(y)
            ws.append(w)
        stack = (lambda xs: xs[0].unsqueeze(0)) if len(ts) == 1 else torch.stack
        return stack(ts), stack(bs), stack(ys), stack(ws)


# Batch rows per chunk of a step: on the CPU a chunk's [G, rows, H] activations stay in cache between the forward
# and the backward pass (paper shape, 1 thread: 4-16 MiB per buffer ran 1.25x faster than the whole batch, 1 MiB
# lost to per-op overhead); on a GPU one chunk.
CPU_CHUNK_BYTES = 8 << 20
GPU_CHUNK_BYTES = 2 << 30


def chunk_rows(batch_size: int, groups: int, hidden: int, device: torch.device) -> int:
    """Rows per chunk: about CHUNK_BYTES of one [G, rows, H] float32 buffer, at least 64, split evenly."""
    budget = GPU_CHUNK_BYTES if device.type == "cuda" else CPU_CHUNK_BYTES
    rows = max(64, budget // (4 * groups * hidden))
    n = math.ceil(batch_size / rows)
    return math.ceil(batch_size / n)


class TrainingDiverged(RuntimeError):
    """A model's training loss became NaN or infinite."""


def _check_finite(loss: torch.Tensor, step: int, widths: list[int], groups: list[Group], lr: float,
                  what: str = "training loss") -> None:
    bad = ~torch.isfinite(loss)
    if bool(bad.any()):
        models = [f"width {widths[m]} (D={'fresh' if groups[g].data_size < 0 else groups[g].data_size}, "
                  f"seed {groups[g].seed})" for g, m in bad.nonzero().tolist()]
        shown = ", ".join(models[:6]) + (f" and {len(models) - 6} more" if len(models) > 6 else "")
        raise TrainingDiverged(f"training diverged: non-finite {what} by step {step} for {shown}; "
                               f"lr = {lr:g} (lower grid.lr)")


@torch.no_grad()
def evaluate(net: WidthGrid, spec: SparseParitySpec, eval_data, chunk: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-subtask test loss (bits) [G, M, T] and Zipf-weighted mean [G, M] on a fixed eval set."""
    t, bits, y = eval_data
    G, M, T = net.n_groups, len(net.widths), spec.n_tasks
    chunk = chunk or chunk_rows(t.shape[0], G, sum(net.widths), t.device)
    sums = torch.zeros(G * M, T, device=t.device, dtype=torch.float64)
    step = net.start_step(with_grad=False)
    for i in range(0, t.shape[0], chunk):
        tt = t[i:i + chunk]
        ce = net.per_sample_loss(tt, bits[i:i + chunk].float(), y[i:i + chunk], step)  # [G, M, c]
        sums.index_add_(1, tt, ce.view(G * M, -1).double())
    counts = torch.bincount(t, minlength=T).double().clamp(min=1)
    per_task = (sums / counts / LN2).view(G, M, T)
    probs = torch.as_tensor(spec.probs, device=t.device, dtype=torch.float64)
    mean = (per_task * probs).sum(-1).float()
    return per_task.float(), mean


class GridTrainer:
    """Every (group, width) model of a grid as one computation: `step()` draws each group's batch and takes one
    AdamW step of every model; `evaluate(eval_data)` measures every model's per-subtask test loss."""

    def __init__(self, spec: SparseParitySpec, widths: list[int], groups: list[Group], *, depth: int = 1,
                 batch_size: int, lr: float, weight_decay: float, device: str | torch.device = "cpu",
                 cuda_graph: bool = False):
        self.spec, self.widths, self.groups, self.lr = spec, list(widths), list(groups), lr
        self.device = torch.device(device)
        self.net = WidthGrid(spec.n_tasks, spec.n_bits, widths, depth, [g.seed for g in groups]).to(self.device)
        # fused: one kernel over the one flat tensor (same update as the for-loop AdamW up to float rounding);
        # capturable: its step count stays on the device, so a CUDA graph can replay the update
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=weight_decay, fused=True,
                                     capturable=cuda_graph and self.device.type == "cuda")
        # cuda_graph: the step (forward, gradient, AdamW) on static batch buffers, replayed as one CUDA graph
        self.graph = StepGraph(self._train_step, self.device, keep=self.net.workspaces) if cuda_graph else None
        self.batches = _GroupBatches(spec, groups, batch_size, self.device)
        self.batch_size = batch_size
        self.rows = chunk_rows(batch_size, len(groups), sum(widths), self.device)
        self.running = torch.zeros(len(groups), len(widths), device=self.device)  # training loss since last check
        self.steps_done = 0

    def step(self) -> None:
        batch = self.batches.next()
        if self.graph is None:
            self._train_step(*batch)
        else:
            self.graph(batch)
        self.steps_done += 1

    def _train_step(self, task: torch.Tensor, bits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> None:
        w = w / w.sum(1, keepdim=True)
        net, rows = self.net, self.rows
        st = net.start_step()
        for i in range(0, self.batch_size, rows):
            self.running += net.accumulate_grads(task[:, i:i + rows], bits[:, i:i + rows], y[:, i:i + rows],
                                                 w[:, i:i + rows], st)
        net.finish_grads(st)
        self.opt.step()

    def check_finite(self) -> None:
        """Raise TrainingDiverged if a model's training loss since the last check was NaN/inf."""
        _check_finite(self.running, self.steps_done, self.widths, self.groups, self.lr)
        self.running.zero_()

    def evaluate(self, eval_data) -> tuple[torch.Tensor, torch.Tensor]:
        per_task, mean = evaluate(self.net, self.spec, eval_data)
        _check_finite(mean, self.steps_done, self.widths, self.groups, self.lr, "test loss")
        return per_task, mean


def train_grid(spec: SparseParitySpec, widths: list[int], groups: list[Group], *, depth: int = 1, steps: int,
               batch_size: int, lr: float, weight_decay: float, log_at: np.ndarray, eval_data,
               device: str | torch.device = "cpu", keep_states: bool = False, progress=None,
               check_every: int | None = None, cuda_graph: bool = False) -> GridResult:
    """Train every (group, width) model for `steps` AdamW steps; log test losses at the steps in `log_at`.

    eval_data: (task, bits, label) tensors (see sparse_parity.eval_set), on any device.
    progress: a tasks.progress.Progress (or anything with `update(n, **info)`), advanced once per step.
    cuda_graph: replay each step as one CUDA graph (tasks.step_graph; on the CPU the same steps, eagerly).
    Raises TrainingDiverged (naming the models and lr) when a training or test loss is NaN/inf; the training
    loss is checked every `check_every` steps (default: every step on the CPU, every 50 on a GPU, where a check
    waits for the device), at every log step and at the end.
    Returns per-subtask and mean test losses in bits, [G, M, S, T] and [G, M, S].
    """
    device = torch.device(device)
    check_every = check_every or (50 if device.type == "cuda" else 1)
    with tensor_cores(device):
        trainer = GridTrainer(spec, widths, groups, depth=depth, batch_size=batch_size, lr=lr,
                              weight_decay=weight_decay, device=device, cuda_graph=cuda_graph)
        eval_data = tuple(a.to(device) for a in eval_data)
        log_at = np.asarray(log_at, dtype=np.int64)
        G, M, S, T = len(groups), len(widths), len(log_at), spec.n_tasks
        loss_bits = np.zeros((G, M, S, T), dtype=np.float32)
        mean_bits = np.zeros((G, M, S), dtype=np.float32)
        li = 0
        for step in range(1, steps + 1):
            trainer.step()
            logging = li < S and step == log_at[li]
            if logging or step % check_every == 0 or step == steps:
                trainer.check_finite()
            info = {}
            if logging:
                per_task, mean = trainer.evaluate(eval_data)
                loss_bits[:, :, li] = per_task.cpu().numpy()
                mean_bits[:, :, li] = mean.cpu().numpy()
                info = {"test_loss_bits": f"{mean_bits[0, 0, li]:.3f}..{mean_bits[0, -1, li]:.3f}"}
                li += 1
            if progress is not None:
                progress.update(1, **info)
        net = trainer.net
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
TRAIN_FIELDS = ("widths", "depth", "steps", "batch_size", "lr", "weight_decay", "log_points", "eval_samples_per_task")


def train_params(grid: GridConfig) -> dict:
    """The grid fields that affect training (not, e.g., the learned threshold): the shard's cache inputs. Not the
    device: every random stream is the same on every device (streams.Stream), so a shard computed on a GPU is the
    cached result of the same shard on the CPU (up to float rounding, and TF32 matmuls on a GPU)."""
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


def shard_memory(n_tasks: int, n_bits: int, params: dict, groups: list[tuple[int, int]],
                 device: torch.device) -> dict[str, int]:
    """Bytes one training shard holds at its peak, by part: "model" (parameters, gradients, AdamW moments),
    "activations" (the training and evaluation chunks' workspaces), "data" (a batch, the eval set, finite
    training sets, fresh batches drawn ahead). An estimate from the config alone (no allocation); preflight
    compares it with the machine."""
    widths, depth, B, G = params["widths"], params["depth"], params["batch_size"], len(groups)
    H, M = sum(widths), len(widths)
    n_eval = n_tasks * params["eval_samples_per_task"]
    rows, eval_rows = chunk_rows(B, G, H, device), chunk_rows(n_eval, G, H, device)
    sets = sum(d for d, _ in groups if d > 0)
    fresh = sum(d < 0 for d, _ in groups) * prefetch_batches(B, n_bits) * B * (4 * n_bits + 16)
    return {
        "model": 4 * 4 * G * grid_param_count(n_tasks, n_bits, widths, depth),
        "activations": workspace_bytes(n_bits, widths, depth, G, rows) + workspace_bytes(n_bits, widths, depth, G,
                                                                                          eval_rows),
        "data": G * B * (5 * n_bits + 24) + n_eval * (n_bits + 16) + 8 * G * M * eval_rows + 2 * sets * (n_bits + 16)
        + fresh,
    }


def available_memory(device: torch.device) -> int:
    """Bytes free for a new allocation: the GPU's free memory, or the machine's available RAM (psutil)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(cfg: SparseParityConfig, device: torch.device, available: int | None = None) -> None:
    """Raise ConfigError (one line) if a training shard of `cfg` would not fit in `available` bytes (default:
    what the device has free now)."""
    available = available_memory(device) if available is None else available
    for params, groups in training_plan(cfg):
        need = shard_memory(cfg.task.n_tasks, cfg.task.n_bits, params, groups, device)
        total = sum(need.values())
        if total > available:
            gib = 2.0 ** 30
            fields = "grid.widths, grid.depth, grid.batch_size" + (
                ", grid.groups_per_shard" if len(groups) > 1 and params["widths"] == cfg.grid.widths else "") + (
                ", data_grid.width" if params["widths"] != cfg.grid.widths else "")
            raise ConfigError(
                f"the training shard {groups} (widths {_short_list(params['widths'])}, depth {params['depth']}) needs "
                f"about {total / gib:.1f} GiB (parameters with gradients and AdamW moments {need['model'] / gib:.1f}, "
                f"activations {need['activations'] / gib:.1f}, data {need['data'] / gib:.1f}) but {device.type} has "
                f"{available / gib:.1f} GiB available: reduce {fields}")


def _short_list(xs: list[int]) -> str:
    return str(xs) if len(xs) <= 6 else f"[{xs[0]}, {xs[1]}, ..., {xs[-1]}] ({len(xs)})"


@quanta_task(name="train-shard", task_run_name="train-shard-{groups}",
             cache_policy=CACHE_POLICY - "device" - "cuda_graph")
def train_shard(spec_ref: ArtifactRef, *, groups: list[tuple[int, int]], train_set_refs: list[ArtifactRef | None],
                params: dict, store: str, device: str = "auto", cuda_graph: bool = False) -> ArtifactRef:
    """Train all widths for the given (data_size, seed) groups as one batched computation; write the curves.
    A diverging run (NaN/inf loss) raises TrainingDiverged: the task fails and nothing is stored. How it runs
    (the config's grid.device and grid.cuda_graph) is not part of the cache key; the lineage records both."""
    st = Store(store)
    spec = load_spec(st, spec_ref)
    device = resolve_device(device, "grid.device")
    group_objs = []
    for (data_size, seed), ref in zip(groups, train_set_refs):
        data = None
        if ref is not None:
            arrays, _ = st.read_zarr(ref)
            data = (arrays["task"], arrays["bits"], arrays["label"])
        group_objs.append(Group(seed=seed, data_size=data_size, data=data))
    log_at = log_steps(params["steps"], params["log_points"])
    ev = eval_set(spec, params["eval_samples_per_task"], seed=spec.seed, device=device)
    # the run log gets a line every 10 s: steps done, rate, ETA, test losses (group 0, first..last width)
    with Progress(f"train-shard {groups}", total=params["steps"], unit="step") as progress:
        res = train_grid(spec, params["widths"], group_objs, depth=params["depth"], steps=params["steps"],
                         batch_size=params["batch_size"], lr=params["lr"], weight_decay=params["weight_decay"],
                         log_at=log_at, eval_data=ev, device=device, progress=progress, cuda_graph=cuda_graph)
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
                         params={**params, "groups": groups, "device": _device_name(device), "cuda_graph": cuda_graph})


def _device_name(device: torch.device) -> str:
    """'cpu', or e.g. 'cuda:0 (NVIDIA H200)': which device computed an artifact, for its lineage."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
