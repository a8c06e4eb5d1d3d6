"""What QDG clusters on the one-hidden-layer sparse-parity MLP: each `Representation` (schemas.qdg_config) of a sample.

The MLP: x = [one-hot control bits, task bits], h = W1 x + b1, a = relu(h) (the hidden units), z = W2 a + b2 (two
logits), the loss L = cross-entropy of the label y = softplus((1 - 2y) d) with d = z1 - z0 the logit gap. With
v = W2[1] - W2[0] (d = v . a + b2[1] - b2[0]):

- gradient: dL/dtheta (today's QDG, `tasks.qdg.parity.parity_gradients`; `align_label_sign` as configured)
- abs_gradient: |dL/dtheta| element-wise (the paper code's C_abs), before any projection
- activations: a (width numbers), the paper code's activation baseline
- logit_gradient: dd/dtheta (torch.func vmap of grad of the gap). Since dL/dd = -(2y - 1)(1 - p_y), the loss gradient
  is that scalar times this one: after L2 normalisation logit_gradient is exactly the label-aligned gradient up to
  one global sign (same cosines)
- attribution: (a_j v_j)^2 per unit j: the squared attribution of the gap to each unit (activation x d(gap)/d(a_j)),
  APD-style; squared, because a_j v_j flips sign with the class a unit pushes toward, which would bring back the
  label's sign
- ablation: L(a with a_j = 0) - L(a) per unit j, exact (the gap without unit j is d - a_j v_j): the change in the
  sample's loss (nats) when the unit is zeroed; positive where the unit helps

The parameter-space ones (gradient, abs_gradient, logit_gradient) leave the first layer's control-bit columns out
unless `include_control_weights` and may be JL-projected (`gradients.projection_dims`); the per-unit ones
(activations, attribution, ablation) have `width` dims and are never projected. Every representation is written as
the same `qdg.gradient_block` (unit rows, the raw row's norm, the sample's loss), so similarity and clustering are
one path; each is its own cached task that depends only on (samples, model, rows, its own settings), so adding a
representation computes only its blocks (on this MLP a forward pass costs less than reading a block back).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from schemas.qdg import GradientConfig
from schemas.qdg_transform import Transform
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.qdg.gradients import normalise_rows, write_gradient_block
from tasks.qdg.parity import flat_sizes, flatten_gradients, load_block_inputs, parity_gradients
from tasks.qdg.projection import Projector
from tasks.qdg.transforms import transform_rows
from tasks.sparse_parity.data import encode

PARAMETER_ROWS = ("gradient", "abs_gradient", "logit_gradient")  # dims = parameters (projectable)
UNIT_ROWS = ("activations", "attribution", "ablation")  # dims = hidden units
# no sign at all: neither the label's nor the direction of an effect (ablation is signed: a unit whose removal
# lowers a sample's loss a little points the other way than one whose removal raises it)
SIGN_FREE = ("abs_gradient", "activations", "logit_gradient", "attribution")


def hidden_and_gap(mlp: torch.nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a (n, width) hidden activations, d (n,) logit gap z1 - z0, v (width,) = W2[1] - W2[0])."""
    w1, b1, w2, b2 = mlp[0].weight, mlp[0].bias, mlp[2].weight, mlp[2].bias
    a = torch.relu(x @ w1.T + b1)
    z = a @ w2.T + b2
    return a, z[:, 1] - z[:, 0], w2[1] - w2[0]


