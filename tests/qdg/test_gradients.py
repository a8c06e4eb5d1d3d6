"""QDG per-token gradients: batched = naive per-token (1e-5), the loss of the gradient's forward pass = the stored token
loss, parameter exclusion, blocks (validated, round-trip, bounded memory path), and cached blocks when n grows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from schemas.qdg import GradientConfig, SelectionConfig
from tasks.lm.losses import per_token_losses
from tasks.lm.model_source import ModelSource
from tasks.qdg import gradients as grad_mod
from tasks.qdg.gradients import (GradientConfigError, TokenGradients, backward_plan, gradient_block,
                                 gradient_block_plan, gradient_parameter_names, naive_token_gradients)
from tasks.qdg.selection import select_tokens, token_windows
from tiny_lm import CTX, random_gpt2, random_neox, save_model, suite_store, synthetic_corpus, tiny_suite


def _tokens(offsets: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n predicted tokens, several sharing a window, from documents longer and shorter than the context."""
    predicted = np.setdiff1d(np.arange(offsets[-1]), offsets[:-1])
    return np.sort(np.random.default_rng(seed).choice(predicted, n, replace=False))


def _batched(model, names, ids, offsets, tokens, ppb):
    tg = TokenGradients(model, names, CTX, positions_per_backward=ppb)
    g = np.full((len(tokens), tg.dim), np.nan, dtype=np.float32)
    loss = np.full(len(tokens), np.nan, dtype=np.float32)

    def emit(rows, raw, losses):
        g[rows], loss[rows] = raw.numpy(), losses.numpy()

    tg.compute(ids, offsets, tokens, emit)
    return g, loss


@pytest.mark.parametrize("which", ["trained-suite", "neox", "gpt2"])
def test_batched_gradients_equal_naive_and_reproduce_the_token_losses(which, tmp_path):
    from tasks.lm.model_source import load_causal_lm

    built = {"trained-suite": lambda: tiny_suite()["d16"], "neox": random_neox, "gpt2": random_gpt2}[which]()
    model = load_causal_lm(save_model(built, tmp_path / which))  # the from_pretrained path, as the task loads it
    ids, offsets = synthetic_corpus()
    tokens = _tokens(offsets, 28)
    starts, _ = token_windows(tokens, offsets, CTX)
    assert len(np.unique(starts)) < len(tokens)  # several tokens share a window: batched backward passes
    names = gradient_parameter_names(model, GradientConfig())
    ref, ref_loss = naive_token_gradients(model, names, ids, offsets, tokens, CTX)
    got, loss = _batched(model, names, ids, offsets, tokens, ppb=4)
    assert np.abs(ref).max() > 1e-2
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    # the loss of the gradient's forward pass is the stored per-token loss
    stored = per_token_losses(model, ids, offsets, CTX, batch_size=4)[tokens]
    np.testing.assert_allclose(loss, stored, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ref_loss, stored, rtol=0, atol=1e-5)


def test_backward_plan_batches_windows_within_the_memory_bound():
    starts = np.array([0, 0, 0, 0, 0, 16, 16, 31, 46, 46, 61])
    pos = np.array([3, 1, 9, 4, 2, 5, 1, 7, 2, 3, 1])
    batches = backward_plan(starts, pos, positions_per_backward=4)
    rows = [r for b in batches for u in b for r in u.tolist()]
    assert sorted(rows) == list(range(len(starts)))  # every row once
    for b in batches:
        assert sum(len(u) for u in b) <= 4 and len({len(u) for u in b}) == 1  # bounded, one k per batch
        for u in b:
            assert len(set(starts[u].tolist())) == 1  # one window per unit
    assert any(len(u) > 1 for b in batches for u in b)


