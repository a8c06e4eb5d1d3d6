"""lm-losses config: unknown keys and bad values fail before anything runs, with messages naming the field."""
from __future__ import annotations

import pytest

from schemas import ConfigError
from schemas.config import load_config
from schemas.lm import MIN_VOCAB, LMConfig


def _load(data=None, overrides=None, path=None):
    return load_config(LMConfig, path=path, data=data, overrides=overrides)


def test_shipped_configs_load(project_root):
    for name in ("tiny", "demo", "pythia", "paper"):
        cfg = _load(path=project_root / "configs" / "lm" / f"{name}.toml")
        assert cfg.suite.context_length >= 2
    demo = _load(path=project_root / "configs" / "lm" / "demo.toml")
    assert demo.suite.kind == "trained" and len(demo.suite.sizes) >= 4
    pythia = _load(path=project_root / "configs" / "lm" / "pythia.toml")
    assert pythia.suite.kind == "pretrained" and pythia.suite.models[0].startswith("EleutherAI/pythia-")


@pytest.mark.parametrize("data, needle", [
    ({"tokenizer": {"vocab_size": 100}}, "vocab_size too small"),
    ({"suite": {"kind": "trained", "sizes": []}}, "sizes must not be empty"),
    ({"suite": {"kind": "pretrained", "models": []}}, "models must not be empty"),
    ({"corpus": {"kind": "s3"}}, "corpus.kind"),
    ({"corpus": {"kind": "files"}}, "corpus.path is required"),
    ({"suite": {"context_length": 1, "sizes": [{"d_model": 8, "n_layers": 1, "n_heads": 2}]}},
     "context_length must be >= 2"),
    ({"suite": {"sizes": [{"d_model": 10, "n_layers": 1, "n_heads": 3}]}}, "divisible by n_heads"),
    ({"analysis": {"mono_low": 6.0, "mono_high": 5.0}}, "mono_low must be < mono_high"),
    ({"corpus": {"eval_fraction": 1.0}}, "corpus.eval_fraction"),
    ({"suite": {"sizse": []}}, "suite.sizse: unknown key"),
])
def test_bad_values_name_the_field(data, needle):
    with pytest.raises(ConfigError) as err:
        _load(data=data)
    assert needle in str(err.value)


def test_a_pretrained_suite_may_score_every_document_a_trained_one_may_not():
    pre = {"suite": {"kind": "pretrained", "models": ["EleutherAI/pythia-70m-v0"]}, "corpus": {"eval_fraction": 1.0}}
    assert _load(data=pre).corpus.eval_fraction == 1.0
    with pytest.raises(ConfigError, match=r"corpus.eval_fraction must be < 1 for a trained suite, .*got 1.0"):
        _load(data={"corpus": {"eval_fraction": 1.0}})
    for bad, needle in (({"analysis": {"poly_statistic": "log"}}, "analysis.poly_statistic"),
                        ({"analysis": {"fit_max_params": 0}}, "analysis.fit_max_params"),
                        ({"analysis": {"learned_bits": -1}}, "analysis.learned_bits"),
                        ({"max_doc_tokens": 1}, "max_doc_tokens")):
        with pytest.raises(ConfigError, match=needle):
            _load(data=bad)


def test_the_paper_config_is_the_papers_suite_and_the_current_one_says_it_is_not(project_root):
    paper = _load(path=project_root / "configs" / "lm" / "paper.toml")
    assert paper.suite.models == [f"EleutherAI/pythia-{s}-v0" for s in
                                  ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")]
    assert paper.suite.revision == "step143000" and paper.max_eval_tokens == 10_000_000
    assert paper.max_doc_tokens == 1024 and paper.corpus.eval_fraction == 1.0 and not paper.corpus.dedup
    assert paper.analysis.poly_statistic == "paper" and paper.analysis.fit_method == "ols"
    current = _load(path=project_root / "configs" / "lm" / "pythia.toml")
    assert not any(m.endswith("-v0") for m in current.suite.models) and len(current.suite.models) == 8
    assert "CURRENT" in (project_root / "configs" / "lm" / "pythia.toml").read_text()


def test_overrides_and_unknown_override():
    cfg = _load(data={}, overrides=["tokenizer.vocab_size=512", "suite.steps=7"])
    assert cfg.tokenizer.vocab_size == 512 and cfg.suite.steps == 7
    with pytest.raises(ConfigError, match="unknown key 'vocab'"):
        _load(data={}, overrides=["tokenizer.vocab=512"])


def test_the_smallest_vocabulary_is_the_bytes_and_the_special_tokens_plus_one_merge():
    assert _load(data={}, overrides=[f"tokenizer.vocab_size={MIN_VOCAB}"]).tokenizer.vocab_size == MIN_VOCAB
    with pytest.raises(ConfigError, match=f"tokenizer.vocab_size.*needs >= {MIN_VOCAB}"):
        _load(data={}, overrides=[f"tokenizer.vocab_size={MIN_VOCAB - 1}"])
