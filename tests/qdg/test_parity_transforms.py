"""Representation transforms (tasks/qdg/transforms.py): the math of keep, |g|^p, support and per-block normalisation,
their invariance to a row's scale (so a transform can be read from stored unit rows), the float64 loss gradient past
the float32 saturation, and bad transform settings failing at load."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from schemas import ConfigError
from schemas.qdg_transform import Transform
from tasks.qdg.transforms import block_groups, kept_blocks, transform_rows, transformed_layout

NAMES = ["0.weight", "0.bias", "2.weight", "2.bias"]
SIZES = [6, 3, 4, 2]


def _rows(n=5, seed=0):
    return torch.randn(n, sum(SIZES), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_identity_power_and_support():
    g = _rows()
    assert transform_rows(g, NAMES, SIZES, Transform()) is g
    torch.testing.assert_close(transform_rows(g, NAMES, SIZES, Transform(power=0.25)), g.abs() ** 0.25)
    torch.testing.assert_close(transform_rows(g, NAMES, SIZES, Transform(power=1.0)), g.abs())
    sparse = g.clone()
    sparse[:, ::3] = 0.0
    torch.testing.assert_close(transform_rows(sparse, NAMES, SIZES, Transform(support=True)),
                               (sparse != 0).double())
    # relative threshold: only entries above 0.5 x the row's largest |g|
    half = transform_rows(g, NAMES, SIZES, Transform(support=True, support_threshold=0.5))
    torch.testing.assert_close(half, (g.abs() > 0.5 * g.abs().amax(1, keepdim=True)).double())
    assert torch.equal(g, _rows())  # the input is not changed


def test_keep_selects_blocks_and_normalise_divides_each_block():
    g = _rows()
    bias = transform_rows(g, NAMES, SIZES, Transform(keep=[r"0\.bias"]))
    torch.testing.assert_close(bias, g[:, 6:9])
    assert transformed_layout(NAMES, SIZES, Transform(keep=[r"\.bias"])) == (["0.bias", "2.bias"], [3, 2])
    t = transform_rows(g, NAMES, SIZES, Transform(normalise="tensor"))
    for a, b in ((0, 6), (6, 9), (9, 13), (13, 15)):
        torch.testing.assert_close(t[:, a:b].norm(dim=1), torch.ones(5, dtype=torch.float64))
        torch.testing.assert_close(t[:, a:b], g[:, a:b] / g[:, a:b].norm(dim=1, keepdim=True))
    m = transform_rows(g, NAMES, SIZES, Transform(normalise="module", power=0.5))
    for a, b in ((0, 9), (9, 15)):  # module "0" = weight + bias, module "2"
        ref = g[:, a:b].abs().sqrt()
        torch.testing.assert_close(m[:, a:b], ref / ref.norm(dim=1, keepdim=True))
    assert block_groups(["a.w", "b.w", "a.b"], [1, 2, 3], "module") == [[(0, 1), (3, 6)], [(1, 3)]]
    zero = g.clone()
    zero[:, 9:13] = 0.0  # an all-zero block stays zero instead of dividing by 0
    z = transform_rows(zero, NAMES, SIZES, Transform(normalise="tensor"))
    assert torch.isfinite(z).all() and (z[:, 9:13] == 0).all()
    with pytest.raises(ValueError, match="matches none"):
        kept_blocks(NAMES, SIZES, Transform(keep=["nope"]))


@pytest.mark.parametrize("transform", [Transform(power=0.25, normalise="module"), Transform(normalise="tensor"),
                                       Transform(keep=[r"0\."], support=True, support_threshold=0.1)])
def test_every_transform_is_invariant_to_the_rows_scale(transform):
    g = _rows()
    scale = torch.tensor([1e-3, 1.0, 7.0, 1e3, 0.5], dtype=torch.float64)[:, None]
    a, b = transform_rows(g, NAMES, SIZES, transform), transform_rows(g * scale, NAMES, SIZES, transform)
    torch.testing.assert_close(a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True))


def test_labels_and_bad_settings():
    assert Transform().label() == "none"
    assert Transform(power=0.25, normalise="module").label() == "abs^0.25+module-norm"
    assert Transform(keep=[r"0\.bias"], support=True).label() == "keep(0.bias)+support"
    for bad, match in (({"power": 0.5, "support": True}, "ask for one"), ({"power": 0}, "greater than 0"),
                       ({"support_threshold": 0.2}, "support is false"), ({"keep": ["("]}, "regular expression")):
        with pytest.raises(ValueError, match=match):
            Transform(**bad)


def test_bad_transform_in_a_parity_config_fails_before_work(project_root):
    from flows.qdg_sparse_parity import preflight
    from schemas.config import load_config
    from schemas.qdg import QDGSparseParityConfig

    path = project_root / "configs" / "qdg" / "sparse_parity_tiny.toml"
    with pytest.raises(ConfigError, match="transforms.0: power"):
        load_config(QDGSparseParityConfig, path, ["transforms=[{power=0.5,support=true}]"])
    with pytest.raises(ConfigError, match="leiden"):
        load_config(QDGSparseParityConfig, path, ["clusterers=['leiden']"])
    cfg = load_config(QDGSparseParityConfig, path, ["transforms=[{keep=['3.weight']}]"])
    with pytest.raises(ConfigError, match=r"transforms.0.keep: \['3.weight'\] matches none"):
        preflight(cfg)


def test_float64_loss_keeps_the_gradient_direction_past_the_float32_saturation():
    """A confident sample (logit gap 30, past ~16.6): the loss gradient must be dL/dd x dd/dtheta with
    dL/dd = -(2y - 1)(1 - p_y), i.e. exactly parallel to the logit-gap gradient; float32 cross-entropy loses one
    logit's (1 - p_y) and turns it."""
    from tasks.qdg.parity import parity_gradients, parity_parameter_names
    from tasks.qdg.parity_representations import logit_gradients
    from tasks.sparse_parity.model import init_mlp
    from schemas.qdg import GradientConfig

    n_tasks, n_bits = 3, 6
    mlp = init_mlp(n_tasks + n_bits, 8, 1, 0)
    with torch.no_grad():
        mlp[2].bias.copy_(torch.tensor([0.0, 30.0]))  # gap ~ +30: label 1 is predicted with p = 1 - 1e-13
    task, bits, label = torch.tensor([0, 1]), torch.ones(2, n_bits, dtype=torch.uint8), torch.tensor([1, 1])
    names = parity_parameter_names(GradientConfig())
    g, _ = parity_gradients(mlp, n_tasks, task, bits, label, names, include_control_weights=True)
    d = logit_gradients(mlp, n_tasks, task, bits, names, include_control_weights=True)
    unit = lambda v: v.double() / v.double().norm(dim=-1, keepdim=True)  # noqa: E731 (norms ~1e-13: no eps clamp)
    cos = (unit(g) * unit(-d)).sum(dim=1)
    torch.testing.assert_close(cos, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-6)
    from tasks.sparse_parity.data import encode

    x = encode(task, bits, n_tasks)
    f32 = torch.autograd.grad(F.cross_entropy(mlp(x[:1]), label[:1]), list(mlp.parameters()))
    f32 = torch.cat([t.reshape(-1) for t in f32]).double()
    assert float((unit(f32) * unit(-d[0])).sum()) < 0.99  # float32: the direction is off
    assert np.isfinite(g.numpy()).all()
