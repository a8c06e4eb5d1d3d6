"""The training regimes of the looked-into sparse-parity MLP (schemas.qdg_config.Regime), each a cached
`qdg.parity_model`:

- study: the study's own model (`tasks.qdg.parity.parity_model` with the grid's settings)
- long: the same task with `long.steps` and `long.weight_decay` (trained from scratch, same init and batches)
- wide: the study's training of a `wide.width` MLP (default 1024, wider than the demo grid), from scratch
- group_lasso: `group_lasso_model`, the start regime's model fine-tuned on fresh samples with AdamW (no weight
  decay) on cross-entropy + lam * sum_j sqrt(||W1[j, :]||^2 + ||W2[:, j]||^2): one group per hidden unit, its
  incoming weights (every input column, control bits included) and outgoing weights (both logits), biases not
  penalised (Michaud, Parker-Sartori & Tegmark 2025, "On the creation of narrow AI": units that a subtask does not
  need are pushed to zero, so skills localise)
- modular: `modular_model`, the positive control: a hand-built MLP in which each subtask the study's model learned has
  its own k + 1 hidden units gated by its control bit (`modular_mlp`, any k bits per subtask); no training

Every trained regime can be trained once per training seed (`benchmark.training_seeds`): same recipe, its own
initialisation and batches (the seed of `train_grid`'s group), so the benchmark's intervals come from models.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from schemas import UserInputError
from schemas.qdg import GroupLassoConfig
from storage import ArtifactRef, Store
from tasks.caching import CACHE_POLICY, quanta_task
from tasks.devices import resolve_device
from tasks.qdg.parity import load_parity_model, parity_model
from tasks.progress import Progress
from tasks.sparse_parity.data import Sampler, SparseParitySpec, derive_seed, encode, eval_set, load_spec
from tasks.sparse_parity.train import TrainingDiverged

LN2 = math.log(2.0)


def regime_params(regime: str, params: dict, long_steps: int, long_weight_decay: float) -> dict:
    """The grid training settings of a trained-from-scratch regime (study, wide or long)."""
    if regime in ("study", "wide"):
        return dict(params)
    if regime == "long":
        return {**params, "steps": int(long_steps), "weight_decay": float(long_weight_decay)}
    raise ValueError(f"regime {regime!r} is not trained from scratch")


class RegimeDiverged(TrainingDiverged, UserInputError):
    """A regime's training diverged: one line naming the regime's fields to change (exit 2)."""


def trained_model(spec: ArtifactRef, *, regime: str, plan: dict, long_steps: int, long_weight_decay: float,
                  wide_width: int, seed: int | None = None, store: str) -> ArtifactRef:
    """The study's, the long or the wide regime's model (the cached `parity_model` task with that regime's
    settings), trained with `seed` (None = the plan's, the study's model)."""
    width = wide_width if regime == "wide" else plan["width"]
    try:
        return parity_model(spec, width=width, seed=plan["seed"] if seed is None else seed,
                            data_size=plan["data_size"],
                            params=regime_params(regime, plan["params"], long_steps, long_weight_decay),
                            device=plan["device"], store=store)
    except TrainingDiverged as e:
        if regime != "long":
            raise
        raise RegimeDiverged(f"long: {str(e).replace('(lower grid.lr)', '')}(lower long.weight_decay "
                             f"({long_weight_decay:g}) or sparse_parity.grid.lr)") from None


def subtask_loss_bits(mlp: torch.nn.Module, spec: SparseParitySpec, samples_per_task: int,
                      device: str | torch.device = "cpu") -> np.ndarray:
    """(n_tasks,) mean test cross-entropy per subtask in bits, on the study's eval set (seed = spec.seed)."""
    t, bits, y = eval_set(spec, samples_per_task, seed=spec.seed, device=device)
    with torch.no_grad():
        ce = F.cross_entropy(mlp(encode(t, bits, spec.n_tasks)), y, reduction="none").double()
    total = torch.zeros(spec.n_tasks, dtype=torch.float64, device=ce.device).index_add_(0, t, ce)
    return (total / samples_per_task / LN2).float().cpu().numpy()


