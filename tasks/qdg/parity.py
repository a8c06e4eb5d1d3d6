"""QDG's ground truth on multitask sparse parity, where the quanta are known: the subtasks.

1. `parity_model`: the chosen model of a sparse-parity study (a width and a seed of its grid; default the widest
   and the first), trained alone with the study's own code (`train_grid(..., keep_states=True)` with one width and
   one group, the study's training settings: the grid trains each width exactly as alone, so it is the model the
   study trained), stored with its final per-subtask test loss (bits) as `qdg.parity_model`.
2. `parity_samples`: `samples_per_subtask` seeded samples of every subtask the model has learned (test loss below
   `learned_threshold_bits`), with the true subtask of each row; or, as a control, of as many unlearned subtasks
   (the most frequent ones).
3. `parity_gradient_block`: per-sample gradients of the MLP's cross-entropy (nats) w.r.t. its parameters
   (torch.func vmap of grad), flattened in state-dict order, optionally JL-projected, L2-normalised: the same
   `qdg.gradient_block` kind as the language-model path. Without `include_control_weights` the first layer's
   control-bit columns are left out: their gradient is nonzero only in the sample's own subtask's column, so
   alone they would separate the subtasks trivially (the analogue of the embeddings QDG excludes).
   `align_label_sign` folds the label's sign out of each gradient (see ParityModelConfig): the loss gradient of a
   binary task flips with the label, so plain QDG sees each subtask as two anti-aligned halves.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from schemas.errors import UserInputError
from schemas.qdg import GradientConfig, ParityModelConfig
from schemas.sparse_parity import SparseParityConfig
from storage import ArtifactRef, Store
from tasks.caching import CACHE_POLICY, quanta_task
from tasks.devices import resolve_device
from tasks.qdg.gradients import GradientConfigError, normalise_rows, write_gradient_block
from tasks.progress import Progress
from tasks.qdg.projection import Projector
from tasks.sparse_parity.data import Sampler, SparseParitySpec, encode, eval_set, load_spec, train_set
from tasks.sparse_parity.model import init_mlp
from tasks.sparse_parity.train import Group, train_grid

# the training settings of a sparse-parity grid that determine one model's trajectory (not the device: every random
# stream is the same on every device, so the device is recorded in the lineage but is not part of the cache key)
TRAIN_KEYS = ("depth", "steps", "batch_size", "lr", "weight_decay", "eval_samples_per_task")
PARAMETER_NAMES = ("0.weight", "0.bias", "2.weight", "2.bias")  # init_mlp's state dict (depth 1)


class ParityModelError(UserInputError):
    """The chosen model or its subtasks cannot give the study asked for (one line: what and what to change)."""


# ------------------------------------------------------------------------------------------------ the model
def parity_model_plan(sp: SparseParityConfig, cfg: ParityModelConfig) -> dict:
    """Which model of the study `sp` to look into: {width, seed, data_size, params, device} (data_size -1 = fresh
    samples every step; a grid without fresh samples gives its largest training set). Errors name the field."""
    g = sp.grid
    width = cfg.width if cfg.width is not None else max(g.widths)
    seed = cfg.seed if cfg.seed is not None else g.seeds[0]
    if width not in g.widths:
        raise ParityModelError(f"model.width {width} is not a width of the study's grid {g.widths}")
    if seed not in g.seeds:
        raise ParityModelError(f"model.seed {seed} is not a seed of the study's grid {g.seeds}")
    if g.depth != 1:
        raise ParityModelError(f"qdg-sparse-parity looks into depth-1 MLPs; the grid has depth {g.depth}")
    fresh = g.data_sizes is None or g.fresh_data
    data_size = -1 if fresh else max(g.data_sizes)
    return {"width": width, "seed": seed, "data_size": data_size,
            "params": {k: getattr(g, k) for k in TRAIN_KEYS}, "device": g.device}


def train_parity_mlp(spec: SparseParitySpec, width: int, seed: int, data_size: int, params: dict,
                     device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Train the (width, seed, data_size) model of a grid alone with the study's `train_grid`: (its final
    state dict, as init_mlp's; final per-subtask test loss (n_tasks,) in bits, on the study's eval set)."""
    data = train_set(spec, data_size, seed) if data_size > 0 else None
    steps = int(params["steps"])
    ev = eval_set(spec, params["eval_samples_per_task"], seed=spec.seed, device=device)
    with Progress(f"qdg-parity-model-w{width}-s{seed}", total=steps, unit="step") as progress:  # a line every 10 s
        res = train_grid(spec, [width], [Group(seed=seed, data_size=data_size, data=data)], depth=params["depth"],
                         steps=steps, batch_size=params["batch_size"], lr=params["lr"],
                         weight_decay=params["weight_decay"], log_at=np.array([steps]), eval_data=ev, device=device,
                         keep_states=True, progress=progress)
    return res.states[0][0], np.asarray(res.loss_bits[0, 0, -1], dtype=np.float32)


