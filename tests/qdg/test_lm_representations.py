"""QDG representations over MLP units on language models: the unit stage equals forward hooks and autograd done by
hand, token by token; activations, attribution and ablation blocks are its rows normalised; the cross-representation
agreement is sklearn's ARI."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from schemas.qdg import SelectionConfig
from tasks.lm.losses import per_token_losses
from tasks.lm.model_source import ModelSource
from tasks.qdg.lm_representations import (UnitRepresentationError, UnitValues, agreement_table,
                                          mlp_activation_modules, unit_representation, units_block)
from tasks.qdg.selection import select_tokens, token_windows
from tiny_lm import CTX, random_gpt2, random_neox, suite_store, synthetic_corpus, tiny_suite


def _act_modules(model) -> list:
    """Each layer's MLP activation function, by attribute (independently of the module's name search)."""
    if hasattr(model, "gpt_neox"):
        return [layer.mlp.act for layer in model.gpt_neox.layers]
    return [block.mlp.act for block in model.transformer.h]


def _by_hand(model, ids, offsets, tokens):
    """Per token: one forward pass of its window with hooks on the activations, the activations at the position
    predicting it, and autograd of its target logit and of its loss to them."""
    starts, pos = token_windows(tokens, offsets, CTX)
    a_all, dz_all, dl_all = [], [], []
    for s, p, t in zip(starts.tolist(), pos.tolist(), tokens.tolist()):
        acts = []
        hooks = [m.register_forward_hook(lambda _m, _i, o: acts.append(o)) for m in _act_modules(model)]
        logits = model(input_ids=torch.as_tensor(ids[s:s + p], dtype=torch.long)[None]).logits[0, p - 1].float()
        for h in hooks:
            h.remove()
        z = logits[int(ids[t])]
        loss = torch.nn.functional.cross_entropy(logits[None], torch.tensor([int(ids[t])]))
        dz = torch.autograd.grad(z, acts, retain_graph=True)
        dl = torch.autograd.grad(loss, acts)
        a_all.append(torch.cat([x[0, p - 1] for x in acts]).detach())
        dz_all.append(torch.cat([g[0, p - 1] for g in dz]))
        dl_all.append(torch.cat([g[0, p - 1] for g in dl]))
    return (torch.stack(a_all).numpy(), torch.stack(dz_all).numpy(), torch.stack(dl_all).numpy())


@pytest.mark.parametrize("which", ["neox", "gpt2"])
def test_unit_values_equal_forward_hooks_and_autograd_by_hand(which):
    model = {"neox": random_neox, "gpt2": random_gpt2}[which]()
    ids, offsets = synthetic_corpus()
    predicted = np.setdiff1d(np.arange(offsets[-1]), offsets[:-1])
    tokens = np.sort(np.random.default_rng(1).choice(predicted, 24, replace=False))
    starts, _ = token_windows(tokens, offsets, CTX)
    assert len(np.unique(starts)) < len(tokens)  # several tokens per window: one forward pass serves them
    uv = UnitValues(model, CTX, positions_per_backward=4)
    got = {name: np.full((len(tokens), 128), np.nan, np.float32) for name in ("a", "dz", "dl")}
    loss = np.full(len(tokens), np.nan, np.float32)

    def emit(rows, a, dz, dl, losses):
        got["a"][rows], got["dz"][rows], got["dl"][rows], loss[rows] = a, dz, dl, losses

    uv.compute(ids, offsets, tokens, emit)
    assert uv.widths == [64, 64] and uv.dim == 128  # 4 x d_model per layer, two layers
    a, dz, dl = _by_hand(model, ids, offsets, tokens)
    assert np.abs(dz).max() > 1e-2 and np.abs(dl).max() > 1e-2
    np.testing.assert_allclose(got["a"], a, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["dz"], dz, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["dl"], dl, rtol=0, atol=1e-6)
    np.testing.assert_allclose(loss, per_token_losses(model, ids, offsets, CTX, batch_size=4)[tokens], atol=1e-5)


def test_a_model_without_mlp_activation_modules_is_refused_naming_the_field():
    with pytest.raises(UnitRepresentationError, match=r"representations: activations, attribution and ablation "
                                                      r"need .*mlp\.act"):
        mlp_activation_modules(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    from storage import Store

    store = Store(tmp_path_factory.mktemp("qdg-units") / "store")
    refs = suite_store(store, tiny_suite())
    sel = select_tokens.fn(refs["tokens"], refs["token_losses"], model=ModelSource.trained(refs["models"]["d16"]),
                           cfg=SelectionConfig(max_loss_nats=1.5, n_tokens=10, seed=1), context_length=CTX,
                           store=store.url)
    return store, refs, sel


def test_unit_blocks_and_their_representations(selected):
    store, refs, sel = selected
    df = store.read_table(sel)
    units = units_block.fn(sel, refs["tokens"], model=ModelSource.trained(refs["models"]["d16"]), start=2, stop=9,
                           context_length=CTX, dtype="float32", device="cpu", positions_per_backward=4,
                           store=store.url)
    arrays, attrs = store.read_zarr(units)
    model = tiny_suite()["d16"]
    tokens = df["token_index"].to_numpy()[2:9]
    a, dz, dl = _by_hand(model, refs["ids"], refs["offsets"], tokens)
    assert attrs["widths"] == [64] and attrs["layers"] == ["gpt_neox.layers.0.mlp.act"]
    assert arrays["row"].tolist() == list(range(2, 9))
    np.testing.assert_allclose(arrays["a"], a, atol=1e-6)
    np.testing.assert_allclose(arrays["loss"], df["loss"].iloc[2:9], atol=1e-5)
    for rep, raw in (("activations", a), ("attribution", a * dz), ("ablation", -a * dl)):
        block, battrs = store.read_zarr(unit_representation.fn(units, representation=rep,
                                                               store=store.url))  # validated: unit rows
        assert battrs["representation"] == rep and battrs["projection"] == "none" and battrs["dim"] == 64
        np.testing.assert_allclose(block["g"], raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
        np.testing.assert_allclose(block["norm"], np.linalg.norm(raw, axis=1), rtol=1e-5)
        assert block["row"].tolist() == list(range(2, 9))


def test_ablation_is_the_first_order_estimate_of_zeroing_a_unit():
    """-a dL/da against the loss change when one unit is zeroed by hand: close where the unit is small."""
    model = random_neox(seed=2)
    ids, offsets = synthetic_corpus()
    tokens = np.array([30, 31])
    a, _, dl = _by_hand(model, ids, offsets, tokens)
    starts, pos = token_windows(tokens, offsets, CTX)
    s, p, t = int(starts[0]), int(pos[0]), int(tokens[0])
    x = torch.as_tensor(ids[s:s + p], dtype=torch.long)[None]
    unit = int(np.argmin(np.abs(a[0, :64]) + (np.abs(a[0, :64]) < 1e-3)))  # a small, non-zero unit of layer 0

    def loss(zero: bool) -> float:
        def hook(_m, _i, out):
            out = out.clone()
            out[0, p - 1, unit] = 0.0
            return out

        h = model.gpt_neox.layers[0].mlp.act.register_forward_hook(hook) if zero else None
        with torch.no_grad():
            z = model(input_ids=x).logits[0, p - 1].double()
        if h is not None:
            h.remove()
        return float(torch.logsumexp(z, 0) - z[int(ids[t])])

    exact = loss(True) - loss(False)
    assert exact != 0 and -a[0, unit] * dl[0, unit] == pytest.approx(exact, rel=0.05, abs=1e-7)


def test_agreement_table_is_sklearns_ari_per_pair_and_k():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)

    def table(labels, k):
        return pd.DataFrame({"row": np.arange(len(labels)), "label": labels, "k": k, "seed": 0})

    la, lb = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    got = agreement_table({"gradient": [table(la, 3), table(la % 2, 2)],
                           "activations": [table(lb, 3), table(la % 2, 2)],
                           "attribution": [table(la[::-1].copy(), 3)]})
    assert list(zip(got.a, got.b, got.k)) == [("gradient", "activations", 2), ("gradient", "activations", 3),
                                              ("gradient", "attribution", 3), ("activations", "attribution", 3)]
    assert got.ari.iloc[0] == pytest.approx(1.0)
    assert got.ari.iloc[1] == pytest.approx(adjusted_rand_score(la, lb))
    assert got.ari.iloc[3] == pytest.approx(adjusted_rand_score(lb, la[::-1]))
