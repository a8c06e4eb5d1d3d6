"""Cache keys follow everything that can change a result, and nothing else; cached results are data, never code.

Code edits are simulated without touching the project's files: `tasks.caching` reads module sources through
`_module_file`, which a fixture points at an edited copy in tmp_path (its caches cleared before and after).
"""
from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tasks.caching as caching
from flows.running import run_study
from schemas.config import load_config
from schemas.lm import CorpusConfig, LMConfig
from schemas.sparse_parity import SparseParityConfig

from fault_helpers import states_of, task_states

ROOT = Path(__file__).resolve().parent.parent
SP_TINY = ROOT / "configs/sparse_parity/tiny.toml"
# the tiny grid, smaller still: these tests are about which tasks rerun, not about the numbers
SP_FAST = ["grid.steps=40", "grid.log_points=6", "fit.bootstrap=0", "report.plots=false"]


def _clear_code_caches() -> None:
    for fn in (caching.imported_project_modules, caching.import_closure, caching.code_hash):
        fn.cache_clear()


@pytest.fixture
def edit_module(monkeypatch, tmp_path):
    """edit_module('tasks.x.y', text): the cache policy now sees module tasks.x.y with `text` appended."""
    real = caching._module_file
    edited: dict[str, str] = {}

    def module_file(name: str):
        return edited.get(name) or real(name)

    def edit(name: str, text: str) -> None:
        src = Path(real(name))
        copy = tmp_path / "edited" / f"{name}.py"
        copy.parent.mkdir(exist_ok=True)
        copy.write_text(src.read_text() + text)
        edited[name] = str(copy)
        _clear_code_caches()

    monkeypatch.setattr(caching, "_module_file", module_file)
    _clear_code_caches()
    yield edit
    monkeypatch.undo()
    _clear_code_caches()


# ------------------------------------------------------------------------------------------ code in the key
def test_import_closure_follows_the_code_a_task_calls():
    train = caching.import_closure("tasks.sparse_parity.train")
    assert {"tasks.sparse_parity.data", "tasks.sparse_parity.model", "storage.store", "schemas.sparse_parity"} <= set(
        train)
    assert "tasks.sparse_parity.report" not in train and "tasks.reporting" not in train
    assert "tasks.sparse_parity.analysis" in caching.import_closure("tasks.sparse_parity.report")


def test_editing_a_helper_recomputes_training_and_editing_the_report_does_not(prefect_server, tmp_path,
                                                                             edit_module):
    cfg = load_config(SparseParityConfig, SP_TINY, SP_FAST)
    store = str(tmp_path / "store")
    first = task_states(run_study("sparse-parity", cfg, store)["flow_run_id"])
    assert states_of(first, "train-shard") == ["Completed"], first

    edit_module("tasks.sparse_parity.report", "\n# an edit of the report module only\n")
    second = task_states(run_study("sparse-parity", cfg, store)["flow_run_id"])
    assert states_of(second, "train-shard") == ["Cached"], second
    assert states_of(second, "sparse-parity-spec") == ["Cached"], second
    assert states_of(second, "sparse-parity-report") == ["Completed"], second

    edit_module("tasks.sparse_parity.data", "\n# an edit of the sampler module the training calls\n")
    third = task_states(run_study("sparse-parity", cfg, store)["flow_run_id"])
    assert states_of(third, "train-shard") == ["Completed"], third
    assert states_of(third, "sparse-parity-spec") == ["Completed"], third  # it lives in data.py itself


# ------------------------------------------------------------------------------------------ outside data by content
def _files_corpus(tmp_path: Path) -> Path:
    """40 standard-library modules copied into a directory: a corpus whose files the test may edit."""
    from tasks.lm.corpus import stdlib_dir

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for src in sorted(stdlib_dir().glob("*.py"))[:40]:
        shutil.copy(src, corpus / src.name)
    return corpus


def test_editing_a_corpus_file_recomputes_the_losses(prefect_server, tmp_path):
    corpus = _files_corpus(tmp_path)
    cfg = load_config(LMConfig, ROOT / "configs/lm/tiny.toml",
                      ["corpus.kind='files'", f"corpus.path='{corpus}'", "corpus.pattern='*.py'", "suite.steps=15",
                       "analysis.bootstrap=0", "report.plots=false"])
    cfg.suite.sizes = cfg.suite.sizes[:3]
    store = str(tmp_path / "store")
    out1 = run_study("lm-losses", cfg, store)
    victim = sorted(corpus.glob("*.py"))[0]
    text = victim.read_text()
    victim.write_text(text.replace("def ", "def  ", 1) if "def " in text else text + "\n# edited\n")
    out2 = run_study("lm-losses", cfg, store)
    states = task_states(out2["flow_run_id"])
    assert states_of(states, "lm-corpus") == ["Completed"], states
    losses = states_of(states, "lm-token-losses")
    assert losses == ["Completed"] * 3, states  # keyed by name, all of these came back Cached
    assert out2["artifacts"]["documents"]["content_hash"] != out1["artifacts"]["documents"]["content_hash"]


def test_the_stdlib_corpus_key_includes_the_python_version(monkeypatch):
    from tasks.lm import corpus as corpus_mod

    cfg = CorpusConfig(kind="stdlib", pattern="json/*.py")
    here = corpus_mod.corpus_fingerprint(cfg)
    assert here.startswith(f"python {sys.version.split()[0]}:")
    monkeypatch.setattr(corpus_mod.sys, "version", "3.99.0 (a different interpreter)")
    assert corpus_mod.corpus_fingerprint(cfg) != here


