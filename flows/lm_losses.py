"""The lm-losses study as a Prefect flow (paper Section 4, first half).

corpus ─► tokenizer ─► tokens (eval; + train for a trained suite) ─► model suite (train each size / load by name)
       ─► one per-token loss column per model ─► tokens x models losses ─► decomposition (alpha_N, classes) ─► report
"""
from __future__ import annotations

import math

import numpy as np
from prefect import flow

from flows.common import call
from schemas.lm import LMConfig
from storage import Store
from storage.settings import default_store_root
from tasks.corpus import build_corpus
from tasks.decomposition import class_fractions, decompose, lm_report
from tasks.lm_suite import train_params, train_model
from tasks.token_losses import assemble_token_losses, model_fingerprint, token_loss_column
from tasks.tokenize import pretrained_tokenizer, tokenize_split, train_tokenizer


def run_lm_losses(config: LMConfig, store: str, refresh: bool = False, key_prefix: str = "lm-losses") -> dict:
    """The pipeline body: returns the artifact refs (models and loss columns as lists)."""
    Store(store)  # a bad store URL fails before any task runs
    suite = config.suite
    corpus = call(build_corpus, config.corpus, store, refresh=refresh)
    docs, texts = corpus["documents"], corpus["texts"]
    if suite.kind == "trained":
        tok_ref = call(train_tokenizer, docs, texts, config.tokenizer, store, refresh=refresh)
    else:
        tok_ref = call(pretrained_tokenizer, suite.models[0], suite.revision, store, refresh=refresh)
    eval_tokens = call(tokenize_split, docs, texts, tok_ref, "eval", config.max_eval_tokens, store, refresh=refresh)

    columns, models = [], []
    common = dict(context_length=suite.context_length, batch_size=suite.eval_batch_size, device=suite.device,
                  dtype=suite.dtype, store=store)
    if suite.kind == "trained":
        train_tokens = call(tokenize_split, docs, texts, tok_ref, "train", None, store, refresh=refresh)
        params = train_params(suite)
        for size in suite.sizes:  # sequential: each size uses every core
            model_ref = call(train_model, train_tokens, tok_ref, size, params, store, refresh=refresh)
            models.append(model_ref)
            columns.append(call(token_loss_column, eval_tokens, size.label, model_ref, None, None, None,
                                **common, refresh=refresh))
    else:
        train_tokens = None
        for name in suite.models:
            columns.append(call(token_loss_column, eval_tokens, name, None, name, suite.revision,
                                model_fingerprint(name, suite.revision), **common, refresh=refresh))
    losses = call(assemble_token_losses, columns, store, refresh=refresh)
    parts = call(decompose, losses, config.analysis, store, refresh=refresh)
    report = call(lm_report, parts, losses, eval_tokens, tok_ref, config.analysis, config.report, store,
                  key_prefix, refresh=refresh)
    return {"documents": docs, "texts": texts, "tokenizer": tok_ref, "eval_tokens": eval_tokens,
            "train_tokens": train_tokens, "models": models, "loss_columns": columns, "token_losses": losses,
            "scaling": parts["scaling"], "fits": parts["fits"], "token_classes": parts["classes"], "report": report}


def summarise(refs: dict, store: str) -> dict:
    """The flow's `results` for the CLI's JSON."""
    st = Store(store)
    fit = st.read_table(refs["fits"]).iloc[0]
    scaling = st.read_table(refs["scaling"])
    cls_group = st.open_zarr(refs["token_classes"])
    cls = np.asarray(cls_group["cls"][...])
    n_valid = int(cls_group.attrs["n_valid"])
    tokens = st.open_zarr(refs["eval_tokens"])
    ml = scaling.mean_loss.to_numpy()
    res = {
        "alpha_N": float(fit.value),
        "alpha_N_ci": [float(fit.ci_lo), float(fit.ci_hi)],
        "alpha_N_method": str(fit.method),
        "alpha_N_paper": 0.083,
        "n_tokens": int(tokens["ids"].shape[0]),
        "n_tokens_scored": n_valid,
        "n_documents_eval": int(tokens["doc_id"].shape[0]),
        "n_models": int(len(scaling)),
        "models": scaling.model.tolist(),
        "n_params": [int(v) for v in scaling.n_params],
        "n_params_nonembed": [int(v) for v in scaling.n_params_nonembed],
        "mean_loss": {m: float(v) for m, v in zip(scaling.model, ml)},
        "mean_loss_decreasing": bool(len(ml) > 1 and (np.diff(ml) < 0).all()),
        **class_fractions(cls, n_valid, len(scaling)),
        "report_dir": refs["report"].uri,
    }
    return _finite_or_none(res)


def _finite_or_none(v):
    """NaN/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite_or_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite_or_none(x) for x in v]
    return v


@flow(name="lm-losses", log_prints=True)
def lm_losses_flow(config: LMConfig = LMConfig(), store: str | None = None, refresh: bool = False) -> dict:
    """Per-token losses of a corpus under a model suite; alpha_N, loss distributions, monogenic/polygenic tokens."""
    store = store or default_store_root()
    refs = run_lm_losses(config, store, refresh)
    artifacts = {k: v for k, v in refs.items() if k not in ("models", "loss_columns") and v is not None}
    artifacts.update({f"model_{i}": r for i, r in enumerate(refs["models"])})
    artifacts.update({f"loss_column_{i}": r for i, r in enumerate(refs["loss_columns"])})
    return {"artifacts": artifacts, "results": summarise(refs, store)}


CONFIG = LMConfig
FLOW = lm_losses_flow