@quanta_task(name="qdg-parity-model", task_run_name="qdg-parity-model-w{width}-s{seed}",
             cache_policy=CACHE_POLICY - "device")
def parity_model(spec: ArtifactRef, *, width: int, seed: int, data_size: int, params: dict, device: str,
                 store: str) -> ArtifactRef:
    """One model of a sparse-parity grid (see `parity_model_plan`), as `qdg.parity_model`, trained on `device` (the
    grid's; not part of the cache key, as for the study's own shards: the lineage records it)."""
    st = Store(store)
    sp = load_spec(st, spec)
    device = resolve_device(device, "grid.device")
    state, loss_bits = train_parity_mlp(sp, width, seed, data_size, params, device)
    learned = int((loss_bits < 0.1).sum())
    print(f"parity model width {width} seed {seed}: {learned} of {sp.n_tasks} subtasks below 0.1 bits")
    arrays = {"w1": state["0.weight"].numpy(), "b1": state["0.bias"].numpy(), "w2": state["2.weight"].numpy(),
              "b2": state["2.bias"].numpy(), "subtask_loss_bits": loss_bits}
    attrs = {"width": width, "seed": seed, "data_size": data_size, "n_tasks": sp.n_tasks, "n_bits": sp.n_bits,
             "steps": int(params["steps"]), "depth": 1}
    return st.write_zarr("qdg.parity_model", arrays, attrs, inputs=[spec],
                         params={"width": width, "seed": seed, "data_size": data_size, **params,
                                 "device": str(device)})


def load_parity_model(st: Store, ref: ArtifactRef) -> tuple[torch.nn.Sequential, np.ndarray, dict]:
    """(the MLP as init_mlp's nn.Sequential in eval mode, per-subtask loss bits, attrs)."""
    arrays, attrs = st.read_zarr(ref)
    mlp = mlp_from_arrays(arrays)
    return mlp, np.asarray(arrays["subtask_loss_bits"]), attrs


def mlp_from_arrays(arrays: dict) -> torch.nn.Sequential:
    w1 = torch.as_tensor(np.asarray(arrays["w1"]))
    mlp = init_mlp(w1.shape[1], w1.shape[0], 1, 0)
    mlp.load_state_dict({"0.weight": w1, "0.bias": torch.as_tensor(np.asarray(arrays["b1"])),
                         "2.weight": torch.as_tensor(np.asarray(arrays["w2"])),
                         "2.bias": torch.as_tensor(np.asarray(arrays["b2"]))})
    return mlp.eval()