def unit_group_norms(mlp: torch.nn.Sequential) -> torch.Tensor:
    """(width,) sqrt(||W1[j, :]||^2 + ||W2[:, j]||^2) of each hidden unit (the tiny constant keeps the gradient of
    a unit at exactly zero finite)."""
    return torch.sqrt(mlp[0].weight.pow(2).sum(1) + mlp[2].weight.pow(2).sum(0) + 1e-12)


def group_lasso_finetune(mlp: torch.nn.Sequential, spec: SparseParitySpec, cfg: GroupLassoConfig, lr: float,
                         batch_size: int, seed: int, device: str | torch.device = "cpu") -> list[float]:
    """Fine-tune `mlp` in place for cfg.steps AdamW steps on fresh samples (their own seeded stream): cross-entropy
    + cfg.lam * sum of unit_group_norms. Returns the penalty (sum of group norms) every 10% of the steps."""
    mlp.train()
    sampler = Sampler(spec, seed=derive_seed("group-lasso", seed), device=device)
    opt = torch.optim.AdamW(mlp.parameters(), lr=lr, weight_decay=0.0)
    trace = []
    with Progress(f"qdg-parity-group-lasso-lam{cfg.lam}", total=cfg.steps, unit="step") as progress:
        for step in range(cfg.steps):
            t, bits, y = sampler.sample(batch_size)
            norms = unit_group_norms(mlp)
            loss = F.cross_entropy(mlp(encode(t, bits, spec.n_tasks)), y) + cfg.lam * norms.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (step + 1) % max(1, cfg.steps // 10) == 0:
                trace.append(float(norms.sum().detach()))
                if not math.isfinite(trace[-1]) or not bool(torch.isfinite(loss.detach())):
                    raise RegimeDiverged(f"group_lasso: the fine-tuning diverged (loss {float(loss.detach())}, "
                                         f"penalty {trace[-1]}) by step {step + 1}: lower group_lasso.lam "
                                         f"({cfg.lam:g}) or group_lasso.lr ({lr:g})")
            progress.update(1)
    return trace


def model_arrays(mlp: torch.nn.Sequential, loss_bits: np.ndarray) -> dict[str, np.ndarray]:
    return {"w1": mlp[0].weight.detach().cpu().numpy(), "b1": mlp[0].bias.detach().cpu().numpy(),
            "w2": mlp[2].weight.detach().cpu().numpy(), "b2": mlp[2].bias.detach().cpu().numpy(),
            "subtask_loss_bits": np.asarray(loss_bits, dtype=np.float32)}


@quanta_task(name="qdg-parity-group-lasso", task_run_name="qdg-parity-group-lasso-lam{cfg.lam}",
             cache_policy=CACHE_POLICY - "device")
def group_lasso_model(start: ArtifactRef, spec: ArtifactRef, *, cfg: GroupLassoConfig, params: dict,
                      device: str, store: str) -> ArtifactRef:
    """The `start` model fine-tuned with the group-lasso penalty (see `group_lasso_finetune`), as
    `qdg.parity_model` with its new per-subtask test loss and the fraction of units left (group norm > 1e-3 of the
    largest). Its samples are the same on every device, so `device` is recorded but is not part of the cache key."""
    st = Store(store)
    sp = load_spec(st, spec)
    mlp, _, attrs = load_parity_model(st, start)
    device = resolve_device(device, "grid.device")
    mlp = mlp.to(device)
    lr = cfg.lr if cfg.lr is not None else float(params["lr"])
    trace = group_lasso_finetune(mlp, sp, cfg, lr, int(params["batch_size"]), int(attrs["seed"]), device)
    mlp.eval()
    loss_bits = subtask_loss_bits(mlp, sp, int(params["eval_samples_per_task"]), device)
    with torch.no_grad():
        norms = unit_group_norms(mlp).cpu().numpy()
    alive = float((norms > 1e-3 * norms.max()).mean())
    print(f"group lasso (lam {cfg.lam}, {cfg.steps} steps): {int((loss_bits < 0.1).sum())} of {sp.n_tasks} "
          f"subtasks below 0.1 bits, {alive:.0%} of units left, penalty {trace[0]:.1f} -> {trace[-1]:.1f}")
    out = {**{k: v for k, v in attrs.items() if k in ("width", "seed", "data_size", "n_tasks", "n_bits", "depth")},
           "steps": int(attrs["steps"]) + cfg.steps, "regime": "group_lasso", "group_lasso": cfg.model_dump(),
           "lr": lr, "units_alive": alive, "penalty_trace": trace}
    return st.write_zarr("qdg.parity_model", model_arrays(mlp, loss_bits), out, inputs=[start, spec],
                         params={"group_lasso": cfg.model_dump(), **params, "device": str(device)})


def parity_unit_weights(k: int) -> np.ndarray:
    """(k + 1,) outgoing weights a_m of the units h_m = relu(s - m + 1/2), m = 0..k, with sum_m a_m h_m(s) = 1 for
    an even number s of set bits and 3 for an odd one (s = 0..k): the lower-triangular system h_m(s) = s - m + 1/2
    for m <= s, solved exactly (integers; k = 3 gives 2, 0, -8, 16). The offset 2 keeps a_0 = 2: every sample,
    s = 0 included, has an active unit with an outgoing weight, so its gradient carries its subtask."""
    h = np.array([[max(s - m + 0.5, 0.0) for m in range(k + 1)] for s in range(k + 1)])
    target = np.array([1.0 + 2.0 * (s % 2) for s in range(k + 1)])
    return np.rint(np.linalg.solve(h, target))


def modular_mlp(spec: SparseParitySpec, learned: list[int], scale: float = 10.0,
                gate: float | None = None) -> dict[str, np.ndarray]:
    """Weights of a one-hidden-layer ReLU MLP that has learned exactly the subtasks `learned`, for any k bits per
    subtask: for each, k + 1 units h_m = relu(sum of its bits - m + 1/2 - gate (1 - its control bit)), m = 0..k
    (gate = k + 5 by default: with the control bit off every unit is off), combined by `parity_unit_weights` into
    1 (even) or 3 (odd); the logit gap is scale x (that - 2): -scale for label 0, +scale for label 1. Other subtasks
    have no units and get the gap -2 scale (label 0)."""
    k, n_tasks, n_bits = spec.k, spec.n_tasks, spec.n_bits
    gate = float(k + 5) if gate is None else float(gate)
    a = parity_unit_weights(k)
    h = (k + 1) * len(learned)
    w1, b1 = np.zeros((h, n_tasks + n_bits), np.float32), np.zeros(h, np.float32)
    w2, b2 = np.zeros((2, h), np.float32), np.array([scale, -scale], np.float32)
    for i, t in enumerate(learned):
        for m in range(k + 1):
            j = (k + 1) * i + m
            w1[j, t] = gate
            w1[j, n_tasks + np.asarray(spec.subsets[t])] = 1.0
            b1[j] = -m + 0.5 - gate
            w2[1, j], w2[0, j] = scale / 2 * a[m], -scale / 2 * a[m]
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2}


