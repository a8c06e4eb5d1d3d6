"""The artifact store: validation on write and read, atomic writes, content hashes, lineage."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from schemas import ArtifactCorruptError, ArtifactValidationError
from storage import ArtifactMissingError, Store
from storage import lineage as L

SPEC_ATTRS = {"n_tasks": 2, "n_bits": 4, "k": 3, "alpha": 0.4, "seed": 0}


def _spec_arrays(bad_index: int | None = None):
    subsets = np.array([[0, 1, 2], [1, 2, 3]])
    if bad_index is not None:
        subsets[1, 2] = bad_index
    return {"subsets": subsets, "probs": np.array([0.7, 0.3])}


def _runs_df(**overrides):
    df = pd.DataFrame({
        "model_id": ["m1", "m1"], "width": [4, 4], "n_params": [100, 100], "data_size": [-1, -1],
        "seed": [0, 0], "alpha": [0.4, 0.4], "step": [1, 2], "mean_loss": [1.0, 0.5],
        "subtasks_learned": [0, 1]})
    for k, v in overrides.items():
        df[k] = v
    return df


def _published(store: Store, kind: str) -> list[str]:
    d = os.path.join(store.root, kind)
    return os.listdir(d) if os.path.isdir(d) else []


def test_zarr_round_trip_is_content_addressed(store):
    ref = store.write_zarr("sparse_parity.spec", _spec_arrays(), SPEC_ATTRS, params={"why": "test"})
    arrays, attrs = store.read_zarr(ref)
    np.testing.assert_array_equal(arrays["subsets"], _spec_arrays()["subsets"])
    assert attrs == SPEC_ATTRS
    assert ref.content_hash[:24] in ref.uri and ref.schema_version == 1
    again = store.write_zarr("sparse_parity.spec", _spec_arrays(), SPEC_ATTRS)
    assert again == ref  # same content -> same artifact
    assert len(_published(store, "sparse_parity.spec")) == 1


def test_invalid_write_names_field_and_value_and_leaves_nothing(store):
    with pytest.raises(ArtifactValidationError) as e:
        store.write_zarr("sparse_parity.spec", _spec_arrays(bad_index=9), SPEC_ATTRS)
    msg = str(e.value)
    assert "sparse_parity.spec" in msg and "'subsets'" in msg and "9" in msg
    assert _published(store, "sparse_parity.spec") == []
    assert os.listdir(os.path.join(store.root, "_tmp")) == []
    assert os.listdir(os.path.join(store.root, "_lineage")) == []


def test_crash_during_incremental_write_publishes_nothing(store):
    with pytest.raises(RuntimeError):
        with store.zarr_writer("sparse_parity.spec", attrs=SPEC_ATTRS) as w:
            w.group.create_array("subsets", shape=(2, 3), dtype="int64")
            raise RuntimeError("killed mid-write")
    assert _published(store, "sparse_parity.spec") == []
    assert os.listdir(os.path.join(store.root, "_tmp")) == []


def test_read_validates_and_detects_tampering(store):
    ref = store.write_zarr("sparse_parity.spec", _spec_arrays(), SPEC_ATTRS)
    import zarr

    g = zarr.open_group(ref.uri, mode="r+")
    g["subsets"][1, 2] = 7  # out of range for n_bits = 4
    with pytest.raises(ArtifactValidationError, match="subsets"):
        store.read_zarr(ref)
    g["subsets"][1, 2] = 0  # valid values, but not the content the ref names (found by the manifest or the hash)
    with pytest.raises(ArtifactCorruptError, match="content") as e:
        store.read_zarr(ref)
    assert ref.short in str(e.value) and "quanta store verify --repair" in str(e.value)


def test_incomplete_artifact_is_not_trusted(store):
    ref = store.write_zarr("sparse_parity.spec", _spec_arrays(), SPEC_ATTRS)
    os.remove(os.path.join(store.root, "_lineage", f"{ref.content_hash}.json"))  # as if the write was cut
    with pytest.raises(ArtifactMissingError, match="missing or incomplete"):
        store.read_zarr(ref)


def test_schema_version_mismatch_is_an_error(store):
    ref = store.write_zarr("sparse_parity.spec", _spec_arrays(), SPEC_ATTRS)
    stale = ref.model_copy(update={"schema_version": 0})
    with pytest.raises(ArtifactValidationError, match="schema_version"):
        store.read_zarr(stale)


def test_table_validation_names_column_row_and_value(store):
    with pytest.raises(ArtifactValidationError) as e:
        store.write_table("sparse_parity.runs", _runs_df(width=[4, -3]))
    assert "'width'" in str(e.value) and "-3" in str(e.value) and "row 1" in str(e.value)
    with pytest.raises(ArtifactValidationError, match="extra"):
        store.write_table("sparse_parity.runs", _runs_df(extra=[1, 2]))
    ref = store.write_table("sparse_parity.runs", _runs_df())
    pd.testing.assert_frame_equal(store.read_table(ref), _runs_df())


def test_lineage_records_producer_inputs_and_dependents(store):
    spec = store.write_zarr("sparse_parity.spec", _spec_arrays(), SPEC_ATTRS, params={"seed": 0})
    runs = store.write_table("sparse_parity.runs", _runs_df(), inputs=[spec], params={"threshold_bits": 0.1})
    assert runs.inputs == (spec.content_hash,)
    rec = store.lineage(runs.content_hash[:10])
    assert rec["kind"] == "sparse_parity.runs" and rec["params"] == {"threshold_bits": 0.1}
    assert rec["inputs"][0]["content_hash"] == spec.content_hash
    assert rec["code_version"].startswith("0.1.0") and rec["created_at"]
    records = store.lineage_index()
    up = L.upstream(records, L.resolve(records, runs.content_hash[:12]))
    assert [r["kind"] for _, r in up] == ["sparse_parity.runs", "sparse_parity.spec"]
    assert L.resolve(records, os.path.relpath(spec.uri))["content_hash"] == spec.content_hash  # a pasted path
    down = L.downstream(records, L.resolve(records, spec.uri))
    assert [r["content_hash"] for _, r in down] == [runs.content_hash]
    # the Parquet file carries the same record in its key-value metadata
    import pyarrow.parquet as pq

    meta = pq.read_schema(runs.uri).metadata[b"quanta"]
    assert json.loads(meta)["inputs"][0]["content_hash"] == spec.content_hash


def test_fsspec_url_store_works_the_same_way(tmp_path):
    import uuid

    store = Store(f"memory://quanta-{uuid.uuid4().hex}")
    assert not store.is_local and store.url.startswith("memory://")
    spec = store.write_zarr("sparse_parity.spec", _spec_arrays(), SPEC_ATTRS)
    assert spec.uri.startswith("memory://")
    np.testing.assert_array_equal(store.read_zarr(spec)[0]["probs"], [0.7, 0.3])
    runs = store.write_table("sparse_parity.runs", _runs_df(), inputs=[spec])
    pd.testing.assert_frame_equal(store.read_table(runs), _runs_df())
    rep = store.write_dir("report", lambda p: (p / "report.md").write_text("# hi\n"), inputs=[runs])
    assert store.lineage(rep.content_hash)["inputs"][0]["content_hash"] == runs.content_hash
    with pytest.raises(ArtifactValidationError):
        store.write_zarr("sparse_parity.spec", _spec_arrays(bad_index=9), SPEC_ATTRS)
    assert store.fs.ls(store._join("_tmp")) == []