def test_excluded_parameters_and_patterns():
    neox, gpt2 = random_neox(), random_gpt2()
    names = gradient_parameter_names(neox, GradientConfig())
    excluded = ("embed_in", "embed_out", "lm_head", "layernorm", "layer_norm")  # by name, independently
    assert not [n for n in names if any(s in n for s in excluded)]
    expect = sum(p.numel() for n, p in neox.named_parameters() if not any(s in n for s in excluded))
    assert TokenGradients(neox, names, CTX).dim == expect
    names2 = gradient_parameter_names(gpt2, GradientConfig())  # tied unembedding, position embeddings, ln_*
    assert not [n for n in names2 if any(s in n for s in ("wte", "wpe", "ln_", "lm_head"))]
    assert sum(p.numel() for n, p in gpt2.named_parameters() if n in names2) == sum(
        p.numel() for n, p in gpt2.named_parameters() if not any(s in n for s in ("wte", "wpe", "ln_")))
    # nothing excluded by type: every parameter (the tied unembedding once)
    all_names = gradient_parameter_names(gpt2, GradientConfig(exclude_modules=[]))
    assert all_names == [n for n, _ in gpt2.named_parameters()]
    mlp = gradient_parameter_names(neox, GradientConfig(include=[r"\.mlp\."], exclude=[r"bias$"]))
    assert mlp and all(".mlp." in n and not n.endswith("bias") for n in mlp)
    with pytest.raises(GradientConfigError, match=r"no parameter left.*include = \['attention'\], exclude = "
                                                  r"\['attention'\]"):
        gradient_parameter_names(neox, GradientConfig(include=["attention"], exclude=["attention"]))


