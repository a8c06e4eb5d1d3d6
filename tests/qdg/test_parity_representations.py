"""The representations of a sparse-parity sample (tasks.qdg.parity_representations): each equals its definition
computed another way (finite differences, zeroing a unit by hand, autograd), and on the hand-built modular model
every sign-free one recovers the subtasks."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from schemas.qdg import REPRESENTATIONS, GradientConfig, ParityModelConfig
from schemas.sparse_parity import TaskConfig
from tasks.qdg.gradients import gradient_block_plan
from tasks.qdg.parity import load_parity_model, parity_gradients, parity_parameter_names, parity_samples
from tasks.qdg.parity_representations import (SIGN_FREE, hidden_and_gap, logit_gradients, parity_representation,
                                              parity_representation_block)
from tasks.qdg.regimes import modular_mlp, subtask_loss_bits
from tasks.sparse_parity.data import build_spec, encode, load_spec

N_TASKS, N_BITS, LEARNED = 6, 16, [0, 1, 2, 3]


@pytest.fixture
def modular(store):
    from tasks.qdg.parity import mlp_from_arrays

    spec_ref = build_spec.fn(task_cfg=TaskConfig(n_tasks=N_TASKS, n_bits=N_BITS, k=3, seed=0), store=store.url)
    spec = load_spec(store, spec_ref)
    arrays = modular_mlp(spec, LEARNED)
    loss_bits = subtask_loss_bits(mlp_from_arrays(arrays), spec, 200)
    ref = store.write_zarr("qdg.parity_model", {**arrays, "subtask_loss_bits": loss_bits},
                           {"width": 4 * len(LEARNED), "seed": 0, "n_tasks": N_TASKS, "n_bits": N_BITS, "steps": 0})
    return spec_ref, spec, ref, loss_bits


def _noisy(store, model):
    """The modular MLP moved off its exact kinks (every active unit has a nonzero gradient), in float64."""
    mlp, _, _ = load_parity_model(store, model)
    with torch.no_grad():
        for p in mlp.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    return mlp.double()


def _samples(store, spec_ref, model, n=5):
    arrays, _ = store.read_zarr(parity_samples.fn(model, spec_ref, cfg=ParityModelConfig(samples_per_subtask=n),
                                                  control=False,
                                                  store=store.url))
    return tuple(torch.as_tensor(arrays[k]) for k in ("task", "bits", "label"))


def test_logit_gradient_equals_finite_differences_and_the_aligned_gradient(store, modular):
    spec_ref, _, model, _ = modular
    mlp = _noisy(store, model)
    task, bits, label = _samples(store, spec_ref, model, 3)
    names = parity_parameter_names(GradientConfig())
    g = logit_gradients(mlp, N_TASKS, task, bits, names, include_control_weights=True).double()
    x = encode(task, bits, N_TASKS).double()
    eps, fd = 1e-6, []
    for p in mlp.parameters():  # central differences of the gap, every parameter in state-dict order
        flat = p.data.view(-1)
        for i in range(flat.numel()):
            old = float(flat[i])
            flat[i] = old + eps
            up = hidden_and_gap(mlp, x)[1]
            flat[i] = old - eps
            down = hidden_and_gap(mlp, x)[1]
            flat[i] = old
            fd.append((up - down) / (2 * eps))
    fd = torch.stack(fd, dim=1)
    assert g.shape == fd.shape and fd.abs().max() > 1
    torch.testing.assert_close(g, fd, rtol=1e-5, atol=1e-5)
    # on a one-hidden-layer MLP with 0/1 inputs each coordinate of the gap's gradient has one sign for every sample
    # (sign(v_j) in layer 1, fixed in layer 2): |gradient| = |dL/dd| |logit gradient| then has the same cosines
    assert not ((g > 0).any(0) & (g < 0).any(0)).any()
    # the loss gradient is dL/dd = -(2y - 1)(1 - p_y) times it: no label sign, no (1 - p) scaling in the logit gradient
    for i in range(len(task)):
        loss = F.cross_entropy(mlp(x[i:i + 1]), label[i:i + 1])
        grad = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(mlp.parameters()))])
        p_y = torch.softmax(mlp(x[i:i + 1]), dim=1)[0, label[i]].detach()
        torch.testing.assert_close(grad, -(2 * label[i] - 1) * (1 - p_y) * g[i], rtol=1e-6, atol=1e-12)


def test_ablation_equals_zeroing_the_unit_by_hand(store, modular):
    spec_ref, _, model, _ = modular
    mlp = _noisy(store, model)
    task, bits, label = _samples(store, spec_ref, model)
    names = parity_parameter_names(GradientConfig())
    abl, loss = parity_representation(mlp, N_TASKS, task, bits, label, "ablation", names, False)
    x = encode(task, bits, N_TASKS).double()
    base = F.cross_entropy(mlp(x), label, reduction="none")
    torch.testing.assert_close(loss.double(), base)
    width = mlp[0].weight.shape[0]
    for j in range(width):
        hand = _noisy(store, model)
        with torch.no_grad():  # zero the unit's activation: its outgoing weights
            hand[2].weight[:, j] = 0
        torch.testing.assert_close(abl[:, j].double(), F.cross_entropy(hand(x), label, reduction="none") - base,
                                   rtol=1e-4, atol=1e-6)
    assert (abl.max(dim=1).values > 1).float().mean() > 0.5  # most samples lose a unit that matters


def test_activations_and_attribution_are_the_hidden_units_and_their_squared_attribution(store, modular):
    spec_ref, _, model, _ = modular
    mlp = _noisy(store, model)
    task, bits, label = _samples(store, spec_ref, model)
    names = parity_parameter_names(GradientConfig())
    x = encode(task, bits, N_TASKS).double()
    act, _ = parity_representation(mlp, N_TASKS, task, bits, label, "activations", names, False)
    torch.testing.assert_close(act.double(), mlp[1](mlp[0](x)), rtol=1e-5, atol=1e-6)
    a = mlp[1](mlp[0](x)).detach().requires_grad_(True)
    z = mlp[2](a)
    (dgap,) = torch.autograd.grad((z[:, 1] - z[:, 0]).sum(), a)
    attr, _ = parity_representation(mlp, N_TASKS, task, bits, label, "attribution", names, False)
    torch.testing.assert_close(attr.double(), (a * dgap).detach() ** 2, rtol=1e-4, atol=1e-6)
    single = copy.deepcopy(mlp).float()  # the loss gradient path is float32
    absg, _ = parity_representation(single, N_TASKS, task, bits, label, "abs_gradient", names, False)
    plain, _ = parity_gradients(single, N_TASKS, task, bits, label, names, False)
    torch.testing.assert_close(absg, plain.abs(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="unknown representation"):
        parity_representation(mlp, N_TASKS, task, bits, label, "nope", names, False)


def _ari(store, samples, model, representation: str, k: int) -> float:
    from sklearn.metrics import adjusted_rand_score

    from tasks.qdg.clustering import affinity_from_cosine, spectral_labels

    arrays, _ = store.read_zarr(samples)
    cfg = GradientConfig(exclude_modules=[], device="cpu")
    blocks = [parity_representation_block.fn(samples, model, start=a, stop=b, representation=representation, cfg=cfg,
                                             include_control_weights=False, align_label_sign=False, store=store.url)
              for a, b in gradient_block_plan(len(arrays["task"]), 50)]
    g = np.concatenate([store.read_zarr(b)[0]["g"] for b in blocks]).astype(np.float64)
    assert store.read_zarr(blocks[0])[1]["representation"] == representation
    labels = spectral_labels(affinity_from_cosine(np.clip(g @ g.T, -1, 1).astype(np.float32)), k, 0)
    return adjusted_rand_score(arrays["task"], labels)


def test_every_sign_free_representation_recovers_the_subtasks_of_the_modular_model(store, modular):
    spec_ref, _, model, loss_bits = modular
    assert (loss_bits[LEARNED] < 1e-3).all() and (loss_bits[4:] > 1).all()
    learned = parity_samples.fn(model, spec_ref, cfg=ParityModelConfig(samples_per_subtask=40), control=False,
                                store=store.url)
    aris = {rep: _ari(store, learned, model, rep, len(LEARNED)) for rep in REPRESENTATIONS}
    for rep in SIGN_FREE:
        assert aris[rep] >= 0.95, aris
    # the plain loss gradient flips with the label: each subtask is two anti-aligned halves
    assert aris["gradient"] < 0.8, aris
