"""Corpus: read documents from a source, de-duplicate, split train/eval by document, store them.

Sources (`CorpusConfig.kind`): the Python standard library's own `.py` files (default: real text that every
machine with Python has), a directory or glob of text files, JSONL files, or a Hugging Face `datasets` dataset.
Files that are not UTF-8 are skipped and counted; unreadable files too; a corpus with no usable document is an
error (CorpusError) that says why.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from schemas.errors import UserInputError
from schemas.lm import CorpusConfig
from storage import ArtifactRef, Store
from storage.fingerprint import dir_fingerprint, files_fingerprint
from tasks.caching import quanta_task


class CorpusError(UserInputError):
    """The corpus is empty, unreadable, or every document was rejected (a user error: `quanta run` exits 2)."""


@dataclass
class Document:
    path: str
    text: str


@dataclass
class CorpusStats:
    """Counts of what the reader saw and rejected."""

    seen: int = 0
    non_utf8: int = 0
    unreadable: int = 0
    too_short: int = 0
    duplicates: int = 0
    kept: int = 0
    truncated_total: bool = False
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "errors"} | {"first_errors": self.errors[:5]}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _list_files(cfg: CorpusConfig) -> list[Path]:
    if cfg.kind == "stdlib":
        root, pattern = stdlib_dir(), cfg.pattern or "**/*.py"
    else:
        root, pattern = Path(os.path.expanduser(cfg.path)), cfg.pattern or "**/*"
    if root.is_dir():
        files = [p for p in root.glob(pattern) if p.is_file()]
        where = f"{root} (pattern {pattern!r})"
    elif root.is_file():
        files, where = [root], str(root)
    else:  # a glob
        files = [Path(p) for p in glob.glob(str(root), recursive=True) if Path(p).is_file()]
        where = f"glob {str(root)!r}"
        if not files and not any(ch in str(root) for ch in "*?["):
            raise CorpusError(f"corpus path does not exist: {root}")
    if cfg.kind == "stdlib":  # the standard library's own source, not installed third-party packages
        files = [p for p in files if not {"site-packages", "dist-packages"} & set(p.parts)]
    if not files:
        raise CorpusError(f"empty corpus: no files found in {where}")
    # deterministic order on every machine: by path relative to the root
    base = root if root.is_dir() else Path("/")
    return sorted(files, key=lambda p: str(p.relative_to(base)) if p.is_relative_to(base) else str(p))


def corpus_files(cfg: CorpusConfig) -> list[Path]:
    """The candidate files of a stdlib/files/jsonl corpus, in reading order; CorpusError (one line naming the path)
    when the path does not exist or holds no file. A cheap check for before any work (flows.lm_losses.preflight)."""
    return _list_files(cfg)


def _read_text(path: Path, stats: CorpusStats) -> str | None:
    try:
        raw = path.read_bytes()
    except OSError as e:
        stats.unreadable += 1
        stats.errors.append(f"{path}: unreadable ({e.strerror or e})")
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        stats.non_utf8 += 1
        stats.errors.append(f"{path}: not UTF-8 (byte {e.start})")
        return None


def _iter_files(cfg: CorpusConfig, stats: CorpusStats):
    for p in _list_files(cfg):
        stats.seen += 1
        text = _read_text(p, stats)
        if text is not None:
            yield Document(str(p), text)


def _iter_jsonl(cfg: CorpusConfig, stats: CorpusStats):
    for p in _list_files(cfg):
        text = _read_text(p, stats)
        if text is None:
            stats.seen += 1
            continue
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            stats.seen += 1
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                stats.unreadable += 1
                stats.errors.append(f"{p}:{i + 1}: invalid JSON ({e.msg})")
                continue
            value = rec.get(cfg.text_field) if isinstance(rec, dict) else None
            if not isinstance(value, str):
                stats.unreadable += 1
                stats.errors.append(f"{p}:{i + 1}: no string field {cfg.text_field!r}")
                continue
            yield Document(f"{p}:{i + 1}", value)


def load_hf_dataset(cfg: CorpusConfig):
    """A `datasets` Dataset: a `save_to_disk` directory, local data files (json/jsonl/csv/parquet/txt), or a
    hub name (needs network; kept for machines that have it)."""
    import datasets

    path = os.path.expanduser(cfg.path)
    p = Path(path)
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()
                       or (p / "state.json").exists()):
        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            if cfg.hf_split not in ds:
                raise CorpusError(f"dataset at {path} has no split {cfg.hf_split!r} (splits: {list(ds)})")
            ds = ds[cfg.hf_split]
        return ds
    if p.is_file() or any(ch in path for ch in "*?["):
        ext = p.suffix.lstrip(".").lower()
        builder = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet", "txt": "text"}.get(ext)
        if builder is None:
            raise CorpusError(f"cannot tell the format of dataset file {path} (use .jsonl/.json/.csv/.parquet/.txt)")
        return datasets.load_dataset(builder, data_files=path, split=cfg.hf_split)
    return datasets.load_dataset(path, cfg.hf_config, split=cfg.hf_split)  # hub name (online only)


def _iter_hf(cfg: CorpusConfig, stats: CorpusStats):
    ds = load_hf_dataset(cfg)
    if cfg.text_field not in ds.column_names:
        raise CorpusError(f"dataset {cfg.path} has no column {cfg.text_field!r} (columns: {ds.column_names})")
    for i, value in enumerate(ds[cfg.text_field]):
        stats.seen += 1
        if not isinstance(value, str):
            stats.unreadable += 1
            stats.errors.append(f"{cfg.path}:{i}: field {cfg.text_field!r} is not a string")
            continue
        yield Document(f"{cfg.path}:{i}", value)


def read_corpus(cfg: CorpusConfig) -> tuple[list[Document], CorpusStats]:
    """Read, filter, de-duplicate and cap the documents of a corpus. Returns (documents, stats).

    Caps apply in the source's deterministic order: at most `max_files` documents and `max_chars` characters
    in all (the document that crosses the cap is cut). Raises CorpusError when nothing usable remains."""
    stats = CorpusStats()
    reader = {"stdlib": _iter_files, "files": _iter_files, "jsonl": _iter_jsonl, "hf": _iter_hf}[cfg.kind]
    docs: list[Document] = []
    seen_hashes: set[str] = set()
    total = 0
    for doc in reader(cfg, stats):
        text = doc.text
        if cfg.max_doc_chars is not None:
            text = text[:cfg.max_doc_chars]
        if cfg.max_chars is not None and total + len(text) > cfg.max_chars:
            text = text[:cfg.max_chars - total]
            stats.truncated_total = True
        if len(text) < cfg.min_doc_chars or not text.strip():
            stats.too_short += 1
            if stats.truncated_total:
                break
            continue
        h = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if cfg.dedup and h in seen_hashes:
            stats.duplicates += 1
            continue
        seen_hashes.add(h)
        docs.append(Document(doc.path, text))
        total += len(text)
        if (cfg.max_files is not None and len(docs) >= cfg.max_files) or stats.truncated_total:
            break
    stats.kept = len(docs)
    if not docs:
        bad = stats.non_utf8 + stats.unreadable
        if stats.seen and bad == stats.seen:
            raise CorpusError(f"no usable document: all {stats.seen} were rejected ({stats.non_utf8} not UTF-8, "
                              f"{stats.unreadable} unreadable); first: {stats.errors[:3]}")
        raise CorpusError(f"empty corpus: {stats.seen} document(s) seen, none kept ({stats.too_short} empty or "
                          f"shorter than min_doc_chars={cfg.min_doc_chars}, {stats.duplicates} duplicates)")
    return docs, stats


def split_documents(n_docs: int, eval_fraction: float, seed: int) -> np.ndarray:
    """A seeded split by document: array of 'train'/'eval' of length n_docs, at least one of each when n>=2;
    eval_fraction = 1 puts every document in 'eval' (a pretrained suite scoring a corpus in its own order)."""
    if eval_fraction >= 1:
        return np.full(n_docs, "eval", dtype=object)
    if n_docs < 2:
        raise CorpusError(f"need at least 2 documents for a train/eval split, got {n_docs}")
    n_eval = min(n_docs - 1, max(1, int(round(eval_fraction * n_docs))))
    perm = np.random.default_rng(seed).permutation(n_docs)
    split = np.full(n_docs, "train", dtype=object)
    split[perm[:n_eval]] = "eval"
    return split


def documents_frames(cfg: CorpusConfig, docs: list[Document]) -> tuple[pd.DataFrame, pd.DataFrame]:
    split = split_documents(len(docs), cfg.eval_fraction, cfg.seed)
    meta = pd.DataFrame({
        "doc_id": np.arange(len(docs), dtype=np.int64),
        "source": [cfg.kind] * len(docs),
        "path": [d.path for d in docs],
        "n_chars": np.array([len(d.text) for d in docs], dtype=np.int64),
        "sha256": [hashlib.sha256(d.text.encode("utf-8")).hexdigest() for d in docs],
        "split": split.astype(str),
    })
    texts = pd.DataFrame({"doc_id": meta.doc_id.to_numpy(), "text": [d.text for d in docs]})
    return meta, texts


def corpus_fingerprint(cfg: CorpusConfig) -> str:
    """What the corpus's content is, for the cache key: the fingerprint of its candidate files (paths, sizes, mtimes,
    hashes; storage.fingerprint), with the Python version for the stdlib corpus. A dataset by hub name (no local
    files) is identified by its name, config and split."""
    if cfg.kind == "hf" and not Path(os.path.expanduser(cfg.path)).exists():
        return f"hub:{cfg.path}:{cfg.hf_config}:{cfg.hf_split}"
    if cfg.kind == "hf" and Path(os.path.expanduser(cfg.path)).is_dir():
        return f"dir:{dir_fingerprint(os.path.expanduser(cfg.path))}"
    files = _list_files(cfg)
    prefix = f"python {sys.version.split()[0]}:" if cfg.kind == "stdlib" else ""
    return prefix + files_fingerprint(files)


@quanta_task(name="lm-corpus")
def build_corpus(*, cfg: CorpusConfig, fingerprint: str, store: str) -> dict[str, ArtifactRef]:
    """Read the corpus and store {"documents": lm.documents table, "texts": lm.texts table}. `fingerprint`
    (`corpus_fingerprint(cfg)`) makes the cache key follow the files' content, not their names."""
    docs, stats = read_corpus(cfg)
    meta, texts = documents_frames(cfg, docs)
    st = Store(store)
    params = {"corpus": cfg.model_dump(mode="json"), "fingerprint": fingerprint, "stats": stats.as_dict()}
    if cfg.kind == "stdlib":
        params["stdlib"] = str(stdlib_dir())
    docs_ref = st.write_table("lm.documents", meta, params=params)
    texts_ref = st.write_table("lm.texts", texts, inputs=[docs_ref], params={"corpus": cfg.model_dump(mode="json")})
    print(f"corpus: kept {stats.kept} documents ({int(meta.n_chars.sum())} chars; {stats.non_utf8} not UTF-8, "
          f"{stats.unreadable} unreadable, {stats.duplicates} duplicates skipped); "
          f"{int((meta.split == 'eval').sum())} eval")
    return {"documents": docs_ref, "texts": texts_ref}


def load_texts(st: Store, docs_ref: ArtifactRef, texts_ref: ArtifactRef, split: str | None = None) -> pd.DataFrame:
    """doc_id, split, text of the documents of one split (all when split is None), by doc_id."""
    meta = st.read_table(docs_ref)
    texts = st.read_table(texts_ref)
    df = meta[["doc_id", "split"]].merge(texts, on="doc_id", how="inner", validate="one_to_one")
    if split is not None:
        df = df[df.split == split]
    return df.sort_values("doc_id").reset_index(drop=True)