def test_a_local_pretrained_tokenizer_is_keyed_by_its_content(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tasks.lm.model_source import model_fingerprint

    vocab = {"[UNK]": 0, "a": 1, "b": 2, "c": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    path = tmp_path / "tokenizer"
    fast.save_pretrained(path)
    before = model_fingerprint(str(path), None)
    assert before.startswith("dir:") and model_fingerprint(str(path), None) == before
    # same name, same size, same mtime, different content: only hashing the bytes tells them apart
    target = path / "tokenizer.json"
    st = target.stat()
    data = target.read_text()
    assert '"b": 2' in data
    target.write_text(data.replace('"b": 2', '"x": 2'))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size
    assert model_fingerprint(str(path), None) != before


# ------------------------------------------------------------------------------------------ results are data
class _Payload:
    """Pickled, it creates `marker` when unpickled: what a tampered result file could do with pickle."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def _spec_flow():
    from prefect import flow

    from tasks.sparse_parity.data import build_spec

    @flow(name="spec-only")
    def spec_flow(task_cfg, store: str):
        return build_spec(task_cfg=task_cfg, store=store, return_state=True)

    return spec_flow


def test_a_tampered_cached_result_cannot_run_code(prefect_server, tmp_path):
    from prefect._internal.result_records import ResultRecord

    from schemas.sparse_parity import TaskConfig

    spec_flow = _spec_flow()
    task_cfg, store = TaskConfig(n_tasks=4, n_bits=8, k=3, seed=int(time.time()) % 100000), str(tmp_path / "s")
    first = spec_flow(task_cfg, store)
    assert first.name == "Completed"
    record_path = Path(first.data.metadata.storage_key)
    assert json.loads(record_path.read_text())["metadata"]["serializer"]["type"] == "quanta-refs-json"
    marker = tmp_path / "code-ran"
    evil = {"metadata": {**json.loads(record_path.read_text())["metadata"],
                         "serializer": {"type": "pickle", "picklelib": "pickle"}},
            "result": base64.b64encode(pickle.dumps(_Payload(str(marker)))).decode()}
    record_path.write_text(json.dumps(evil))

    second = spec_flow(task_cfg, store)
    assert not marker.exists(), "loading the cached result ran code"
    assert second.name == "Completed" and second.result() == first.result()  # recomputed, same artifact
    third = spec_flow(task_cfg, store)
    assert third.name == "Cached" and not marker.exists()  # the recomputed result is trusted on the next run
    # the payload is live: Prefect's own loader would have run it
    ResultRecord.deserialize(record_path.read_bytes())
    assert marker.exists()


def test_result_json_loads_refs_and_nothing_else():
    from storage import ArtifactRef

    ser = caching.RefsJSONSerializer()
    ref = ArtifactRef(kind="report", uri="/s/report/x.d", content_hash="ab" * 32, schema_version=1)
    blob = ser.dumps({"ref": ref, "refs": [ref], "n": 3, "error": ValueError("bad corpus")})
    back = ser.loads(blob)
    assert back["ref"] == ref and back["refs"] == [ref] and back["n"] == 3
    assert isinstance(back["error"], caching.RecordedTaskError) and "bad corpus" in str(back["error"])
    hostile = json.dumps({"py/object": "os.system", "__reduce__": ["os.system", ["touch /tmp/x"]]}).encode()
    assert ser.loads(hostile) == json.loads(hostile)  # plain data: nothing named in it is imported
    assert caching.untrusted_serializer(b'{"metadata": {"serializer": {"type": "pickle"}}}') == "pickle"
    assert caching.untrusted_serializer(b"not json") == "(unreadable)"


# ------------------------------------------------------------------------------------------ locks and the network
def test_task_locks_exclude_other_processes_and_die_with_their_holder(tmp_path):
    from tasks.run_locks import FlockLockManager

    locks = FlockLockManager(tmp_path / "locks")
    key = "f" * 64
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
         "from tasks.run_locks import FlockLockManager;"
         "m = FlockLockManager(sys.argv[2]); assert m.acquire_lock(sys.argv[3], 'other');"
         "print('held', flush=True); time.sleep(600)", str(ROOT), str(tmp_path / "locks"), key],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert locks.is_locked(key) and not locks.is_lock_holder(key, "me")
        assert not locks.acquire_lock(key, "me", acquire_timeout=0.3)
        assert not locks.wait_for_lock(key, timeout=0.3)
        holder.kill()  # SIGKILL: no cleanup code runs; the kernel drops the flock
        holder.wait()
        assert locks.wait_for_lock(key, timeout=10)
        assert locks.acquire_lock(key, "me", acquire_timeout=10) and locks.is_lock_holder(key, "me")
        with pytest.raises(ValueError):
            locks.release_lock(key, "someone-else")
        locks.release_lock(key, "me")
        assert not locks.is_locked(key)
        assert pickle.loads(pickle.dumps(locks)) == locks  # travels to Dask workers with the task
    finally:
        if holder.poll() is None:
            holder.kill()
    assert caching.CACHE_POLICY.isolation_level == "SERIALIZABLE"
    assert isinstance(caching.CACHE_POLICY.lock_manager, FlockLockManager)


def test_the_local_dask_cluster_listens_on_loopback_only():
    from distributed import LocalCluster

    from flows.running import dask_task_runner

    kwargs = dict(dask_task_runner("local").cluster_kwargs, n_workers=0, dashboard_address="127.0.0.1:0")
    with LocalCluster(**kwargs) as cluster:
        assert cluster.scheduler.address.startswith("tcp://127.0.0.1:")
        http = cluster.scheduler.http_server
        hosts = {sock.getsockname()[0] for sock in http._sockets.values()}
        assert hosts == {"127.0.0.1"}, hosts
    assert dask_task_runner("local").cluster_kwargs["dashboard_address"].startswith("127.0.0.1:")