def unit_ablation(a: torch.Tensor, d: torch.Tensor, v: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """(n, width): the exact change in each sample's cross-entropy (nats) when hidden unit j is zeroed."""
    s = (1 - 2 * label).to(d.dtype)[:, None]
    return F.softplus(s * (d[:, None] - a * v[None, :])) - F.softplus(s * d[:, None])


def unit_attribution(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(n, width): (a_j * d(gap)/d(a_j))^2, the squared attribution of the logit gap to each unit."""
    return (a * v[None, :]) ** 2


def logit_gradients(mlp: torch.nn.Sequential, n_tasks: int, task: torch.Tensor, bits: torch.Tensor,
                    names: list[str], include_control_weights: bool, chunk: int = 1024) -> torch.Tensor:
    """(n, dim) per-sample gradients of the logit gap z1 - z0 w.r.t. the parameters `names`, flattened in that order
    (the first layer's control-bit columns left out unless include_control_weights). torch.func: vmap of grad."""
    params = {n: p.detach() for n, p in mlp.named_parameters()}
    trained = {n: params[n] for n in names}
    frozen = {n: p for n, p in params.items() if n not in trained}

    def gap_of(p, x):
        z = torch.func.functional_call(mlp, {**p, **frozen}, (x[None],))
        return z[0, 1] - z[0, 0]

    per_sample = torch.func.vmap(torch.func.grad(gap_of), in_dims=(None, 0))
    rows = []
    for i in range(0, task.shape[0], chunk):
        x = encode(task[i:i + chunk], bits[i:i + chunk], n_tasks).to(mlp[0].weight.dtype)
        rows.append(flatten_gradients(per_sample(trained, x), names, n_tasks, include_control_weights))
    return torch.cat(rows)


def parity_representation(mlp: torch.nn.Sequential, n_tasks: int, task: torch.Tensor, bits: torch.Tensor,
                          label: torch.Tensor, representation: str, names: list[str],
                          include_control_weights: bool, align_label_sign: bool = False,
                          transform: Transform = Transform()) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw rows (n, dim) float32 before normalisation, per-sample loss (n,) nats) of one representation; a
    parameter-space one with `transform` applied (tasks.qdg.transforms; unit representations take the identity)."""
    if representation in PARAMETER_ROWS:
        raw, loss = parameter_rows(mlp, n_tasks, task, bits, label, representation, names, include_control_weights,
                                   align_label_sign)
        return transform_rows(raw, names, flat_sizes(mlp, names, n_tasks, include_control_weights), transform), loss
    if not transform.is_identity():
        raise ValueError(f"transform {transform.label()!r} applies to the parameter-space representations "
                         f"{PARAMETER_ROWS}, not to {representation!r}")
    with torch.no_grad():
        x = encode(task, bits, n_tasks).to(mlp[0].weight.dtype)
        a, d, v = hidden_and_gap(mlp, x)
        loss = F.softplus((1 - 2 * label).to(torch.float64) * d.double()).float()
    with torch.no_grad():
        if representation == "activations":
            return a.float(), loss
        if representation == "attribution":
            return unit_attribution(a, v).float(), loss
        if representation == "ablation":
            return unit_ablation(a, d, v, label).float(), loss
    raise ValueError(f"unknown representation {representation!r}")


def parameter_rows(mlp: torch.nn.Sequential, n_tasks: int, task: torch.Tensor, bits: torch.Tensor,
                   label: torch.Tensor, representation: str, names: list[str], include_control_weights: bool,
                   align_label_sign: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw rows, losses) of gradient, abs_gradient or logit_gradient (the losses in float64, then float32)."""
    if representation == "logit_gradient":
        with torch.no_grad():
            _, d, _ = hidden_and_gap(mlp, encode(task, bits, n_tasks).to(mlp[0].weight.dtype))
            loss = F.softplus((1 - 2 * label).to(torch.float64) * d.double()).float()
        return logit_gradients(mlp, n_tasks, task, bits, names, include_control_weights).float(), loss
    raw, loss = parity_gradients(mlp, n_tasks, task, bits, label, names, include_control_weights,
                                 align_label_sign and representation == "gradient")
    return (raw.abs() if representation == "abs_gradient" else raw), loss


@quanta_task(name="qdg-parity-representation-block",
             task_run_name="qdg-parity-{representation}-{start}-{stop}")
def parity_representation_block(samples: ArtifactRef, model: ArtifactRef, *, start: int, stop: int,
                                representation: str, cfg: GradientConfig, include_control_weights: bool,
                                align_label_sign: bool, transform: Transform = Transform(),
                                store: str) -> ArtifactRef:
    """The `qdg.gradient_block` of one representation for sample rows [start, stop): unit rows (parameter-space ones
    JL-projected first if cfg.projection_dims), "norm" the raw row's L2 norm, "loss" the sample's loss (nats)."""
    st = Store(store)
    b = load_block_inputs(st, samples, model, start, stop, cfg, "representation block")
    names, device, model_attrs = b.names, b.device, b.model_attrs
    raw, losses = parity_representation(b.mlp, b.n_tasks, b.task, b.bits, b.label, representation, names,
                                        include_control_weights, align_label_sign, transform)
    projector = (Projector(raw.shape[1], cfg.projection_dims, cfg.projection_seed, device)
                 if cfg.projection_dims is not None and representation in PARAMETER_ROWS else None)
    unit, norms = normalise_rows(raw, projector)
    dim = int(unit.shape[1])
    out_attrs = {"model": f"sparse-parity MLP width {model_attrs['width']} seed {model_attrs['seed']}",
                 "representation": representation, "transform": transform.label(), "dim": dim, "gradient_dim": int(raw.shape[1]),
                 "projection": projector.attrs if projector is not None else "none",
                 "parameters": names if representation in PARAMETER_ROWS else "hidden units",
                 "include_control_weights": include_control_weights, "align_label_sign": align_label_sign,
                 "rows": [int(start), int(stop)], "norm": "L2 norm of the raw row", "loss_unit": "nats"}

    def compute(emit):
        emit(np.arange(stop - start), unit, norms, losses)

    return write_gradient_block(st, compute, np.arange(start, stop), dim, out_attrs, [samples, model],
                                params={"start": start, "stop": stop, "representation": representation,
                                        "transform": transform.model_dump(), **cfg.model_dump(), "include_control_weights": include_control_weights,
                                        "align_label_sign": align_label_sign})
