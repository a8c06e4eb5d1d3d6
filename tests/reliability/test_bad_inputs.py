"""A table of bad inputs: each must exit with code 2 and one message that names the field, file or store, before any
work and without writing anything to the store (including the errors a task finds inside the flow).

Each case runs the real command line in this process (`flows.cli.main`), on Prefect's session test server.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest

from reliability_cli import LM_TINY, SP_TINY

SP = ["run", "sparse-parity", "--config", SP_TINY]
LM = ["run", "lm-losses", "--config", LM_TINY]
QDG = ["run", "qdg", "--config", LM_TINY.parent.parent / "qdg" / "tiny.toml"]
QDG_SP = ["run", "qdg-sparse-parity", "--config", LM_TINY.parent.parent / "qdg" / "sparse_parity_tiny.toml"]


@dataclass
class Case:
    id: str
    argv: Callable[[SimpleNamespace], list]
    says: list[str] | Callable[[SimpleNamespace], list[str]]  # every one of these is in the message
    rc: int = 2
    skip_if_cuda: bool = False
    # the flow module whose preflight finds it (None: config validation); either way before anything is written
    preflight_of: str | None = None
    # none of these is in the message (e.g. the bad value shown twice)
    absent: tuple[str, ...] = ()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


CASES = [
    # non-finite floats: rejected by validation, before anything runs
    Case("lr-inf", lambda p: [*SP, "--set", "grid.lr=inf"], ["grid.lr", "finite", "inf"]),
    Case("lr-nan", lambda p: [*SP, "--set", "grid.lr=nan"], ["grid.lr", "finite"]),
    Case("alpha-inf", lambda p: [*SP, "--set", "task.alpha=inf"], ["task.alpha", "finite"]),
    Case("threshold-nan", lambda p: [*SP, "--set", "grid.learned_threshold_bits=nan"],
         ["grid.learned_threshold_bits", "finite"]),
    Case("huber-delta-minus-inf", lambda p: [*SP, "--set", "fit.huber_delta=-inf"], ["fit.huber_delta", "finite"]),
    Case("lm-lr-inf", lambda p: [*LM, "--set", "suite.lr=inf"], ["suite.lr", "finite"]),
    Case("sweep-alpha-inf", lambda p: ["run", "alpha-sweep", "--config", SP_TINY.parent / "alpha_sweep_demo.toml",
                                       "--set", "sweep.alphas=[0.2, inf]"], ["sweep.alphas", "finite"]),
    # values out of range, inconsistent, unknown
    Case("lr-negative", lambda p: [*SP, "--set", "grid.lr=-1"], ["grid.lr", "-1"]),
    Case("k-above-n-bits", lambda p: [*SP, "--set", "task.k=20"], ["k must be <= n_bits"]),
    Case("widths-empty", lambda p: [*SP, "--set", "grid.widths=[]"], ["grid.widths", "empty"]),
    Case("width-negative", lambda p: [*SP, "--set", "grid.widths=[8, -3]"], ["grid.widths", "-3"]),
    Case("seeds-repeated", lambda p: [*SP, "--set", "grid.seeds=[0, 0]"], ["grid.seeds"]),
    Case("log-points-above-steps", lambda p: [*SP, "--set", "grid.log_points=1000"], ["log_points", "steps"]),
    Case("batch-size-zero", lambda p: [*SP, "--set", "grid.batch_size=0"], ["grid.batch_size"]),
    Case("unknown-key", lambda p: [*SP, "--set", "grid.widthz=[8]"], ["unknown key 'widthz'", "grid"]),
    Case("unknown-section", lambda p: [*SP, "--set", "gird.lr=0.1"], ["unknown key 'gird'"]),
    Case("set-without-equals", lambda p: [*SP, "--set", "grid.lr"], ["--set 'grid.lr'", "section.key=value"]),
    Case("lm-no-sizes", lambda p: [*LM, "--set", "suite.sizes=[]"], ["suite"]),
    Case("lm-eval-fraction-one", lambda p: [*LM, "--set", "corpus.eval_fraction=1.0"], ["corpus.eval_fraction"]),
    # integers past 64 bits would be stored as the flow run's parameters, which the Prefect server then cannot send
    Case("int-past-64-bits", lambda p: [*QDG, "--set", "selection.n_tokens=10000000000000000000000"],
         ["selection.n_tokens", "at most 9,007,199,254,740,991", "10000000000000000000000"]),
    Case("int-past-64-bits-in-list", lambda p: [*SP, "--set", "grid.widths=[8, 100000000000000000000]"],
         ["grid.widths", "at most", "100000000000000000000"]),
    # one line naming the file, the field and the value
    Case("config-error-one-line", lambda p: [*SP, "--set", "grid.lr=-1"],
         [f"invalid config {SP_TINY}: grid.lr: ", "(got -1)"]),
    Case("config-includes-itself", lambda p: ["run", "qdg", "--config", p.self_include],
         lambda p: [f"{p.self_include} includes itself ({p.self_include} → {p.self_include})"]),
    Case("config-include-cycle", lambda p: ["run", "qdg", "--config", p.cycle_a],
         lambda p: [f"{p.cycle_a} includes itself ({p.cycle_a} → {p.cycle_b} → {p.cycle_a})"]),
    # files
    Case("config-missing", lambda p: ["run", "sparse-parity", "--config", p.tmp / "nope.toml"],
         ["config file not found", "nope.toml"]),
    Case("config-is-a-directory", lambda p: ["run", "sparse-parity", "--config", p.tmp],
         lambda p: [f"config file {p.tmp} is a directory"]),
    Case("config-bad-toml", lambda p: ["run", "sparse-parity", "--config", p.bad_toml],
         ["bad.toml", "not valid TOML"]),
    Case("unknown-study", lambda p: ["run", "sparse-parityy"], ["unknown study 'sparse-parityy'"]),
    # files that break the parser (issue 22, 7): one line naming the file (or the --set), before the server starts
    Case("config-latin1-byte", lambda p: ["run", "sparse-parity", "--config", p.latin1],
         lambda p: [f"config file {p.latin1} is not UTF-8 text (byte 0xe9 on line 2)"]),
    Case("config-10mb-string", lambda p: ["run", "sparse-parity", "--config", p.huge],
         lambda p: [f"config file {p.huge} is 10,000,0", "at most 1,048,576 bytes"]),
    Case("config-deep-array", lambda p: ["run", "sparse-parity", "--config", p.deep],
         lambda p: [f"config file {p.deep}: arrays or tables nested too deeply"]),
    Case("set-deep-array", lambda p: [*SP, "--set", "grid.widths=" + "[" * 100_000 + "]" * 100_000],
         ["--set grid.widths=...", "nested too deeply"]),
    Case("set-string-past-prefect-parameters", lambda p: [*SP, "--set", "report.title='" + "x" * 600_000 + "'"],
         ["as a flow run's parameters", "at most 516,096", "report.title"]),
    Case("include-latin1-byte", lambda p: ["run", "qdg", "--config", p.includes_latin1],
         lambda p: [f"lm_config: config file {p.latin1} is not UTF-8 text"]),
    # a bool is never a number (issue 22, 1)
    Case("qdg-jl-dims-true", lambda p: [*QDG, "--set", "gradients.projection_dims=true"],
         ["gradients.projection_dims", "a bool (true / false) is not a number", "(got True)"]),
    Case("width-bool-in-list", lambda p: [*SP, "--set", "grid.widths=[8, true]"],
         ["grid.widths", "a bool (true / false) is not a number"]),
    Case("memory-limit-bool", lambda p: [*QDG, "--set", "similarity.memory_limit=false"],
         ["similarity.memory_limit", "not a number"]),
    # the value appears once, not "(got 0) (got 0)"
    Case("value-shown-once", lambda p: [*QDG, "--set", "gradients.projection_dims=0"], ["(got 0)"],
         absent=("(got 0) (got 0)",)),
    Case("several-studies-one-config", lambda p: ["run", "sparse-parity", "lm-losses", "--config", SP_TINY],
         ["--config and --set apply to one study"]),
    # the QDG studies
    Case("qdg-unknown-model", lambda p: [*QDG, "--set", "selection.model='L9-d999'"],
         ["selection.model 'L9-d999' is not a model of the suite"]),
    Case("qdg-k-not-below-tokens", lambda p: [*QDG, "--set", "clustering.n_clusters=[4, 500]"],
         ["clustering.n_clusters must be < selection.n_tokens"]),
    Case("qdg-jl-dims-zero", lambda p: [*QDG, "--set", "gradients.projection_dims=0"], ["projection_dims"]),
    Case("qdg-compare-dims-zero", lambda p: [*QDG, "--set", "clustering.compare_projection_dims=0"],
         ["compare_projection_dims"]),
    Case("qdg-bad-regex", lambda p: [*QDG, "--set", "gradients.include=['(']"], ["not a regular expression"]),
    Case("qdg-memory-limit-text", lambda p: [*QDG, "--set", "similarity.memory_limit='lots'"],
         ["similarity.memory_limit", "'lots'", "could not parse value and unit from byte string"]),
    Case("qdg-dense-beyond-memory", lambda p: [*QDG, "--set", "selection.n_tokens=2000000", "--set",
                                               "clustering.method='dense'"],
         ["dense spectral clustering of 2,000,000 tokens", "clustering.method = 'knn'"], preflight_of="flows.qdg"),
    Case("qdg-workers-beyond-cores", lambda p: [*QDG, "--set", "similarity.n_workers=1000"],
         ["similarity.n_workers x similarity.threads_per_worker = 1000 x 1", "CPU cores"], preflight_of="flows.qdg"),
    Case("qdg-workers-beyond-memory", lambda p: [*QDG, "--set", "similarity.n_workers=2", "--set",
                                                 "similarity.memory_limit='100TB'"],
         ["similarity.n_workers x similarity.memory_limit = 2 x 100.0TB", "machine's memory"], preflight_of="flows.qdg"),
    Case("qdg-sp-workers-beyond-cores", lambda p: [*QDG_SP, "--set", "similarity.threads_per_worker=1000"],
         ["similarity.n_workers x similarity.threads_per_worker", "x 1000"], preflight_of="flows.qdg_sparse_parity"),
    Case("qdg-projection-not-reducing", lambda p: [*QDG, "--set", "gradients.projection_dims=1000000000000"],
         ["gradients.projection_dims = 1,000,000,000,000 does not reduce the gradient dimension (56,160"],
         preflight_of="flows.qdg"),
    Case("qdg-compare-projection-not-reducing", lambda p: [*QDG, "--set",
                                                           "clustering.compare_projection_dims=60000"],
         ["clustering.compare_projection_dims = 60,000 does not reduce"], preflight_of="flows.qdg"),
    Case("qdg-sp-projection-not-reducing", lambda p: [*QDG_SP, "--set", "gradients.projection_dims=5000"],
         ["gradients.projection_dims = 5,000 does not reduce the gradient dimension"],
         preflight_of="flows.qdg_sparse_parity"),
    # a projection too small for its JL bound to mean anything (issue 22, 1): the floor of tasks.qdg.jl_floor
    Case("qdg-jl-dims-one", lambda p: [*QDG, "--set", "gradients.projection_dims=1"],
         ["gradients.projection_dims = 1 is below the JL floor for 120 selected tokens: 1,266 dims"],
         preflight_of="flows.qdg"),
    Case("qdg-compare-dims-below-floor", lambda p: [*QDG, "--set", "clustering.compare_projection_dims=1000"],
         ["clustering.compare_projection_dims = 1,000 is below the JL floor"], preflight_of="flows.qdg"),
    Case("qdg-sp-jl-dims-one", lambda p: [*QDG_SP, "--set", "gradients.projection_dims=1"],
         ["gradients.projection_dims = 1 is below the JL floor for 160 samples"],
         preflight_of="flows.qdg_sparse_parity"),
    # values that passed validation, then crashed after upstream work (issue 22, 3 and 4)
    Case("qdg-sp-long-steps-huge", lambda p: [*QDG_SP, "--set", "long.steps=9007199254740991"],
         ["long.steps", "less than or equal to 10000000"]),
    Case("sp-grid-steps-huge", lambda p: [*SP, "--set", "grid.steps=9007199254740991"],
         ["grid.steps", "less than or equal to 10000000"]),
    Case("qdg-sp-group-lasso-steps-huge", lambda p: [*QDG_SP, "--set", "group_lasso.steps=9007199254740991"],
         ["group_lasso.steps", "less than or equal to 10000000"]),
    Case("qdg-sp-group-lasso-lambda-huge", lambda p: [*QDG_SP, "--set", "group_lasso.lam=1e308"],
         ["group_lasso.lam", "less than or equal to 1"]),
    Case("qdg-sp-long-weight-decay-huge", lambda p: [*QDG_SP, "--set", "long.weight_decay=1e308"],
         ["long.weight_decay", "less than or equal to 10"]),
    Case("qdg-sp-long-weight-decay-wipes", lambda p: [*QDG_SP, "--set", "regimes=['study', 'long']", "--set",
                                                      "long.weight_decay=5", "--set", "sparse_parity.grid.lr=0.5"],
         ["long.weight_decay must be below 1 / sparse_parity.grid.lr = 2 (got 5"]),
    Case("qdg-sp-samples-beyond-memory", lambda p: [*QDG_SP, "--set", "model.samples_per_subtask=9007199254740991"],
         ["model.samples_per_subtask: their dense similarity and spectral clustering need", "this machine has"],
         preflight_of="flows.qdg_sparse_parity"),
    Case("qdg-sp-samples-moderate-beyond-memory", lambda p: [*QDG_SP, "--set", "model.samples_per_subtask=2000000"],
         ["model.samples_per_subtask", "2,000,000 x 8 = 16,000,000"], preflight_of="flows.qdg_sparse_parity"),
    Case("qdg-sp-random-dims-beyond-memory", lambda p: [*QDG_SP, "--set", "benchmark.random_dims=9007199254740991"],
         ["benchmark.random_dims: the random baseline's", "this machine has"],
         preflight_of="flows.qdg_sparse_parity"),
    # more clusters than samples: an error naming the field, not a silent drop (issue 22, 5)
    Case("qdg-sp-k-beyond-samples", lambda p: [*QDG_SP, "--set", "clustering.n_clusters=[1000]"],
         ["clustering.n_clusters: k = 1,000 is not below the most samples there can be",
          "model.samples_per_subtask x sparse_parity.task.n_tasks = 20 x 8 = 160"],
         preflight_of="flows.qdg_sparse_parity"),
    Case("qdg-lm-config-missing", lambda p: ["run", "qdg", "--config", p.tmp / "qdg.toml"],
         ["lm_config: config file not found"]),
    Case("qdg-sp-width-not-in-grid", lambda p: [*QDG_SP, "--set", "model.width=5"],
         ["model.width 5 is not a width of the study's grid"], preflight_of="flows.qdg_sparse_parity"),
    # the machine and the corpus: preflight, before any work
    Case("lm-device-cuda", lambda p: [*LM, "--set", "suite.device='cuda'"], ["suite.device", "cuda"],
         skip_if_cuda=True),
    Case("lm-corpus-path-missing", lambda p: [*LM, "--set", "corpus.kind='files'",
                                              "--set", f"corpus.path='{p.tmp / 'no-such-dir'}'"],
         ["corpus", "does not exist", "no-such-dir"]),
    Case("lm-corpus-empty-dir", lambda p: [*LM, "--set", "corpus.kind='files'", "--set", f"corpus.path='{p.empty}'"],
         ["empty corpus", "empty"]),
    # user errors only a task can find, inside the flow: still one line, exit 2
    Case("lm-corpus-all-not-utf8", lambda p: [*LM, "--set", "corpus.kind='files'",
                                              "--set", f"corpus.path='{p.non_utf8}'"],
         ["not UTF-8", "all 2 were rejected", "flow run"]),
    Case("lm-corpus-all-too-short", lambda p: [*LM, "--set", "corpus.kind='files'",
                                               "--set", f"corpus.path='{p.too_short}'"],
         ["empty corpus", "min_doc_chars", "flow run"]),
    Case("sp-device-cuda", lambda p: [*SP, "--set", "grid.device='cuda'"], ["grid.device", "cuda"],
         skip_if_cuda=True, preflight_of="flows.sparse_parity"),
    # stores
    Case("store-unknown-protocol", lambda p: [*SP, "--store", "nosuchproto://bucket/x"],
         ["cannot open store 'nosuchproto://bucket/x'", "nosuchproto"]),
    Case("lineage-mistyped-store", lambda p: ["lineage", "abc123", "--store", p.tmp / "typo" / "store"],
         ["abc123", "typo"]),
    Case("lineage-unknown-protocol", lambda p: ["lineage", "abc123", "--store", "nosuchproto://x"],
         ["cannot open store", "nosuchproto"]),
    Case("lineage-unknown-hash", lambda p: ["lineage", "abcdef0123", "--store", p.real_store],
         ["abcdef0123"]),
    Case("lineage-path-escape", lambda p: ["lineage", "../../etc/passwd", "--store", p.real_store],
         ["../../etc/passwd"]),
    Case("verify-mistyped-store", lambda p: ["store", "verify", "--store", p.tmp / "typo" / "store"],
         ["no quanta store at", "typo"]),
    Case("store-is-a-file", lambda p: [*SP, "--store", p.csv], lambda p: [f"store {p.csv} is a file"]),
    Case("store-under-a-file", lambda p: [*SP, "--store", p.csv / "store"], lambda p: [f"is under {p.csv}, a file"]),
    # store paths that cannot be a store (issue 22, 2 and 6)
    Case("store-empty", lambda p: [*SP, "--store", ""], ["store path '' is empty"]),
    Case("store-whitespace", lambda p: [*SP, "--store", "  "], ["store path '  ' is empty"]),
    Case("store-symlink-loop", lambda p: [*SP, "--store", p.loop], lambda p: [f"store {p.loop} is a symlink loop"]),
    Case("store-under-symlink-loop", lambda p: [*SP, "--store", p.loop / "store"],
         ["a symlink loop on its path"]),
    Case("store-dangling-symlink", lambda p: [*SP, "--store", p.dangling],
         lambda p: [f"store {p.dangling} is a dangling symlink"]),
    Case("store-in-proc", lambda p: [*SP, "--store", "/proc/quanta-store"],
         ["store /proc/quanta-store cannot hold a store: no directory can be created in /proc"]),
    Case("store-path-too-long", lambda p: [*SP, "--store", p.tmp.joinpath(*["d" * 200] * 25)],
         ["-byte path", "limit of 4,096 bytes per path"]),
    Case("ls-symlink-loop", lambda p: ["store", "ls", "--store", p.loop], ["is a symlink loop"]),
    Case("gc-symlink-loop", lambda p: ["store", "gc", "--keep-last", "1", "--store", p.loop], ["is a symlink loop"]),
    Case("verify-symlink-loop", lambda p: ["store", "verify", "--store", p.loop], ["is a symlink loop"]),
    Case("ls-store-is-a-file", lambda p: ["store", "ls", "--store", p.csv], lambda p: [f"store {p.csv} is a file"]),
    Case("gc-store-is-a-file", lambda p: ["store", "gc", "--keep-last", "1", "--store", p.csv],
         lambda p: [f"store {p.csv} is a file"]),
    Case("gc-older-than-overflow", lambda p: ["store", "gc", "--older-than", "99999999999d", "--store", p.real_store],
         ["'99999999999d' is longer than 100 years"]),
    Case("verify-unknown-protocol", lambda p: ["store", "verify", "--store", "nosuchproto://x"],
         ["cannot open store"]),
    # quanta fit
    Case("fit-csv-missing", lambda p: ["fit", "--csv", p.tmp / "none.csv", "--y", "loss", "--x", "n"],
         ["none.csv", "not found"]),
    Case("fit-column-missing", lambda p: ["fit", "--csv", p.csv, "--y", "loss", "--x", "params"],
         ["'params'", "not found"]),
    Case("fit-non-numeric", lambda p: ["fit", "--csv", p.bad_csv, "--y", "loss", "--x", "n"],
         ["non-numeric", "'loss'", "row 2"]),
    # the qdg-sparse-parity benchmark: representations and training regimes
    Case("qdg-sp-unknown-representation", lambda p: [*QDG_SP, "--set", "representations=['gradient', 'saliency']"],
         ["representations.1", "saliency"]),
    Case("qdg-sp-group-lasso-lambda-zero", lambda p: [*QDG_SP, "--set", "group_lasso.lam=0"],
         ["group_lasso.lam must be > 0"]),
    Case("qdg-sp-group-lasso-lambda-negative", lambda p: [*QDG_SP, "--set", "group_lasso.lam=-1e-3"],
         ["group_lasso.lam must be > 0"]),
    Case("qdg-sp-unknown-regime", lambda p: [*QDG_SP, "--set", "regimes=['study', 'longer']"],
         ["regimes.1", "longer"]),
    Case("qdg-sp-transform-keeps-nothing", lambda p: [*QDG_SP, "--set", "transforms=[{keep=['3.weight']}]"],
         ["transforms.0.keep", "matches none"], preflight_of="flows.qdg_sparse_parity"),
    Case("qdg-sp-leiden-without-knn", lambda p: [*QDG_SP, "--set", "clusterers=['leiden']"],
         ["clusterers", "add 'knn' to affinities"]),
    # qdg representations: a name that is none, and ablation on a language model without asking for the estimate
    Case("qdg-unknown-representation", lambda p: [*QDG, "--set", "representations=['gradient', 'gradients']"],
         ["representations.1", "'abs_gradient'"]),
    Case("qdg-lm-ablation-without-first-order", lambda p: [*QDG, "--set", "representations=['ablation']"],
         ["representations: 'ablation' on a language model", "ablation_first_order = true"]),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> SimpleNamespace:
    from storage import Store

    tmp = tmp_path_factory.mktemp("bad-inputs")
    empty = tmp / "empty"
    empty.mkdir()
    non_utf8 = tmp / "non-utf8"
    non_utf8.mkdir()
    for name in ("a.txt", "b.txt"):
        (non_utf8 / name).write_bytes(b"\xff\xfe\xfa not text " * 20)
    too_short = tmp / "too-short"
    too_short.mkdir()
    for name, blank in (("a.py", "   "), ("b.py", "\n\n\t\n")):
        (too_short / name).write_text(blank)
    bad_toml = tmp / "bad.toml"
    bad_toml.write_text("[grid\nwidths = [8\n")
    (tmp / "qdg.toml").write_text('lm_config = "no-such-lm.toml"\n')  # a qdg config naming a missing lm config
    self_include, cycle_a, cycle_b = (tmp / "self.toml").resolve(), (tmp / "a.toml").resolve(), (tmp / "b.toml").resolve()
    self_include.write_text('lm_config = "self.toml"\n[selection]\nn_tokens = 20\n')
    cycle_a.write_text('lm_config = "b.toml"\n')
    cycle_b.write_text('lm_config = "a.toml"\n')
    csv = tmp / "runs.csv"
    csv.write_text("n,loss\n10,1.0\n20,0.8\n40,0.7\n80,0.65\n")
    bad_csv = tmp / "bad.csv"
    bad_csv.write_text("n,loss\n10,1.0\n20,oops\n40,0.7\n80,0.65\n")
    latin1 = tmp / "latin1.toml"
    latin1.write_bytes(b"[report]\ntitle = 'caf\xe9'\n")  # Latin-1 for "cafe" with an acute e
    includes_latin1 = tmp / "includes-latin1.toml"
    includes_latin1.write_text('lm_config = "latin1.toml"\n')
    huge = tmp / "huge.toml"
    huge.write_text("[report]\ntitle = '" + "x" * 10_000_000 + "'\n")
    deep = tmp / "deep.toml"
    deep.write_text("[grid]\nwidths = " + "[" * 100_000 + "]" * 100_000 + "\n")
    loop = tmp / "loop-a"
    loop.symlink_to(tmp / "loop-b")
    (tmp / "loop-b").symlink_to(loop)
    dangling = tmp / "dangling"
    dangling.symlink_to(tmp / "no-such-target")
    real_store = tmp / "real-store"
    import pandas as pd

    Store(real_store).write_table("sparse_parity.runs", pd.DataFrame({
        "model_id": ["m1"], "width": [4], "n_params": [100], "data_size": [-1], "seed": [0], "alpha": [0.4],
        "step": [1], "mean_loss": [1.0], "subtasks_learned": [0]}))
    return SimpleNamespace(tmp=tmp, empty=empty, non_utf8=non_utf8, too_short=too_short, bad_toml=bad_toml, csv=csv,
                           bad_csv=bad_csv, real_store=real_store, self_include=self_include, cycle_a=cycle_a,
                           cycle_b=cycle_b, latin1=latin1, includes_latin1=includes_latin1, huge=huge, deep=deep,
                           loop=loop, dangling=dangling)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, places, quanta, prefect_server, tmp_path):
    if case.skip_if_cuda and _cuda():
        pytest.skip("this machine has a GPU")
    store = tmp_path / "store"
    argv = [str(a) for a in case.argv(places)]
    if argv[0] == "run" and "--store" not in argv:
        argv += ["--store", str(store)]
    before = sorted(os.listdir(places.real_store))
    csv_before = places.csv.read_bytes()
    got = quanta(*argv)
    assert got.rc == case.rc, f"{argv}: rc {got.rc}\n{got.text[-3000:]}"
    errors = [line for line in got.err.splitlines() if line.startswith(("error:", "quanta fit: error:"))]
    assert len(errors) == 1, got.err[-3000:]
    message = got.err[got.err.index(errors[0]):]
    assert message.strip() == errors[0].strip(), f"more than one line: {message!r}"
    for needle in case.says(places) if callable(case.says) else case.says:
        assert needle in message, f"{needle!r} not in {message!r}"[:3000]
    for needle in case.absent:
        assert needle not in message, message
    assert "Traceback" not in got.text, got.text[-3000:]
    assert not store.exists(), f"{argv} wrote to the store: {list(store.rglob('*'))[:5]}"
    assert not (places.tmp / "typo").exists()
    assert sorted(os.listdir(places.real_store)) == before
    assert places.csv.read_bytes() == csv_before
    assert not Path("nosuchproto:").exists()
    assert not Path("_lineage").exists() and not Path("_tmp").exists()  # `--store ''`: not the working directory
    assert not (places.dangling.exists() or Path("/proc/quanta-store").exists())
