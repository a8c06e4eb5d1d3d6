"""The Prefect database as the runs left it: a flow run whose stored parameters the server cannot send (an integer
past 64 bits, from before configs bounded them) is skipped by name, and never fails a whole `quanta store gc`."""
from __future__ import annotations

import json

import pytest


def test_gc_skips_a_run_the_api_cannot_read(prefect_server, quanta, tmp_path):
    import pandas as pd
    from prefect import flow
    from prefect.client.orchestration import get_client

    from storage import Store

    @flow(name="quanta-test-poisoned-parameters")
    def poisoned(n: int = 0) -> int:
        return n

    with get_client(sync_client=True) as client:
        bad = client.create_flow_run(poisoned, parameters={"n": 10**22}, name="poisoned-run")
        good = client.create_flow_run(poisoned, parameters={"n": 1}, name="readable-run")
    store = Store(tmp_path / "store")
    store.write_table("sparse_parity.runs", pd.DataFrame({
        "model_id": ["m1"], "width": [4], "n_params": [100], "data_size": [-1], "seed": [0], "alpha": [0.4],
        "step": [1], "mean_loss": [1.0], "subtasks_learned": [0]}))

    got = quanta("store", "gc", "--keep-last", "1", "--dry-run", "--json", "--store", store.url)
    assert got.rc == 0, got.text[-3000:]
    warned = [line for line in got.err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and str(bad.id) in warned[0] and "skipped" in warned[0], got.err[-3000:]
    assert str(good.id) not in got.err and "Traceback" not in got.text
    summary = json.loads(got.out.strip().splitlines()[-1])
    listed = {r["flow_run_id"] for r in summary["kept_runs"] + summary["dropped_runs"]}
    assert summary["dry_run"] and str(bad.id) not in listed, summary

    # the runs the API can read are still read
    from flows.run_artifacts import UnreadableRunWarning, run_usage

    with pytest.warns(UnreadableRunWarning, match=str(bad.id)):
        usage = run_usage(flow_names=["quanta-test-poisoned-parameters"])
    assert str(good.id) in usage and str(bad.id) not in usage
