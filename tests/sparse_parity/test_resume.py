"""Kill a training run mid-grid, rerun it: only the unfinished shards are recomputed.

The first run is a real `quanta run` subprocess on the session's Prefect test server, with the session's Prefect
home and result storage (so both runs share cache records). Its shards run one at a time
(PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS=1) so that there is a clean moment with exactly one shard done.
It is SIGKILLed right after that shard's artifact is published and Prefect's cache record for it is written;
the rerun (in this process) must find that shard `Cached` and train the other two.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fault_helpers import task_states
from flows.run_artifacts import result_path
from flows.running import run_study
from schemas.config import load_config
from schemas.sparse_parity import SparseParityConfig
from storage import ArtifactRef, Store

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/sparse_parity/tiny.toml"
# ~1 ms a step for the tiny grid on one core: a few seconds a shard, a wide window for the kill
OVERRIDES = ["grid.seeds=[0, 1, 2]", "grid.groups_per_shard=1", "grid.steps=2000"]
CURVES = "sparse_parity.curves"


def _published(st: Store) -> dict[str, dict]:
    """Curves artifacts that are published *and* trusted (lineage record present): uri -> record."""
    recs = {r["uri"]: r for r in st.lineage_index() if r.get("kind") == CURVES}
    return {str(p): recs[str(p)] for p in sorted(Path(st.root, CURVES).glob("*.zarr")) if str(p) in recs}


def _train_shard_runs(client, flow_run_id=None, since=None) -> list:
    """The train-shard runs of a flow that is still running in another process, read live (polled until one
    completes, to kill the run there): not the final states of a finished run, which tests read through
    flows.running.final_task_runs."""
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterId, TaskRunFilter,
                                                TaskRunFilterName, TaskRunFilterStartTime)

    flt = TaskRunFilter(name=TaskRunFilterName(like_="train-shard"))
    if since is not None:
        flt.start_time = TaskRunFilterStartTime(after_=since)
    frf = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])) if flow_run_id else None
    return client.read_task_runs(task_run_filter=flt, flow_run_filter=frf)  # live read of a running flow


def test_killed_run_resumes_only_unfinished_shards(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Crashed
    from prefect.types._datetime import now

    st = Store(tmp_path / "store")
    api = PREFECT_API_URL.value()
    assert api, "the prefect_server fixture sets the API URL"
    env = dict(os.environ, PREFECT_API_URL=api, PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for k in ("PREFECT_HOME", "QUANTA_PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH"):
        assert env[k], k  # the session's: results and cache records are shared with this process
    cmd = [sys.executable, "-m", "flows.cli", "run", "sparse-parity", "--config", str(TINY),
           *[f"--set={o}" for o in OVERRIDES], "--store", st.url]
    log = tmp_path / "first-run.log"
    started = now("UTC")
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    observed: dict = {}
    try:
        with get_client(sync_client=True) as client:
            # 1) wait for exactly one published, trusted curves artifact
            while True:
                assert proc.poll() is None, f"first run ended before the kill:\n{log.read_text()[-3000:]}"
                assert time.monotonic() - t0 < 120, f"no shard finished in time:\n{log.read_text()[-3000:]}"
                published = _published(st)
                if published:
                    break
                time.sleep(0.05)
            observed["published_after_s"] = round(time.monotonic() - t0, 2)
            assert len(published) == 1, "shards must run one at a time for this test"
            # 2) was Prefect's cache record already written at that moment? then wait until it is
            record_path, t1, polls = None, time.monotonic(), 0
            while True:
                polls += 1
                done = [r for r in _train_shard_runs(client, since=started) if r.state and r.state.is_completed()]
                record_path = result_path(done[0]) if done else None
                if record_path is not None and record_path.exists():
                    break
                assert proc.poll() is None, f"first run ended before the kill:\n{log.read_text()[-3000:]}"
                assert time.monotonic() - t1 < 30, "the finished shard's cache record never appeared"
                time.sleep(0.02)
            observed["cache_record_after_publish_s"] = round(time.monotonic() - t1, 3)
            observed["cache_record_polls"] = polls  # 1: already written when the artifact was seen published
            first_flow_run = done[0].flow_run_id
            assert len(_published(st)) == 1, "a second shard finished before the kill: raise grid.steps"
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            # the killed run stays `Running` on the server (no heartbeat here): mark it as the crash it was
            client.set_flow_run_state(first_flow_run, Crashed(message="SIGKILLed by test_resume"), force=True)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # nothing half-written is trusted: every curves artifact in place has its lineage record, and opens valid
    (uri, rec), = _published(st).items()
    assert sorted(str(p) for p in Path(st.root, CURVES).glob("*.zarr")) == [uri]
    ref = ArtifactRef(kind=CURVES, uri=uri, content_hash=rec["content_hash"], schema_version=rec["schema_version"])
    arrays, _ = st.read_zarr(ref)
    assert arrays["seed"].size and len(set(arrays["seed"].tolist())) == 1
    observed["tmp_leftovers"] = len(list(Path(st.root, "_tmp").iterdir()))

    # rerun the same study: the finished shard comes back Cached, the two others train
    t2 = time.monotonic()
    out = run_study("sparse-parity", load_config(SparseParityConfig, TINY, OVERRIDES), st.url)
    observed["rerun_s"] = round(time.monotonic() - t2, 1)
    states = task_states(out["flow_run_id"])
    shards = {name: s for name, s in states.items() if name.startswith("train-shard")}
    assert sorted(shards.values()) == ["Cached", "Completed", "Completed"], states
    assert states[next(n for n in states if n.startswith("sparse-parity-spec"))] == "Cached", states
    # ... and the cached shard is the one published before the kill
    curves = [a for k, a in out["artifacts"].items() if k.startswith("curves_")]
    assert len(curves) == 3 and rec["content_hash"] in {a["content_hash"] for a in curves}
    assert len(_published(st)) == 3
    runs_hash = out["artifacts"]["runs"]["content_hash"]
    runs = st.read_table(ArtifactRef(**out["artifacts"]["runs"],
                                     schema_version=st.lineage(runs_hash)["schema_version"]))
    assert set(runs.seed) == {0, 1, 2}
    assert {"alpha_N", "alpha_S"} <= set(out["results"])
    print("observed:", json.dumps(observed))
