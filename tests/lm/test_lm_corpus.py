"""Corpus reading: counts of skipped documents, fatal cases, de-duplication, split, sources."""
from __future__ import annotations

import json

import numpy as np
import pytest

from schemas.lm import CorpusConfig
from tasks.lm.corpus import CorpusError, documents_frames, read_corpus, split_documents


def _files(tmp_path, contents: dict[str, bytes]):
    d = tmp_path / "docs"
    d.mkdir()
    for name, data in contents.items():
        (d / name).write_bytes(data)
    return d


def test_non_utf8_skipped_and_counted(tmp_path):
    d = _files(tmp_path, {"a.txt": b"hello world", "b.txt": b"caf\xe9 latin-1", "c.txt": "naïve ✓".encode(),
                          "d.txt": b"\xff\xfe bad"})
    docs, stats = read_corpus(CorpusConfig(kind="files", path=str(d)))
    assert [p.split("/")[-1] for p in (x.path for x in docs)] == ["a.txt", "c.txt"]
    assert stats.non_utf8 == 2 and stats.seen == 4 and stats.kept == 2
    assert "not UTF-8" in stats.errors[0]


def test_all_bad_is_fatal(tmp_path):
    d = _files(tmp_path, {"a.txt": b"\xe9\xe9", "b.txt": b"\xff"})
    with pytest.raises(CorpusError, match=r"all 2 were rejected \(2 not UTF-8"):
        read_corpus(CorpusConfig(kind="files", path=str(d)))


def test_empty_corpus_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="empty corpus: no files found"):
        read_corpus(CorpusConfig(kind="files", path=str(tmp_path / "empty")))
    with pytest.raises(CorpusError, match="does not exist"):
        read_corpus(CorpusConfig(kind="files", path=str(tmp_path / "nope")))
    d = _files(tmp_path, {"a.txt": b"   \n"})
    with pytest.raises(CorpusError, match="none kept"):
        read_corpus(CorpusConfig(kind="files", path=str(d)))


def test_exact_dedup_and_caps(tmp_path):
    d = _files(tmp_path, {"a.txt": b"same text", "b.txt": b"same text", "c.txt": b"other", "d.txt": b"x" * 50})
    docs, stats = read_corpus(CorpusConfig(kind="files", path=str(d)))
    assert [x.text for x in docs] == ["same text", "other", "x" * 50] and stats.duplicates == 1
    docs, stats = read_corpus(CorpusConfig(kind="files", path=str(d), dedup=False, max_files=2))
    assert [x.text for x in docs] == ["same text", "same text"]
    docs, _ = read_corpus(CorpusConfig(kind="files", path=str(d), max_chars=12))
    assert sum(len(x.text) for x in docs) == 12  # the document crossing the cap is cut


def test_jsonl_source_counts_bad_lines(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join([json.dumps({"text": "one"}), "{not json", json.dumps({"body": "x"}),
                            json.dumps({"text": "two"})]))
    docs, stats = read_corpus(CorpusConfig(kind="jsonl", path=str(f)))
    assert [x.text for x in docs] == ["one", "two"] and stats.unreadable == 2
    assert docs[1].path.endswith("c.jsonl:4")


def test_hf_dataset_from_disk_and_local_files(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"content": ["alpha doc", "beta doc", "alpha doc"]})
    ds.save_to_disk(str(tmp_path / "ds"))
    docs, stats = read_corpus(CorpusConfig(kind="hf", path=str(tmp_path / "ds"), text_field="content"))
    assert [x.text for x in docs] == ["alpha doc", "beta doc"] and stats.duplicates == 1
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"text": "gamma"}) + "\n" + json.dumps({"text": "delta"}) + "\n")
    docs, _ = read_corpus(CorpusConfig(kind="hf", path=str(f)))
    assert [x.text for x in docs] == ["gamma", "delta"]
    with pytest.raises(CorpusError, match="no column 'nope'"):
        read_corpus(CorpusConfig(kind="hf", path=str(tmp_path / "ds"), text_field="nope"))


def test_stdlib_default_is_deterministic_python_source():
    cfg = CorpusConfig(max_files=5, max_chars=50_000)
    a, _ = read_corpus(cfg)
    b, _ = read_corpus(cfg)
    assert [x.path for x in a] == [x.path for x in b] and len(a) == 5
    assert all(x.path.endswith(".py") and "site-packages" not in x.path for x in a)


def test_split_is_seeded_and_by_document(tmp_path):
    s1, s2 = split_documents(20, 0.25, 3), split_documents(20, 0.25, 3)
    assert (s1 == s2).all() and (s1 == "eval").sum() == 5
    assert not (split_documents(20, 0.25, 4) == s1).all()
    assert (split_documents(2, 0.01, 0) == "eval").sum() == 1  # at least one of each
    with pytest.raises(CorpusError, match="at least 2 documents"):
        split_documents(1, 0.5, 0)
    # a pretrained suite scoring a corpus as the paper does: every document, one alone included
    assert (split_documents(7, 1.0, 0) == "eval").all() and split_documents(1, 1.0, 0).tolist() == ["eval"]
    d = _files(tmp_path, {f"{i}.txt": f"doc {i}".encode() for i in range(10)})
    cfg = CorpusConfig(kind="files", path=str(d), eval_fraction=0.3)
    meta, texts = documents_frames(cfg, read_corpus(cfg)[0])
    assert list(meta.doc_id) == list(texts.doc_id) and (meta.split == "eval").sum() == 3
    assert meta.sha256.str.len().eq(64).all() and np.array_equal(meta.n_chars, texts.text.str.len())


def test_unreadable_files_skipped_and_counted(tmp_path, monkeypatch):
    from pathlib import Path

    d = _files(tmp_path, {"a.txt": b"fine", "b.txt": b"locked"})
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "b.txt":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    docs, stats = read_corpus(CorpusConfig(kind="files", path=str(d)))
    assert [x.text for x in docs] == ["fine"] and stats.unreadable == 1
    assert "unreadable (Permission denied)" in stats.errors[0]
