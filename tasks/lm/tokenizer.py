"""Tokenizer and tokens: train a byte-level BPE on the train split (or take a pretrained model's own tokenizer),
then turn each split into flat int32 token ids + document offsets (an `lm.tokens` Zarr artifact).

Every tokenizer is stored as a `save_pretrained` directory, so the rest of the pipeline loads any of them the
same way: `AutoTokenizer.from_pretrained(dir)`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from schemas.lm import SPECIAL_TOKENS, TokenizerConfig
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.lm.corpus import load_texts
from tasks.lm.model_source import ModelSource

EOS, PAD = SPECIAL_TOKENS


def train_bpe(texts, vocab_size: int, min_frequency: int = 2):
    """A byte-level BPE (GPT-2 style pre-tokenisation, no prefix space) trained on `texts`, wrapped as a
    transformers fast tokenizer with `<|endoftext|>` as eos/bos/unk and `<|pad|>` as pad. Lossless on any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS,
                                   pad_token=PAD, clean_up_tokenization_spaces=False)


def load_tokenizer(path: str | Path, revision: str | None = None):
    """Any tokenizer by directory or hub name (no remote code)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), revision=revision, trust_remote_code=False)


def encode_documents(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens."""
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def decode(tokenizer, ids) -> str:
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def token_context(tokenizer, ids: np.ndarray, offsets: np.ndarray, pos: int, n_context: int) -> tuple[str, str]:
    """(decoded context before token `pos` within its document, decoded token)."""
    d = int(np.searchsorted(offsets, pos, side="right") - 1)
    start = max(int(offsets[d]), pos - n_context)
    return decode(tokenizer, ids[start:pos]), decode(tokenizer, ids[pos:pos + 1])


def tokens_arrays(token_lists: list[list[int]], doc_ids, max_tokens: int | None = None,
                  max_doc_tokens: int | None = None) -> dict[str, np.ndarray]:
    """Flat ids + offsets (+ doc ids). With `max_doc_tokens`, each document is first cut to its first that many
    tokens (the paper: 1024, `truncation=True`). With `max_tokens`, documents are kept in order until the cap, the
    last one cut (never to fewer than 2 tokens; shorter remainders are dropped)."""
    lists, ids_kept = [], []
    total = 0
    for d, toks in zip(doc_ids, token_lists):
        if max_doc_tokens is not None:
            toks = toks[:max_doc_tokens]
        if max_tokens is not None and total + len(toks) > max_tokens:
            toks = toks[:max_tokens - total]
            if len(toks) >= 2:
                lists.append(toks)
                ids_kept.append(int(d))
            break
        if len(toks) == 0:
            continue
        lists.append(toks)
        ids_kept.append(int(d))
        total += len(toks)
    lengths = np.array([len(t) for t in lists], dtype=np.int64)
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for toks in lists for t in toks), dtype=np.int64, count=int(offsets[-1]))
    return {"ids": flat.astype(np.int32), "offsets": offsets, "doc_id": np.array(ids_kept, dtype=np.int64)}


def vocab_size_of(tokenizer) -> int:
    return int(len(tokenizer))


@quanta_task(name="lm-train-tokenizer")
def train_tokenizer(documents: ArtifactRef, texts: ArtifactRef, *, cfg: TokenizerConfig, store: str) -> ArtifactRef:
    """Byte-level BPE trained on the train split, stored as an `lm.tokenizer` dir (save_pretrained)."""
    st = Store(store)
    df = load_texts(st, documents, texts, "train")
    tok = train_bpe(df.text.tolist(), cfg.vocab_size, cfg.min_frequency)
    print(f"tokenizer: byte-level BPE, {len(tok)} tokens, trained on {len(df)} documents")
    return st.write_dir("lm.tokenizer", lambda p: tok.save_pretrained(str(p)), inputs=[documents, texts],
                        params={"tokenizer": cfg.model_dump(mode="json"), "type": "byte-level-bpe"})


@quanta_task(name="lm-pretrained-tokenizer")
def pretrained_tokenizer(*, model: ModelSource, store: str) -> ArtifactRef:
    """A pretrained model's own tokenizer (hub name or local dir), copied into the store as `lm.tokenizer`. The
    model's fingerprint (part of the ModelSource) keys the cache by the files' content, not the name."""
    if model.name is None:
        raise ValueError("pretrained_tokenizer reads a pretrained model's tokenizer; a trained model carries its own")
    tok = load_tokenizer(model.name, model.revision)
    st = Store(store)
    return st.write_dir("lm.tokenizer", lambda p: tok.save_pretrained(str(p)),
                        params={"model": model.name, "revision": model.revision, "fingerprint": model.fingerprint,
                                "type": "pretrained"})


@quanta_task(name="lm-tokenize", task_run_name="lm-tokenize-{split}")
def tokenize_split(documents: ArtifactRef, texts: ArtifactRef, tokenizer: ArtifactRef, *, split: str,
                   max_tokens: int | None, max_doc_tokens: int | None = None, store: str) -> ArtifactRef:
    """Tokens of one split as `lm.tokens`: ids (int32), offsets (int64, n_docs+1), doc_id; attrs vocab_size."""
    st = Store(store)
    tok = load_tokenizer(st.local_dir(tokenizer))
    df = load_texts(st, documents, texts, split)
    if df.empty:
        raise ValueError(f"split {split!r} has no documents")
    arrays = tokens_arrays(encode_documents(tok, df.text.tolist()), df.doc_id.tolist(), max_tokens, max_doc_tokens)
    attrs = {"vocab_size": vocab_size_of(tok), "split": split, "eos_token_id": tok.eos_token_id}
    print(f"tokens[{split}]: {arrays['ids'].size} tokens in {arrays['doc_id'].size} documents")
    return st.write_zarr("lm.tokens", arrays, attrs, inputs=[documents, texts, tokenizer],
                         params={"split": split, "max_tokens": max_tokens, "max_doc_tokens": max_doc_tokens})
