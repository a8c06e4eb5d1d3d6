"""QDG selection: threshold, induction filter, seeded prefix-stable subsample, the windows of the losses, the predicted
token, and the clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from schemas.qdg import SelectionConfig
from tasks.lm.losses import document_windows
from tasks.lm.model_source import ModelSource
from tasks.qdg.selection import (SelectionError, induction_mask, model_column, select_tokens, selection_candidates,
                                 subsample, token_windows)
from tiny_lm import CTX, suite_store, tiny_suite


def test_induction_mask_on_a_planted_sequence():
    doc0 = [5, 6, 7, 1, 5, 6, 7, 5, 6, 8, 5, 6, 7]
    doc1 = [6, 7, 5, 6, 7]  # (5, 6, 7) again, but first in this document; (6, 7, 5) crosses nothing
    ids = np.array(doc0 + doc1)
    offsets = np.array([0, len(doc0), len(doc0) + len(doc1)])
    got = np.flatnonzero(induction_mask(ids, offsets)).tolist()
    # doc0: (5, 6, 7) first ends at 2 and repeats ending at 6 and 12; every other trigram is new. doc1: all its
    # trigrams are new in doc1 (documents do not see each other), and none spans the boundary
    assert got == [6, 12]
    # a trigram split by a document boundary is not a trigram
    ids2 = np.array([1, 2, 3, 1, 2, 3])
    assert induction_mask(ids2, np.array([0, 4, 6])).tolist() == [False] * 6
    assert induction_mask(ids2, np.array([0, 6])).tolist() == [False] * 5 + [True]


def test_token_windows_are_the_windows_that_computed_the_losses():
    offsets = np.array([0, 1, 6, 40, 71])
    for ctx in (2, 5, 12):
        starts, lengths = document_windows(offsets, ctx)
        expect = {}  # token -> (window start, position) from the losses' own windows
        for s, n in zip(starts.tolist(), lengths.tolist()):
            for p in range(1, n):
                assert s + p not in expect  # every token predicted once
                expect[s + p] = (s, p)
        tokens = np.array(sorted(expect))
        got_s, got_p = token_windows(tokens, offsets, ctx)
        assert [(int(a), int(b)) for a, b in zip(got_s, got_p)] == [expect[t] for t in tokens.tolist()]
    with pytest.raises(ValueError, match="first of its document"):
        token_windows(np.array([6]), offsets, 5)


def test_candidates_threshold_induction_and_clear_errors():
    ids = np.array([5, 6, 7, 1, 5, 6, 7, 2, 3, 4])
    offsets = np.array([0, 10])
    loss = np.array([np.nan, 0.05, 0.5, 0.01, 0.02, 0.03, 0.04, 0.2, 0.09, 0.08], dtype=np.float32)
    cfg = SelectionConfig(max_loss_nats=0.1, n_tokens=2, exclude_induction=True)
    cand, counts = selection_candidates(loss, ids, offsets, cfg, "m")
    assert cand.tolist() == [1, 3, 4, 5, 8, 9]  # below 0.1, minus the induction token 6
    assert counts == {"predicted": 9, "below_threshold": 7, "induction_dropped": 1, "candidates": 6}
    cand, _ = selection_candidates(loss, ids, offsets, cfg.model_copy(update={"exclude_induction": False}), "m")
    assert 6 in cand.tolist()
    with pytest.raises(SelectionError, match=r"max_loss_nats = 0.001 selects no token: the lowest loss under model "
                                             r"'m' is 0.01 nats.*raise selection.max_loss_nats"):
        selection_candidates(loss, ids, offsets, cfg.model_copy(update={"max_loss_nats": 0.001}), "m")
    with pytest.raises(SelectionError, match=r"only 6 tokens qualify \(7 of 9 have loss < 0.1 nats under model 'm', "
                                             r"of which 1 induction.*n_tokens = 50: lower selection.n_tokens"):
        selection_candidates(loss, ids, offsets, cfg.model_copy(update={"n_tokens": 50}), "m")
    assert model_column(["a", "b"], "smallest") == 0 and model_column(["a", "b"], "b") == 1
    with pytest.raises(SelectionError, match=r"selection.model 'c' is not a model"):
        model_column(["a", "b"], "c")


def test_subsample_is_seeded_and_a_prefix_of_larger_selections():
    cand = np.arange(100, 400, 3)
    a = subsample(cand, 20, seed=1)
    assert a.tolist() == subsample(cand, 20, seed=1).tolist()
    assert a.tolist() != subsample(cand, 20, seed=2).tolist()
    assert subsample(cand, 35, seed=1)[:20].tolist() == a.tolist()
    assert len(set(a.tolist())) == 20 and set(a.tolist()) <= set(cand.tolist())


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from storage import Store

    models = tiny_suite()
    store = Store(tmp_path_factory.mktemp("qdg-sel") / "store")
    return store, suite_store(store, models), models


def test_select_tokens_table(suite):
    store, refs, models = suite
    cfg = SelectionConfig(model="smallest", max_loss_nats=1.5, n_tokens=12, seed=3)
    ref = select_tokens.fn(refs["tokens"], refs["token_losses"], model=ModelSource.trained(refs["models"]["d16"]),
                           cfg=cfg, context_length=CTX, store=store.url)
    df = store.read_table(ref)  # validated against qdg.selection on read
    assert df["row"].tolist() == list(range(12))
    ids, offsets, loss = refs["ids"], refs["offsets"], refs["loss"]["d16"]
    idx = df["token_index"].to_numpy()
    assert (loss[idx] < 1.5).all() and not induction_mask(ids, offsets)[idx].any()
    np.testing.assert_array_equal(df["loss"].to_numpy(), loss[idx].astype(np.float64))
    doc = np.searchsorted(offsets, idx, side="right") - 1
    assert (df["doc_id"].to_numpy() == doc + 100).all()
    assert (df["position"].to_numpy() == idx - offsets[doc]).all() and (df["target"] == ids[idx]).all()
    # the predicted token is the argmax of the full window that computed the loss, computed here independently
    starts, pos = token_windows(idx, offsets, CTX)
    with torch.no_grad():
        for (s, p, t, pred) in zip(starts, pos, idx, df["predicted"]):
            end = min(s + CTX, offsets[np.searchsorted(offsets, t, side="right")])
            logits = models["d16"](input_ids=torch.as_tensor(ids[s:end], dtype=torch.long)[None]).logits[0]
            assert int(logits[p - 1].argmax()) == pred
    # the same config selects the same rows; a larger n_tokens extends them
    ref2 = select_tokens.fn(refs["tokens"], refs["token_losses"], model=ModelSource.trained(refs["models"]["d16"]),
                            cfg=cfg.model_copy(update={"n_tokens": 16}), context_length=CTX, store=store.url)
    assert store.read_table(ref2)["token_index"].tolist()[:12] == idx.tolist()


def test_select_tokens_errors_name_what_to_change(suite):
    store, refs, _ = suite
    args = (refs["tokens"], refs["token_losses"])
    d16, d24 = ModelSource.trained(refs["models"]["d16"]), ModelSource.trained(refs["models"]["d24"])
    with pytest.raises(SelectionError, match="not the selection model 'd16'"):
        select_tokens.fn(*args, model=d24, cfg=SelectionConfig(n_tokens=2, max_loss_nats=1.5), context_length=CTX,
                         store=store.url)
    with pytest.raises(SelectionError, match="context_length 8 differs from the 16"):
        select_tokens.fn(*args, model=d16, cfg=SelectionConfig(n_tokens=2, max_loss_nats=1.5), context_length=8,
                         store=store.url)
    with pytest.raises(SelectionError, match="only .* tokens qualify"):
        select_tokens.fn(*args, model=d24, cfg=SelectionConfig(model="d24", n_tokens=100000, max_loss_nats=4.5),
                         context_length=CTX, store=store.url)
