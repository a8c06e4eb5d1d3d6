"""The lm-losses study as a Prefect flow (paper Section 4, first half).

corpus ─► tokenizer ─► tokens (eval; + train for a trained suite) ─► model suite (train each size / load by name)
       ─► one per-token loss column per model ─► tokens x models losses ─► decomposition (alpha_N, classes) ─► report
                                                                        └► distributions (p(L), L·p(L), transitions,
                                                                           alpha_N resampled over documents) ─┘
"""
from __future__ import annotations

from prefect import flow

from schemas import ConfigError
from schemas.lm import LMConfig
from storage import Store
from tasks.devices import resolve_device
from tasks.lm.corpus import CorpusError, build_corpus, corpus_fingerprint, corpus_files
from tasks.lm.decomposition import decompose
from tasks.lm.distributions import loss_distributions
from tasks.lm.dynamics import assemble_checkpoint_losses, checkpoint_plan, training_dynamics
from tasks.lm.losses import assemble_token_losses, token_loss_column
from tasks.lm.model_source import ModelSource
from tasks.lm.report import lm_report, study_results
from tasks.lm.suite import train_model, train_params
from tasks.lm.tokenizer import pretrained_tokenizer, tokenize_split, train_tokenizer


def lm_losses_pipeline(config: LMConfig, store: str, key_prefix: str = "lm-losses") -> dict:
    """The pipeline map (also the first half of the QDG study): every call is a cached task over artifact refs."""
    suite = config.suite
    corpus = build_corpus(cfg=config.corpus, fingerprint=corpus_fingerprint(config.corpus), store=store)
    docs, texts = corpus["documents"], corpus["texts"]
    if suite.kind == "trained":
        tokenizer = train_tokenizer(docs, texts, cfg=config.tokenizer, store=store)
    else:
        tokenizer = pretrained_tokenizer(model=ModelSource.pretrained(suite.models[0], suite.revision), store=store)
    eval_tokens = tokenize_split(docs, texts, tokenizer, split="eval", max_tokens=config.max_eval_tokens,
                                 max_doc_tokens=config.max_doc_tokens, store=store)
    scoring = dict(context_length=suite.context_length, batch_size=suite.eval_batch_size, device=suite.device,
                   dtype=suite.dtype, store=store)
    models, columns, train_tokens = [], [], None
    if suite.kind == "trained":
        train_tokens = tokenize_split(docs, texts, tokenizer, split="train", max_tokens=None, store=store)
        for size in suite.sizes:  # one after another: each size uses every core
            ckpts = tuple(suite.checkpoint_steps) if size.label == suite.dynamics_name() else ()
            model = train_model(train_tokens, tokenizer, size=size, params=train_params(suite), store=store,
                                checkpoint_steps=ckpts)
            models.append(model)
            columns.append(token_loss_column(eval_tokens, label=size.label, model=ModelSource.trained(model),
                                             **scoring))
    else:
        for name in suite.models:
            columns.append(token_loss_column(eval_tokens, label=name,
                                             model=ModelSource.pretrained(name, suite.revision), **scoring))
    losses = assemble_token_losses(columns, store=store)
    parts = decompose(losses, cfg=config.analysis, store=store)
    dists = loss_distributions(losses, eval_tokens, cfg=config.analysis, store=store)
    dynamics = dynamics_pipeline(config, eval_tokens, models, columns, scoring, store)
    report = lm_report(parts, losses, eval_tokens, tokenizer, dists, dynamics, cfg=config.analysis,
                       rcfg=config.report, store=store, key_prefix=key_prefix)
    return {"documents": docs, "texts": texts, "tokenizer": tokenizer, "eval_tokens": eval_tokens,
            "train_tokens": train_tokens, "models": models, "loss_columns": columns, "token_losses": losses,
            "scaling": parts["scaling"], "fits": parts["fits"], "token_classes": parts["classes"], **dists,
            **(dynamics or {}), "report": report}


def dynamics_pipeline(config: LMConfig, eval_tokens, models: list, columns: list, scoring: dict,
                      store: str) -> dict | None:
    """Training dynamics: the dynamics model's checkpoints, each scored by its own cached task (a trained
    checkpoint read from its lm.model's checkpoints/, a pretrained one by `from_pretrained(name, revision=...)`),
    stacked by step and analysed. None when the suite has no checkpoints."""
    suite = config.suite
    name = suite.dynamics_name()
    if name is None:
        return None
    cols, steps = [], []
    for revision, step in checkpoint_plan(suite):
        if suite.kind == "trained":
            source = ModelSource.trained(models[[s.label for s in suite.sizes].index(name)], revision)
        else:
            source = ModelSource.pretrained(name, revision)
        cols.append(token_loss_column(eval_tokens, label=f"{name}@{revision}", model=source, **scoring))
        steps.append(step)
    if suite.kind == "trained":  # the final model is the last checkpoint
        cols.append(columns[[s.label for s in suite.sizes].index(name)])
        steps.append(suite.steps)
    stacked = assemble_checkpoint_losses(cols, steps=steps, model=name, store=scoring["store"])
    return {"checkpoint_losses": stacked, **training_dynamics(stacked, cfg=config.analysis, store=store)}


@flow(name="lm-losses", log_prints=True)
def lm_losses_flow(config: LMConfig = LMConfig(), store: str | None = None) -> dict:
    """Per-token losses of a corpus under a model suite; alpha_N, loss distributions, monogenic/polygenic tokens."""
    store = Store(store).url
    refs = lm_losses_pipeline(config, store)
    artifacts = {k: v for k, v in refs.items() if k not in ("models", "loss_columns") and v is not None}
    artifacts.update({f"model_{i}": r for i, r in enumerate(refs["models"])})
    artifacts.update({f"loss_column_{i}": r for i, r in enumerate(refs["loss_columns"])})
    return {"artifacts": artifacts, "results": results(Store(store), refs, config)}


def results(st: Store, refs: dict, config: LMConfig) -> dict:
    """The study's headline numbers (`quanta run --json`): alpha_N of the mean loss, the token classes."""
    return study_results(st, refs)


def preflight(config: LMConfig) -> None:
    """Before any work (quanta run calls it): the suite's device exists on this machine, and a file corpus's path
    exists and holds files. Raises ConfigError with one line naming the field and the value."""
    resolve_device(config.suite.device, "suite.device")  # a DeviceError: one line, exit 2
    if config.corpus.kind != "hf":  # a dataset may be a hub name: only loading it can tell
        try:
            corpus_files(config.corpus)
        except CorpusError as e:
            raise ConfigError(f"corpus: {e}") from None


CONFIG = LMConfig
FLOW = lm_losses_flow
