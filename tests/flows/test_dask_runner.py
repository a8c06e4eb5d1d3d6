"""Flows on an existing Dask scheduler (by address) give the same results as in-process runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flows.running import run_study
from schemas.config import load_config
from schemas.sparse_parity import SparseParityConfig
from storage import ArtifactRef, Store

TINY = Path(__file__).resolve().parents[2] / "configs/sparse_parity/tiny.toml"


def _runs(store, out):
    a = out["artifacts"]["runs"]
    return Store(store).read_table(ArtifactRef(kind=a["kind"], uri=a["uri"], content_hash=a["content_hash"],
                                               schema_version=1))


def test_sparse_parity_on_a_dask_scheduler_matches_in_process(prefect_server, tmp_path):
    from distributed import LocalCluster

    cfg = load_config(SparseParityConfig, TINY, ["grid.seeds=[0, 1]", "grid.steps=60", "grid.log_points=6"])
    local_store, dask_store = str(tmp_path / "local"), str(tmp_path / "dask")
    local = run_study("sparse-parity", cfg, local_store)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        remote = run_study("sparse-parity", cfg, dask_store, dask_address=cluster.scheduler_address)
    assert remote["task_states"] == {"Completed": local["task_states"]["Completed"]}
    a, b = _runs(local_store, local), _runs(dask_store, remote)
    assert (a.model_id == b.model_id).all() and (a.step == b.step).all()
    np.testing.assert_allclose(a.mean_loss, b.mean_loss, rtol=1e-4, atol=1e-5)
    # lineage written by the Dask worker names the producing task and this flow run
    rec = Store(dask_store).lineage(remote["artifacts"]["curves_1"]["content_hash"])
    assert rec["producer"] == "train-shard" and rec["flow_run_id"] == remote["flow_run_id"]
