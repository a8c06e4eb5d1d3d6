"""A study on a real Dask cluster (the `dask scheduler` / `dask worker` command-line tools, two worker processes)
gives the same results as the in-process run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from storage import ArtifactRef, Store
from tests.cluster_fixture import cli_cluster_address  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs/sparse_parity/tiny.toml")
# two shards: the two workers can each train one
OVERRIDES = ["--set=grid.seeds=[0, 1]", "--set=grid.steps=80", "--set=grid.log_points=6"]


def _run(capsys, store: str, *extra) -> dict:
    assert main(["run", "sparse-parity", "--config", TINY, "--store", store, "--json", *OVERRIDES, *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _table(store: str, art: dict):
    st = Store(store)
    return st.read_table(ArtifactRef(**art, schema_version=st.lineage(art["content_hash"])["schema_version"]))


def test_sparse_parity_on_dask_cli_workers_equals_the_in_process_run(prefect_server, cli_cluster_address, tmp_path,
                                                                     capsys):
    from distributed import Client

    local = _run(capsys, str(tmp_path / "local"))
    remote = _run(capsys, str(tmp_path / "cluster"), "--dask-address", cli_cluster_address)
    assert remote["task_states"] == {"Completed": local["task_states"]["Completed"]}
    # content-addressed artifacts: the same bytes, hence the same hashes, wherever they were computed
    assert {k: a["content_hash"] for k, a in remote["artifacts"].items() if k != "report"} == \
        {k: a["content_hash"] for k, a in local["artifacts"].items() if k != "report"}
    a, b = _table(str(tmp_path / "local"), local["artifacts"]["runs"]), \
        _table(str(tmp_path / "cluster"), remote["artifacts"]["runs"])
    np.testing.assert_array_equal(a.mean_loss.to_numpy(), b.mean_loss.to_numpy())
    for key, value in local["results"].items():
        if isinstance(value, float):
            assert remote["results"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    # the work ran on the workers: both joined, and the shards' lineage names this flow run
    with Client(cli_cluster_address) as client:
        assert len(client.scheduler_info()["workers"]) == 2
    rec = Store(tmp_path / "cluster").lineage(remote["artifacts"]["curves_1"]["content_hash"])
    assert rec["producer"] == "train-shard" and rec["flow_run_id"] == remote["flow_run_id"]


def test_qdg_similarity_on_dask_cli_workers_equals_the_in_process_run(cli_cluster_address, tmp_path):
    """The QDG similarity C = G G^T, blockwise on the same two `dask worker` processes, reading and writing a store
    on a path they share: bit for bit what a LocalCluster started for the task writes."""
    from distributed import Client, get_task_stream

    from schemas.qdg import SimilarityConfig
    from tasks.qdg.similarity import similarity_matrix_to_store
    from tests.qdg.planted_gradients import planted_gradients, write_gradient_blocks

    g, _ = planted_gradients([60, 40, 30], dim=96, seed=5)
    cluster_store, local_store = Store(tmp_path / "cluster"), Store(tmp_path / "local")
    with Client(cli_cluster_address) as client, get_task_stream(client) as stream:
        on_cluster = similarity_matrix_to_store(cluster_store, write_gradient_blocks(cluster_store, g, block_rows=50),
                                                SimilarityConfig(chunk_rows=32, dask_address=cli_cluster_address))
    assert stream.data, "no task ran on the cluster's workers"
    local = similarity_matrix_to_store(local_store, write_gradient_blocks(local_store, g, block_rows=50),
                                       SimilarityConfig(chunk_rows=32, n_workers=1))
    assert on_cluster.content_hash == local.content_hash
    c = cluster_store.open_zarr(on_cluster)["c"][...]
    np.testing.assert_allclose(c, np.clip(g.astype(np.float64) @ g.T.astype(np.float64), -1, 1), atol=2e-6)
