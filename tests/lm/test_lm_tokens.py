"""Tokenizer round trip, tokens layout, and the tokens schema (violations name the field)."""
from __future__ import annotations

import numpy as np
import pytest

from schemas import ArtifactValidationError
from tasks.lm.tokenizer import decode, encode_documents, load_tokenizer, tokens_arrays, train_bpe

TEXTS = ["def add(a, b):\n    return a + b\n", "class Foo:\n    pass\n", "naïve café ✓ 😀 \t tabs\r\n",
         "import os\nprint(os.getcwd())\n"] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(TEXTS, vocab_size=300, min_frequency=1)


def test_bpe_round_trip_and_save_load(tokenizer, tmp_path):
    assert len(tokenizer) == 300
    ids = encode_documents(tokenizer, TEXTS + ["unseen: ü ∑ 𝔘 \x00"])
    for toks, text in zip(ids, TEXTS + ["unseen: ü ∑ 𝔘 \x00"]):
        assert decode(tokenizer, toks) == text  # byte-level: lossless, even on unseen characters
    assert len(ids[0]) < len(TEXTS[0].encode())  # merges were learned
    tokenizer.save_pretrained(str(tmp_path))
    again = load_tokenizer(tmp_path)
    assert encode_documents(again, TEXTS) == encode_documents(tokenizer, TEXTS)
    assert again.eos_token == "<|endoftext|>" and again.pad_token == "<|pad|>"


def test_tokens_arrays_truncate_each_document_first_as_the_paper_does():
    arr = tokens_arrays([[5, 6, 7, 8], [1, 2], [3, 4, 9]], [0, 1, 2], max_tokens=5, max_doc_tokens=3)
    assert arr["ids"].tolist() == [5, 6, 7, 1, 2] and arr["offsets"].tolist() == [0, 3, 5]
    assert arr["doc_id"].tolist() == [0, 1]


def test_tokens_arrays_offsets_and_cap():
    arr = tokens_arrays([[5, 6, 7], [], [8, 9], [1, 2, 3, 4]], [10, 11, 12, 13])
    assert arr["ids"].dtype == np.int32 and arr["ids"].tolist() == [5, 6, 7, 8, 9, 1, 2, 3, 4]
    assert arr["offsets"].tolist() == [0, 3, 5, 9] and arr["doc_id"].tolist() == [10, 12, 13]
    capped = tokens_arrays([[5, 6, 7], [8, 9], [1, 2, 3, 4]], [0, 1, 2], max_tokens=7)
    assert capped["offsets"].tolist() == [0, 3, 5, 7] and capped["ids"].tolist() == [5, 6, 7, 8, 9, 1, 2]
    dropped = tokens_arrays([[5, 6, 7], [8, 9]], [0, 1], max_tokens=4)  # a 1-token remainder is dropped
    assert dropped["offsets"].tolist() == [0, 3]


def _write(store, arrays, vocab=10):
    return store.write_zarr("lm.tokens", arrays, {"vocab_size": vocab, "split": "eval"})


GOOD = {"ids": np.array([1, 2, 3, 4], np.int32), "offsets": np.array([0, 2, 4], np.int64),
        "doc_id": np.array([0, 1], np.int64)}


def test_tokens_schema_accepts_good_and_names_bad_field(store):
    ref = _write(store, GOOD)
    arrays, attrs = store.read_zarr(ref)
    assert arrays["ids"].tolist() == [1, 2, 3, 4] and attrs["vocab_size"] == 10
    cases = [
        (dict(GOOD, ids=np.array([1, 2, 3, 10], np.int32)), "ids", "vocab_size"),
        (dict(GOOD, ids=np.array([1, -2, 3, 4], np.int32)), "ids", ">= 0"),
        (dict(GOOD, ids=GOOD["ids"].astype(np.int64)), "ids", "dtype"),
        (dict(GOOD, offsets=np.array([0, 3, 2], np.int64)), "offsets", "non-decreasing"),
        (dict(GOOD, offsets=np.array([0, 2, 3], np.int64)), "offsets", "number of tokens"),
        (dict(GOOD, offsets=np.array([1, 2, 4], np.int64)), "offsets", "start at 0"),
        (dict(GOOD, doc_id=np.array([0, 1, 2], np.int64)), "offsets", "n_docs + 1"),
    ]
    for arrays, field, problem in cases:
        with pytest.raises(ArtifactValidationError) as err:
            _write(store, arrays)
        assert err.value.field == field and problem in err.value.problem, (field, str(err.value))
    with pytest.raises(ArtifactValidationError) as err:
        store.write_zarr("lm.tokens", GOOD, {"split": "eval"})
    assert err.value.field == "attrs.vocab_size"


def test_tokens_schema_checked_on_read(store):
    import zarr

    ref = _write(store, GOOD)
    z = zarr.open_group(ref.uri, mode="r+")
    z["ids"][3] = 99  # corrupt after the write
    with pytest.raises(ArtifactValidationError) as err:
        store.read_zarr(ref)
    assert err.value.field == "ids"