def test_block_plan_keeps_full_blocks_when_n_grows():
    assert gradient_block_plan(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert gradient_block_plan(13, 4)[:2] == gradient_block_plan(10, 4)[:2]
    assert gradient_block_plan(3, 8) == [(0, 3)]
    with pytest.raises(ValueError):
        gradient_block_plan(0, 4)


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    from storage import Store

    store = Store(tmp_path_factory.mktemp("qdg-grad") / "store")
    refs = suite_store(store, tiny_suite())
    cfg = SelectionConfig(max_loss_nats=1.5, n_tokens=10, seed=1)
    sel = select_tokens.fn(refs["tokens"], refs["token_losses"], model=ModelSource.trained(refs["models"]["d16"]),
                           cfg=cfg, context_length=CTX, store=store.url)
    return store, refs, sel


@pytest.mark.parametrize("in_memory,block_rows", [(True, 6), (False, 5)])  # (other blocks: content-addressed)
def test_gradient_blocks_validate_round_trip_and_equal_the_reference(selected, in_memory, block_rows, monkeypatch):
    store, refs, sel = selected
    if not in_memory:  # the large-block path: written row by row, one row per Zarr chunk
        monkeypatch.setattr(grad_mod, "IN_MEMORY_BLOCK_BYTES", 0)
    cfg = GradientConfig(device="cpu", positions_per_backward=4)
    d16 = ModelSource.trained(refs["models"]["d16"])
    blocks = [gradient_block.fn(sel, refs["tokens"], model=d16, start=a, stop=b, cfg=cfg, context_length=CTX,
                                dtype="float32", store=store.url) for a, b in gradient_block_plan(10, block_rows)]
    df = store.read_table(sel)
    model = tiny_suite()["d16"]
    names = gradient_parameter_names(model, GradientConfig())
    raw, _ = naive_token_gradients(model, names, refs["ids"], refs["offsets"], df["token_index"].to_numpy(), CTX)
    parts = []
    for ref in blocks:
        group = store.open_zarr(ref)  # validated on read: unit rows, increasing rows, finite
        assert group["g"].chunks[0] == (group["g"].shape[0] if in_memory else 1)
        arrays, attrs = store.read_zarr(ref)
        assert attrs["dim"] == raw.shape[1] == arrays["g"].shape[1] and attrs["projection"] == "none"
        assert attrs["model"] == "d16" and attrs["parameters"] == names
        parts.append(arrays)
    g = np.concatenate([p["g"] for p in parts])
    assert np.concatenate([p["row"] for p in parts]).tolist() == list(range(10))
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(g, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(np.concatenate([p["norm"] for p in parts]), np.linalg.norm(raw, axis=1), rtol=1e-5)
    np.testing.assert_allclose(np.concatenate([p["loss"] for p in parts]), df["loss"], atol=1e-5)
    # projected: the same rows through one seeded sparse matrix, then normalised
    proj = gradient_block.fn(sel, refs["tokens"], model=d16, start=0, stop=10,
                             cfg=cfg.model_copy(update={"projection_dims": 300}), context_length=CTX, dtype="float32",
                             store=store.url)
    arrays, attrs = store.read_zarr(proj)
    assert arrays["g"].shape == (10, 300) and attrs["projection"]["dims"] == 300
    assert attrs["projection"]["seed"] == 0 and 0 < attrs["projection"]["density"] < 1
    np.testing.assert_allclose(np.linalg.norm(arrays["g"], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(arrays["norm"], np.linalg.norm(raw, axis=1), rtol=1e-5)


def test_gradient_block_fails_before_work_on_patterns_that_exclude_everything(selected):
    store, refs, sel = selected
    with pytest.raises(GradientConfigError, match=r"exclude = \['\.'\]"):
        gradient_block.fn(sel, refs["tokens"], model=ModelSource.trained(refs["models"]["d16"]), start=0, stop=4,
                          cfg=GradientConfig(exclude=["."], device="cpu"), context_length=CTX, dtype="float32",
                          store=store.url)


def test_pretrained_model_by_directory(selected, tmp_path):
    store, refs, sel = selected
    path = save_model(tiny_suite()["d16"], tmp_path / "pretrained")
    cfg = GradientConfig(device="cpu")
    common = dict(start=0, stop=5, cfg=cfg, context_length=CTX, dtype="float32", store=store.url)
    by_dir = store.read_zarr(gradient_block.fn(sel, refs["tokens"], model=ModelSource.pretrained(str(path)),
                                               **common))[0]
    by_ref = store.read_zarr(gradient_block.fn(sel, refs["tokens"], model=ModelSource.trained(refs["models"]["d16"]),
                                               **common))[0]
    np.testing.assert_allclose(by_dir["g"], by_ref["g"], atol=1e-6)


def test_blocks_keep_their_cache_keys_when_the_selection_grows(prefect_server, selected):
    from prefect import flow

    store, refs, _ = selected
    cfg = GradientConfig(device="cpu", block_rows=4)

    @flow
    def grads(n_tokens: int):
        model = ModelSource.trained(refs["models"]["d16"])
        sel = select_tokens(refs["tokens"], refs["token_losses"], model=model,
                            cfg=SelectionConfig(max_loss_nats=1.5, n_tokens=n_tokens, seed=5), context_length=CTX,
                            store=store.url)
        return [gradient_block(sel, refs["tokens"], model=model, start=a, stop=b, cfg=cfg, context_length=CTX,
                               dtype="float32", store=store.url, return_state=True)
                for a, b in gradient_block_plan(n_tokens, cfg.block_rows)]

    first = grads(6)
    assert [s.name for s in first] == ["Completed", "Completed"]
    again = grads(10)  # a larger selection, of which the first 6 rows are the same
    assert [s.name for s in again] == ["Cached", "Completed", "Completed"]
    assert again[0].result().content_hash == first[0].result().content_hash


def test_a_block_with_rows_that_are_not_unit_vectors_is_refused(store):
    from schemas import ArtifactValidationError

    g = np.eye(3, 5, dtype=np.float32)
    g[1] *= 2.0
    arrays = {"g": g, "row": np.arange(3), "norm": np.ones(3, np.float32), "loss": np.ones(3, np.float32)}
    with pytest.raises(ArtifactValidationError, match=r"'g'.*L2-normalised \(row 1 has norm 2"):
        store.write_zarr("qdg.gradient_block", arrays, {"model": "m", "dim": 5, "projection": "none"})
    assert not list((Path(store.root) / "_tmp").iterdir())  # nothing half-written is left


# ------------------------------------------------------------------------- the other parameter-space representations
def test_logit_gradient_equals_a_finite_difference_of_the_target_logit():
    from tasks.qdg.selection import window_batch

    model = random_neox(seed=3).double()
    ids, offsets = synthetic_corpus()
    tokens = _tokens(offsets, 6, seed=2)
    names = gradient_parameter_names(model, GradientConfig())
    tg = TokenGradients(model, names, CTX, positions_per_backward=4, output="logit")
    got = np.zeros((len(tokens), tg.dim), np.float32)
    tg.compute(ids, offsets, tokens, lambda rows, raw, _: got.__setitem__(rows, raw.numpy()))
    loss_grad, _ = naive_token_gradients(model, names, ids, offsets, tokens, CTX)
    assert np.abs(got - loss_grad).max() > 1e-3  # not the loss gradient
    params = dict(model.named_parameters())
    starts, pos = token_windows(tokens, offsets, CTX)
    rng = np.random.default_rng(0)
    for i, (s, p, t) in enumerate(zip(starts, pos, tokens)):
        x = window_batch(ids, np.array([s]), np.array([p]))
        v = {n: torch.as_tensor(rng.standard_normal(tuple(params[n].shape))) for n in names}

        def logit(eps: float) -> float:
            moved = {n: params[n].detach() + eps * v[n] for n in names}
            with torch.no_grad():
                out = torch.func.functional_call(model, moved, (), {"input_ids": x}).logits[0, p - 1]
            return float(out[int(ids[t])])

        eps = 1e-5
        fd = (logit(eps) - logit(-eps)) / (2 * eps)
        analytic = float(np.dot(got[i].astype(np.float64), np.concatenate([v[n].numpy().ravel() for n in names])))
        assert analytic == pytest.approx(fd, rel=1e-4, abs=1e-6)


def test_abs_gradient_is_the_absolute_gradient_renormalised_computed_or_read(selected):
    from tasks.qdg.lm_representations import abs_gradient_block
    from tasks.qdg.projection import Projector

    store, refs, sel = selected
    df = store.read_table(sel)
    model = tiny_suite()["d16"]
    names = gradient_parameter_names(model, GradientConfig())
    raw, _ = naive_token_gradients(model, names, refs["ids"], refs["offsets"], df["token_index"].to_numpy(), CTX)
    expect = np.abs(raw) / np.linalg.norm(np.abs(raw), axis=1, keepdims=True)
    cfg = GradientConfig(device="cpu", positions_per_backward=4)

    def block(representation, c=cfg):
        return gradient_block.fn(sel, refs["tokens"], model=ModelSource.trained(refs["models"]["d16"]), start=0,
                                 stop=10, cfg=c, context_length=CTX, dtype="float32", representation=representation,
                                 store=store.url)

    plain = block("gradient")
    for ref in (block("abs_gradient"), abs_gradient_block.fn(plain, store=store.url)):
        arrays, attrs = store.read_zarr(ref)
        assert attrs["representation"] == "abs_gradient" and attrs["dim"] == raw.shape[1]
        np.testing.assert_allclose(arrays["g"], expect, atol=1e-5)
        np.testing.assert_allclose(arrays["norm"], np.linalg.norm(raw, axis=1), rtol=1e-5)
        np.testing.assert_allclose(arrays["loss"], df["loss"], atol=1e-5)
    # projected: |g| is taken before the projection, not after
    arrays, _ = store.read_zarr(block("abs_gradient", cfg.model_copy(update={"projection_dims": 300})))
    proj = Projector(raw.shape[1], 300, 0, torch.device("cpu"))(torch.from_numpy(np.abs(raw))).numpy()
    np.testing.assert_allclose(arrays["g"], proj / np.linalg.norm(proj, axis=1, keepdims=True), atol=1e-5)
    with pytest.raises(ValueError, match="unprojected gradient block"):
        abs_gradient_block.fn(block("gradient", cfg.model_copy(update={"projection_dims": 300})), store=store.url)
