"""Model loading (the from_pretrained path) and the model source, training and its divergence, and per-token losses
against a direct computation (finite wherever a token is predicted)."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from schemas import ArtifactValidationError
from schemas.lm import ModelSize
from tasks.lm.suite import batch_starts, neox_config, param_counts, train_lm, training_stream
from tasks.lm.losses import document_windows, per_token_losses, stack_columns
from tasks.lm.model_source import load_causal_lm, model_fingerprint

VOCAB = 97


@pytest.fixture(scope="module")
def saved_neox(tmp_path_factory):
    """A tiny random GPT-NeoX saved with save_pretrained (safetensors), as a local 'pretrained' model."""
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("neox")
    model = GPTNeoXForCausalLM(neox_config(ModelSize(d_model=16, n_layers=2, n_heads=2), VOCAB, 12))
    model.save_pretrained(str(path), safe_serialization=True)
    return path, model.eval()


def test_from_pretrained_loads_safetensors_neox(saved_neox):
    path, original = saved_neox
    assert (path / "model.safetensors").exists() and not list(path.glob("*.bin"))
    model = load_causal_lm(path)
    assert type(model).__name__ == "GPTNeoXForCausalLM" and not model.training
    x = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        assert torch.allclose(model(input_ids=x).logits, original(input_ids=x).logits, atol=1e-6)
    n_all, n_ne = param_counts(model)
    assert n_all - n_ne == 2 * VOCAB * 16  # embed_in + untied unembedding
    assert n_ne == sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
    with pytest.raises(Exception):
        load_causal_lm(path / "missing")
    assert model_fingerprint(str(path), None).startswith("dir:")
    assert model_fingerprint("EleutherAI/pythia-70m", "step143000") == "hub:EleutherAI/pythia-70m@step143000"


def test_windows_cover_every_prediction_once():
    offsets = np.array([0, 1, 6, 20, 31])  # a 1-token doc, docs of 5, 14 and 11 tokens
    starts, lengths = document_windows(offsets, 5)
    predicted = np.concatenate([np.arange(s + 1, s + n) for s, n in zip(starts, lengths)])
    expected = np.setdiff1d(np.arange(31), offsets[:-1])  # all but each document's first token
    assert sorted(predicted.tolist()) == expected.tolist()
    assert lengths.max() <= 5 and lengths.min() >= 2
    for s, n in zip(starts, lengths):  # windows never cross documents
        d = np.searchsorted(offsets, s, side="right") - 1
        assert s + n <= offsets[d + 1]
    with pytest.raises(ValueError):
        document_windows(offsets, 1)


def test_per_token_losses_equal_direct_cross_entropy(saved_neox):
    _, model = saved_neox
    rng = np.random.default_rng(0)
    lengths = [7, 1, 12, 30, 2]  # shorter and longer than the context (12), and a 1-token document
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = rng.integers(0, VOCAB, offsets[-1]).astype(np.int32)
    got = per_token_losses(model, ids, offsets, context_length=12, batch_size=3)
    assert got.dtype == np.float32 and got.shape == ids.shape
    assert np.flatnonzero(np.isnan(got)).tolist() == offsets[:-1].tolist()  # NaN exactly at document starts
    want = np.full(len(ids), np.nan)
    with torch.no_grad():
        for a, b in zip(offsets[:-1], offsets[1:]):
            # the model's own loss on each window of 12 tokens (overlapping by one), position by position
            s = a
            while s + 1 < b:
                x = torch.as_tensor(ids[s:min(s + 12, b)], dtype=torch.long)[None]
                logits = model(input_ids=x).logits[0]
                want[s + 1:s + x.shape[1]] = F.cross_entropy(logits[:-1], x[0, 1:], reduction="none").numpy()
                assert torch.allclose(model(input_ids=x, labels=x).loss,
                                      F.cross_entropy(logits[:-1], x[0, 1:]), atol=1e-6)
                s += 11
    np.testing.assert_allclose(got, want, atol=1e-5, equal_nan=True)
    # batch size does not change the values
    np.testing.assert_allclose(per_token_losses(model, ids, offsets, 12, batch_size=1), got, atol=1e-5,
                               equal_nan=True)


def test_training_same_data_order_and_loss_falls():
    ids = np.tile(np.arange(20, dtype=np.int32), 30)
    offsets = np.array([0, 300, 600])
    stream = training_stream(ids, offsets, eos_token_id=0)
    assert len(stream) == 602 and stream[300] == 0 and stream[601] == 0
    a = batch_starts(len(stream), 8, 4, 10, seed=1)
    assert (a == batch_starts(len(stream), 8, 4, 10, seed=1)).all() and a.max() <= len(stream) - 8
    model, hist = train_lm(ModelSize(d_model=16, n_layers=1, n_heads=2), stream, 21, context_length=8, steps=40,
                           batch_size=8, lr=1e-2, warmup_steps=2, weight_decay=0.0, seed=0, log_every=10)
    assert hist[-1][1] < 0.5 * hist[0][1]  # a repeating sequence is learned
    assert not model.training and model.config.vocab_size == 21


def test_stack_columns_orders_by_nonembedding_params():
    cols = [({"model": "big", "n_params": 50, "n_params_nonembed": 30, "context_length": 8, "tokens": "h"},
             np.array([np.nan, 1.0], np.float32)),
            ({"model": "small", "n_params": 40, "n_params_nonembed": 10, "context_length": 8, "tokens": "h"},
             np.array([np.nan, 2.0], np.float32))]
    arrays, attrs = stack_columns(cols)
    assert attrs["models"] == ["small", "big"] and arrays["loss"][1].tolist() == [2.0, 1.0]
    with pytest.raises(ValueError, match="different tokens"):
        stack_columns([cols[0], ({**cols[1][0], "tokens": "other"}, cols[1][1])])


def test_token_losses_schema(store):
    loss = np.array([[np.nan, np.nan], [2.0, 1.0]], np.float32)
    good = {"loss": loss, "n_params": np.array([40, 50]), "n_params_nonembed": np.array([10, 30])}
    store.write_zarr("lm.token_losses", good, {"models": ["a", "b"], "tokens": "h"})
    with pytest.raises(ArtifactValidationError) as err:
        store.write_zarr("lm.token_losses", dict(good, n_params_nonembed=np.array([30, 10])),
                         {"models": ["a", "b"], "tokens": "h"})
    assert err.value.field == "n_params_nonembed"
    with pytest.raises(ArtifactValidationError) as err:
        store.write_zarr("lm.token_losses", dict(good, loss=loss * -1), {"models": ["a", "b"], "tokens": "h"})
    assert err.value.field == "loss"
    with pytest.raises(ArtifactValidationError) as err:
        store.write_zarr("lm.token_losses", good, {"models": ["a"], "tokens": "h"})
    assert err.value.field == "attrs.models"


def test_a_model_source_is_one_trained_or_one_pretrained_model(tmp_path):
    from pydantic import ValidationError
    from prefect.utilities.hashing import hash_objects

    from storage import ArtifactRef
    from tasks.lm.model_source import ModelSource

    ref = ArtifactRef(kind="lm.model", uri="x", content_hash="ab" * 32, schema_version=1)
    trained = ModelSource.trained(ref)
    assert trained.inputs == [ref] and trained.identity == ref.content_hash and trained.params()["model_name"] is None
    hub = ModelSource.pretrained("EleutherAI/pythia-70m", "step143000")
    assert hub.inputs == [] and hub.identity == "hub:EleutherAI/pythia-70m@step143000"
    # a trained model at a checkpoint it saved is its own model (another identity, another cache key)
    ckpt = ModelSource.trained(ref, "step10")
    assert ckpt.identity == ref.content_hash + "@step10" and hash_objects(ckpt) != hash_objects(trained)
    for bad in ({}, {"ref": ref, "name": "m", "fingerprint": "f"}, {"ref": ref, "fingerprint": "f"},
                {"name": "m"}):  # neither, both, a trained model with a fingerprint, a name without its fingerprint
        with pytest.raises(ValidationError, match="ModelSource"):
            ModelSource(**bad)
    # a task input: the cache key hashes it, and a different revision is a different key
    assert hash_objects(hub) == hash_objects(ModelSource.pretrained("EleutherAI/pythia-70m", "step143000"))
    assert hash_objects(hub) != hash_objects(ModelSource.pretrained("EleutherAI/pythia-70m", "step1000"))


def test_lm_training_that_diverges_fails_naming_the_model_and_learning_rate():
    from schemas.lm import ModelSize
    from tasks.lm.suite import TrainingDivergedError, train_lm

    size = ModelSize(d_model=8, n_layers=1, n_heads=2)
    stream = np.random.default_rng(0).integers(0, 50, size=2000)
    with pytest.raises(TrainingDivergedError, match=r"model L1-d8 diverged.*learning rate 1e\+30"):
        train_lm(size, stream, 50, context_length=16, steps=30, batch_size=4, lr=1e30, warmup_steps=0,
                 weight_decay=0.0, seed=0, log_every=5)
    seen = []
    model, history = train_lm(size, stream, 50, context_length=16, steps=12, batch_size=4, lr=1e-2, warmup_steps=0,
                              weight_decay=0.0, seed=0, log_every=5, progress=lambda s, l: seen.append(s))
    assert seen == [0, 5, 10, 11] and all(np.isfinite(l) for _, l in history)


def test_token_losses_must_be_finite_where_a_token_is_predicted():
    from tasks.lm.losses import NonFiniteLossError, check_finite

    offsets = np.array([0, 3, 4, 7])
    loss = np.array([np.nan, 1.0, 2.0, np.nan, np.nan, 0.5, 0.7], dtype=np.float32)
    check_finite(loss, offsets, "m")  # NaN only at each document's first token
    loss[5] = np.inf
    with pytest.raises(NonFiniteLossError, match="model m gave a non-finite loss .* 1 of 4 predicted tokens"):
        check_finite(loss, offsets, "m")