# ------------------------------------------------------------------------------------------------ samples
def chosen_subtasks(loss_bits: np.ndarray, threshold: float, control: bool) -> np.ndarray:
    """The learned subtasks (loss < threshold), or for the control as many unlearned ones, the most frequent
    first (subtask i has frequency rank i). Errors say what to change."""
    loss_bits = np.asarray(loss_bits)
    learned = np.flatnonzero(loss_bits < threshold)
    if len(learned) < 2:
        raise ParityModelError(
            f"the model has learned {len(learned)} subtask(s) (test loss < model.learned_threshold_bits = "
            f"{threshold}; lowest {loss_bits.min():.3g} bits): clustering needs at least 2; choose a wider model "
            "(model.width), train longer (sparse_parity grid.steps) or raise model.learned_threshold_bits")
    if not control:
        return learned
    unlearned = np.flatnonzero(loss_bits >= threshold)
    if len(unlearned) < 2:
        raise ParityModelError(f"the control needs at least 2 unlearned subtasks, the model has {len(unlearned)}: "
                               "set model.unlearned_control = false")
    return unlearned[:len(learned)]


def frequency_counts(probs: np.ndarray, subtasks: np.ndarray, min_per_subtask: int, seed: int) -> np.ndarray:
    """Samples per subtask when they are drawn one by one from the task's own distribution restricted to `subtasks`
    (p_i / sum of theirs), until the rarest has `min_per_subtask`: (len(subtasks),) int64 counts, in `subtasks`
    order. The stopping rule is exact (the draw sequence is cut at the first sample that completes the rarest)."""
    p = np.asarray(probs, dtype=np.float64)[np.asarray(subtasks)]
    p = p / p.sum()
    rng = np.random.default_rng([int(seed), 0xF7E9])
    counts = np.zeros(len(p), dtype=np.int64)
    batch = int(np.ceil(min_per_subtask / p.min()))
    while counts.min() < min_per_subtask:
        draws = rng.choice(len(p), size=batch, p=p)
        # where each subtask reaches min_per_subtask in this batch (or never): the sequence stops at the latest
        reach = []
        for c in range(len(p)):
            need = min_per_subtask - counts[c]
            at = np.flatnonzero(draws == c)
            reach.append(-1 if need <= 0 else (int(at[need - 1]) if at.size >= need else None))
        stop = None if any(r is None for r in reach) else max(reach) + 1
        counts += np.bincount(draws[:stop] if stop is not None else draws, minlength=len(p))
    return counts