@quanta_task(name="qdg-parity-modular")
def modular_model(study: ArtifactRef, spec: ArtifactRef, *, learned_threshold_bits: float, eval_samples_per_task: int,
                  store: str) -> ArtifactRef:
    """The positive control: `modular_mlp` for the subtasks the `study` model learned (test loss below the
    threshold), with its own per-subtask test loss, as `qdg.parity_model`."""
    from tasks.qdg.parity import mlp_from_arrays

    st = Store(store)
    sp = load_spec(st, spec)
    _, loss_bits, attrs = load_parity_model(st, study)
    learned = np.flatnonzero(loss_bits < learned_threshold_bits).tolist()
    arrays = modular_mlp(sp, learned)
    own = subtask_loss_bits(mlp_from_arrays(arrays), sp, eval_samples_per_task)
    out = {"width": (sp.k + 1) * len(learned), "seed": int(attrs["seed"]), "n_tasks": sp.n_tasks, "n_bits": sp.n_bits,
           "steps": 0, "depth": 1, "regime": "modular", "subtasks": learned}
    return st.write_zarr("qdg.parity_model", {**arrays, "subtask_loss_bits": own}, out, inputs=[study, spec],
                         params={"learned_threshold_bits": learned_threshold_bits,
                                 "eval_samples_per_task": eval_samples_per_task})