def sample_subtasks(spec: SparseParitySpec, subtasks: np.ndarray, per_subtask,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`per_subtask` fresh samples of each subtask (an int, or one count per subtask), grouped by subtask: task (n,)
    int64, bits (n, n_bits) uint8, label (n,) int64. Seeded (the study's Sampler with its own generator)."""
    sampler = Sampler(spec, seed=seed)
    counts = np.broadcast_to(np.asarray(per_subtask, dtype=np.int64), (len(subtasks),))
    parts = [sampler.sample(int(c), task=int(t)) for t, c in zip(subtasks, counts)]
    task = torch.cat([p[0] for p in parts]).numpy().astype(np.int64)
    bits = torch.cat([p[1] for p in parts]).numpy().astype(np.uint8)
    label = torch.cat([p[2] for p in parts]).numpy().astype(np.int64)
    return task, bits, label


@quanta_task(name="qdg-parity-samples", task_run_name="qdg-parity-samples-control-{control}")
def parity_samples(model: ArtifactRef, spec: ArtifactRef, *, cfg: ParityModelConfig, control: bool,
                   store: str) -> ArtifactRef:
    """Samples of the subtasks the model has learned (control = False) or of as many unlearned ones (control =
    True), `cfg.samples_per_subtask` each, as `qdg.parity_samples` (rows grouped by subtask)."""
    st = Store(store)
    sp = load_spec(st, spec)
    _, loss_bits, _ = load_parity_model(st, model)
    if len(loss_bits) != sp.n_tasks:
        raise ParityModelError(f"model {model.short} has {len(loss_bits)} subtasks, the spec {sp.n_tasks}")
    subtasks = chosen_subtasks(loss_bits, cfg.learned_threshold_bits, control)
    # the control's samples come from their own stream, so adding the control never changes the learned samples
    per_subtask = cfg.samples_per_subtask
    if cfg.sampling == "frequency" and not control:  # the control keeps equal samples: it is about the ARI
        per_subtask = frequency_counts(sp.probs, subtasks, cfg.min_per_subtask, cfg.seed_samples)
    task, bits, label = sample_subtasks(sp, subtasks, per_subtask, cfg.seed_samples * 2 + int(control))
    learned = loss_bits[task] < cfg.learned_threshold_bits
    attrs = {"n_tasks": sp.n_tasks, "n_bits": sp.n_bits, "control": control, "subtasks": subtasks.tolist(),
             "learned_threshold_bits": cfg.learned_threshold_bits, "samples_per_subtask": cfg.samples_per_subtask,
             "sampling": "equal" if control else cfg.sampling, "probs": sp.probs.tolist(),
             "counts": np.broadcast_to(np.asarray(per_subtask), (len(subtasks),)).astype(int).tolist()}
    return st.write_zarr("qdg.parity_samples", {"task": task, "bits": bits, "label": label, "learned": learned},
                         attrs, inputs=[model, spec], params={**cfg.model_dump(), "control": control})


# ------------------------------------------------------------------------------------------------ gradients
def parity_parameter_names(cfg: GradientConfig) -> list[str]:
    """init_mlp's parameters kept by cfg.include / cfg.exclude (regexes on "0.weight", "0.bias", "2.weight",
    "2.bias"; exclude_modules has nothing to exclude in an MLP)."""
    names = [n for n in PARAMETER_NAMES
             if (not cfg.include or any(re.search(r, n) for r in cfg.include))
             and not any(re.search(r, n) for r in cfg.exclude)]
    if not names:
        raise GradientConfigError(f"gradients: no parameter of the MLP {list(PARAMETER_NAMES)} is left (include = "
                                  f"{list(cfg.include)}, exclude = {list(cfg.exclude)})")
    return names


def flatten_gradients(g: dict[str, torch.Tensor], names: list[str], n_tasks: int,
                      include_control_weights: bool) -> torch.Tensor:
    """Per-sample gradients {parameter: (n, *shape)} as (n, dim) rows in `names` order; without
    `include_control_weights` the first layer's control-bit columns are left out."""
    parts = []
    for n in names:
        gn = g[n]
        if n == "0.weight" and not include_control_weights:
            gn = gn[:, :, n_tasks:]
        parts.append(gn.reshape(gn.shape[0], -1))
    return torch.cat(parts, dim=1)


def parity_gradients(mlp: torch.nn.Sequential, n_tasks: int, task: torch.Tensor, bits: torch.Tensor,
                     label: torch.Tensor, names: list[str], include_control_weights: bool,
                     align_label_sign: bool = False, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample gradients of the cross-entropy (nats) of `label` given (task, bits), w.r.t. the parameters
    `names`, flattened in that order (the first layer's control-bit columns left out unless
    include_control_weights; multiplied by 2 label - 1 if align_label_sign): raw gradients (n, dim) float32 and
    losses (n,). torch.func: vmap of grad."""
    params = {n: p.detach() for n, p in mlp.named_parameters()}
    trained = {n: params[n] for n in names}
    frozen = {n: p for n, p in params.items() if n not in trained}

    def loss_of(p, x, y):
        # float64 cross-entropy: in float32 p_y rounds to 1 once the logit gap passes ~16.6 and the gradient w.r.t.
        # the logits loses its (1 - p_y) part on one side (the row's direction is then wrong, not just its size)
        logits = torch.func.functional_call(mlp, {**p, **frozen}, (x[None],)).double()
        loss = F.cross_entropy(logits, y[None])
        return loss, loss.detach()

    per_sample = torch.func.vmap(torch.func.grad(loss_of, has_aux=True), in_dims=(None, 0, 0))
    rows, losses = [], []
    for i in range(0, task.shape[0], chunk):
        x = encode(task[i:i + chunk], bits[i:i + chunk], n_tasks)
        g, loss = per_sample(trained, x, label[i:i + chunk])
        flat = flatten_gradients(g, names, n_tasks, include_control_weights).float()
        if align_label_sign:
            flat = flat * (2 * label[i:i + chunk] - 1).to(flat.dtype)[:, None]
        rows.append(flat)
        losses.append(loss.float())
    return torch.cat(rows), torch.cat(losses)


def flat_sizes(mlp: torch.nn.Sequential, names: list[str], n_tasks: int, include_control_weights: bool) -> list[int]:
    """The number of columns each parameter of `names` has in a `flatten_gradients` row (the first layer's weight
    without its control-bit columns unless include_control_weights)."""
    params = dict(mlp.named_parameters())
    sizes = []
    for n in names:
        shape = params[n].shape
        sizes.append(shape[0] * (shape[1] - n_tasks) if n == "0.weight" and not include_control_weights
                     else params[n].numel())
    return sizes


@dataclass
class BlockInputs:
    """What a block task over sample rows [start, stop) works on: the model on its device and the rows' tensors."""
    mlp: torch.nn.Module
    model_attrs: dict
    names: list[str]
    device: torch.device
    n_tasks: int
    task: torch.Tensor
    bits: torch.Tensor
    label: torch.Tensor


def load_block_inputs(st: Store, samples: ArtifactRef, model: ArtifactRef, start: int, stop: int,
                      cfg: GradientConfig, what: str) -> BlockInputs:
    """The samples' rows [start, stop) (refused when outside the samples) and the model, on `cfg.device`."""
    arrays, attrs = st.read_zarr(samples)
    n = len(arrays["task"])
    if not 0 <= start < stop <= n:
        raise ValueError(f"{what} [{start}, {stop}) is outside the samples' {n} rows")
    mlp, _, model_attrs = load_parity_model(st, model)
    device = resolve_device(cfg.device, "gradients.device")
    sl = slice(start, stop)
    task, bits, label = (torch.as_tensor(arrays[k][sl], device=device) for k in ("task", "bits", "label"))
    return BlockInputs(mlp.to(device), model_attrs, parity_parameter_names(cfg), device, int(attrs["n_tasks"]),
                       task, bits, label)


@quanta_task(name="qdg-parity-gradient-block", task_run_name="qdg-parity-gradients-{start}-{stop}")
def parity_gradient_block(samples: ArtifactRef, model: ArtifactRef, *, start: int, stop: int, cfg: GradientConfig,
                          include_control_weights: bool, align_label_sign: bool, store: str) -> ArtifactRef:
    """The `qdg.gradient_block` of sample rows [start, stop): unit per-sample gradients of the MLP's loss (JL-projected
    first if cfg.projection_dims), "norm" the raw gradient's L2 norm, "loss" the loss (nats)."""
    st = Store(store)
    b = load_block_inputs(st, samples, model, start, stop, cfg, "gradient block")
    names, device, model_attrs = b.names, b.device, b.model_attrs
    raw, losses = parity_gradients(b.mlp, b.n_tasks, b.task, b.bits, b.label, names, include_control_weights,
                                   align_label_sign)
    projector = (Projector(raw.shape[1], cfg.projection_dims, cfg.projection_seed, device)
                 if cfg.projection_dims is not None else None)
    unit, norms = normalise_rows(raw, projector)
    dim = int(unit.shape[1])
    out_attrs = {"model": f"sparse-parity MLP width {model_attrs['width']} seed {model_attrs['seed']}",
                 "dim": dim, "gradient_dim": int(raw.shape[1]),
                 "projection": projector.attrs if projector is not None else "none", "parameters": names,
                 "include_control_weights": include_control_weights, "align_label_sign": align_label_sign,
                 "rows": [int(start), int(stop)],
                 "norm": "L2 norm of the full unprojected gradient", "loss_unit": "nats"}

    def compute(emit):
        emit(np.arange(stop - start), unit, norms, losses)

    return write_gradient_block(st, compute, np.arange(start, stop), dim, out_attrs, [samples, model],
                                params={"start": start, "stop": stop, **cfg.model_dump(),
                                        "include_control_weights": include_control_weights,
                                        "align_label_sign": align_label_sign})
