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
from storage import lineage_graph as G

from fault_helpers import flip_bytes

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
    up = G.upstream(records, G.resolve(records, runs.content_hash[:12]))
    assert [r["kind"] for _, r in up] == ["sparse_parity.runs", "sparse_parity.spec"]
    assert G.resolve(records, os.path.relpath(spec.uri))["content_hash"] == spec.content_hash  # a pasted path
    down = G.downstream(records, G.resolve(records, spec.uri))
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


# ------------------------------------------------------------------------------------------ canonical table hashes
def test_table_hash_does_not_depend_on_pandas_dtypes_and_matches_what_reads_back(store):
    base = _runs_df()
    as_object = base.astype({"model_id": object})
    as_string = base.astype({"model_id": "string", "width": "Int64"})
    assert as_object["model_id"].dtype == object and str(as_string["model_id"].dtype) == "string"
    from storage.hashing import hash_table

    assert hash_table(as_object) == hash_table(as_string) == hash_table(base)
    assert hash_table(base.assign(model_id=["m1", "m2"])) != hash_table(base)  # content still counts
    assert hash_table(base.rename(columns={"seed": "seed2"})) != hash_table(base)  # and names
    ref_obj = store.write_table("sparse_parity.runs", as_object)
    ref_str = store.write_table("sparse_parity.runs", as_string)
    assert ref_obj == ref_str  # one artifact, whichever dtype wrote it
    store.read_table(ref_obj)  # re-hashed from the Arrow table read back: equal


def test_table_hash_streams_by_batches_with_the_same_result():
    import pyarrow.parquet as pq

    from storage.hashing import hash_arrow_batches, hash_table, table_to_arrow

    df = pd.DataFrame({"s": [f"row{i}" * (i % 3) for i in range(1000)], "x": np.arange(1000.0),
                       "flag": np.arange(1000) % 2 == 0})
    df.loc[7, "s"] = None
    import io

    buf = io.BytesIO()
    pq.write_table(table_to_arrow(df), buf, row_group_size=128)
    pf = pq.ParquetFile(io.BytesIO(buf.getvalue()))
    assert hash_arrow_batches(pf.schema_arrow, pf.iter_batches(batch_size=37)) == hash_table(df)


# ------------------------------------------------------------------------------------------ a store that heals
def _zarr_chunk(ref, name: str = "subsets") -> str:
    chunks = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ref.uri, name)) for f in fs if f != "zarr.json"]
    assert chunks, "the array has a chunk file"
    return chunks[0]


def test_writing_again_repairs_a_corrupt_copy_and_keeps_a_sound_one(store):
    spec = store.write_zarr("sparse_parity.spec", _spec_arrays(), SPEC_ATTRS)
    runs = store.write_table("sparse_parity.runs", _runs_df())
    sound_mtime = os.stat(runs.uri).st_mtime_ns
    assert store.write_table("sparse_parity.runs", _runs_df()) == runs  # a sound copy is kept as it is
    assert os.stat(runs.uri).st_mtime_ns == sound_mtime
    flip_bytes(runs.uri)  # not visible to the manifest: only a re-hash finds it
    flip_bytes(_zarr_chunk(spec))
    with pytest.raises(ArtifactCorruptError, match="sparse_parity.runs"):
        store.read_table(runs)
    # what --refresh does: the same content computed again replaces the damaged copy instead of keeping it
    assert store.write_table("sparse_parity.runs", _runs_df()) == runs
    assert store.write_zarr("sparse_parity.spec", _spec_arrays(), SPEC_ATTRS) == spec
    pd.testing.assert_frame_equal(store.read_table(runs), _runs_df())
    np.testing.assert_array_equal(store.read_zarr(spec)[0]["subsets"], _spec_arrays()["subsets"])
    from storage.verify import verify_store

    assert verify_store(store).ok


def test_read_errors_name_the_artifact_where_it_is_and_the_repair(store):
    runs = store.write_table("sparse_parity.runs", _runs_df())
    spec = store.write_zarr("sparse_parity.spec", _spec_arrays(), SPEC_ATTRS)
    # damaged bytes the manifest cannot see (same sizes, same mtimes): the reader's own error, wrapped
    flip_bytes(runs.uri)
    flip_bytes(_zarr_chunk(spec))
    for read, ref in ((store.read_table, runs), (store.read_zarr, spec)):
        with pytest.raises(ArtifactCorruptError) as e:
            read(ref)
        msg = str(e.value)
        assert ref.short in msg and ref.uri in msg, msg
        assert f"quanta store verify --repair --store {store.url}" in msg and "--refresh" in msg
        assert any(s in msg for s in ("cannot be read (", "does not match", "fails its schema on read")), msg
        assert "\n" not in msg
    # a truncated file: found by the manifest before any reader runs
    with open(runs.uri, "r+b") as f:
        f.truncate(40)
    with pytest.raises(ArtifactCorruptError, match="changed since it was written"):
        store.read_table(runs)
    assert store.artifact_problem(runs).startswith("its files changed")  # what a cache hit sees


def test_cache_hit_check_is_cheap_unless_mtimes_changed(store):
    spec = store.write_zarr("sparse_parity.spec", _spec_arrays(), SPEC_ATTRS)
    assert store.artifact_problem(spec) is None
    manifest = store.lineage(spec.content_hash)["manifest"]
    assert manifest["files"] >= 3 and manifest["bytes"] > 0 and manifest["mtimes"]
    chunk = _zarr_chunk(spec)
    os.utime(chunk, ns=(1, 1))  # a copied store: same bytes, new mtimes -> re-hashed, verified, manifest renewed
    assert store.artifact_problem(spec) is None
    assert store.lineage(spec.content_hash)["manifest"]["mtimes"] != manifest["mtimes"]
    flip_bytes(chunk, keep_mtime=False)  # same size, new mtime: the re-hash finds it
    assert "cannot be read" in store.artifact_problem(spec) or "does not match" in store.artifact_problem(spec)
    from storage.verify import ref_problem

    assert ref_problem(spec) == store.artifact_problem(spec)
    import shutil

    shutil.rmtree(spec.uri)
    assert "missing" in ref_problem(spec)


def _write_same_content(root: str, barrier, n: int) -> tuple:
    st = Store(root)
    barrier.wait()
    refs = []
    for _ in range(n):
        refs.append(st.write_table("sparse_parity.runs", _runs_df()))
        refs.append(st.write_zarr("sparse_parity.spec", _spec_arrays(), SPEC_ATTRS))
    return tuple(r.model_dump_json() for r in refs)


def test_concurrent_writers_of_the_same_content_all_succeed(store_root):
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")
    workers = 4
    with ctx.Manager() as manager:
        barrier = manager.Barrier(workers)
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = list(pool.map(_write_same_content, [store_root] * workers, [barrier] * workers, [3] * workers))
    assert len({r for res in results for r in res}) == 2  # every writer got the same two refs
    st = Store(store_root)
    assert len(_published(st, "sparse_parity.runs")) == 1 and len(_published(st, "sparse_parity.spec")) == 1
    assert os.listdir(os.path.join(store_root, "_tmp")) == []
    assert sorted(os.listdir(os.path.join(store_root, "_lineage"))) == sorted(
        f"{r.content_hash}.json" for r in (st.write_table("sparse_parity.runs", _runs_df()),
                                           st.write_zarr("sparse_parity.spec", _spec_arrays(), SPEC_ATTRS)))
    from storage.verify import verify_store

    report = verify_store(st)
    assert report.ok and report.checked == 2, report


# ------------------------------------------------------------------------------------------ lineage robustness
def test_a_truncated_lineage_record_is_skipped_by_name(store):
    spec = store.write_zarr("sparse_parity.spec", _spec_arrays(), SPEC_ATTRS)
    runs = store.write_table("sparse_parity.runs", _runs_df(), inputs=[spec])
    bad = os.path.join(store.root, "_lineage", f"{spec.content_hash}.json")
    with open(bad, "r+") as f:
        f.truncate(25)
    skipped: list[str] = []
    with pytest.warns(L.LineageRecordWarning, match=spec.content_hash):
        records = store.lineage_index(skipped)
    assert [r["content_hash"] for r in records] == [runs.content_hash]
    assert len(skipped) == 1 and bad in skipped[0]
    with pytest.raises(L.UnreadableRecordError, match=spec.content_hash):
        store.lineage(spec.content_hash)


def test_lineage_lookups_stay_inside_the_store(store, tmp_path):
    store.write_table("sparse_parity.runs", _runs_df())
    (tmp_path / "secret.json").write_text(json.dumps({"content_hash": "x", "secret": True}))
    for name in ("../../secret", "../secret", "/etc/passwd", "abc/def", "zz"):
        with pytest.raises(KeyError, match="not a content hash"):
            store.lineage(name)


def test_zero_byte_tmp_records_do_not_make_prefixes_ambiguous(store):
    ref = store.write_table("sparse_parity.runs", _runs_df())
    lineage_dir = os.path.join(store.root, "_lineage")
    open(os.path.join(lineage_dir, f"{ref.content_hash}.json.deadbeef.tmp"), "w").close()  # a killed writer's
    assert store.lineage(ref.content_hash[:8])["content_hash"] == ref.content_hash
    assert [r["content_hash"] for r in store.lineage_index()] == [ref.content_hash]


def test_opening_a_store_creates_nothing_and_bad_locations_are_one_line_errors(tmp_path):
    from schemas import StoreError, UserInputError

    where = tmp_path / "typo" / "store"
    st = Store(where)
    assert not st.exists() and not (tmp_path / "typo").exists()
    assert st.lineage_index() == []
    with pytest.raises(KeyError, match="no quanta store at"):
        st.lineage("abc")
    from storage.verify import verify_store

    with pytest.raises(StoreError, match="no quanta store at"):
        verify_store(st)
    assert not (tmp_path / "typo").exists()
    with pytest.raises(UserInputError, match="cannot open store 'nosuchproto://x'"):
        Store("nosuchproto://x")
    st.write_table("sparse_parity.runs", _runs_df())  # the first write creates it
    assert st.exists()


# ------------------------------------------------------------------------------------------ debris of killed writers
def test_debris_of_dead_writers_is_removed_and_live_writers_work_is_kept(store):
    import socket
    import subprocess
    import sys
    import time

    from storage.debris import DEBRIS_GRACE_S, clean_debris

    store.write_table("sparse_parity.runs", _runs_df())
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    tmp, lin = os.path.join(store.root, "_tmp"), os.path.join(store.root, "_lineage")
    made = {
        "dead_dir": os.path.join(tmp, f"{'a' * 32}~{host}~{dead_pid}.zarr"),
        "dead_record": os.path.join(lin, f"{'b' * 64}.json.{'c' * 32}~{host}~{dead_pid}.tmp"),
        "live_dir": os.path.join(tmp, f"{'d' * 32}~{host}~{os.getpid()}.zarr"),
        "other_host_recent": os.path.join(tmp, f"{'e' * 32}~elsewhere~{dead_pid}.parquet"),
        "untagged_old": os.path.join(lin, f"{'f' * 64}.json.{'0' * 32}.tmp"),
        "untagged_recent": os.path.join(tmp, f"{'1' * 32}.parquet"),
    }
    for key, path in made.items():
        if key.endswith("_dir"):
            os.makedirs(os.path.join(path, "subsets"))
            open(os.path.join(path, "subsets", "c0"), "wb").close()
        else:
            open(path, "wb").close()
    old = time.time() - DEBRIS_GRACE_S - 60
    os.utime(made["untagged_old"], (old, old))
    removed = set(clean_debris(store.root))
    gone = {k for k, p in made.items() if not os.path.exists(p)}
    assert gone == {"dead_dir", "dead_record", "untagged_old"}, (gone, removed)
    assert len(removed) == 3
    assert store.lineage_index()  # the real record is untouched


# ------------------------------------------------------------------------------------------ store verify
def test_verify_store_finds_damage_and_repair_quarantines_it(store):
    from storage.verify import QUARANTINE_DIR, ref_problem, verify_store

    spec = store.write_zarr("sparse_parity.spec", _spec_arrays(), SPEC_ATTRS)
    runs = store.write_table("sparse_parity.runs", _runs_df(), inputs=[spec])
    report_ref = store.write_dir("report", lambda p: (p / "report.md").write_text("# hi\n"), inputs=[runs])
    fits_like = store.write_table("sparse_parity.runs", _runs_df(seed=[1, 1]))
    assert verify_store(store).ok
    flip_bytes(runs.uri)  # only a re-hash sees it
    with open(os.path.join(report_ref.uri, "report.md"), "a") as f:
        f.write("tampered\n")  # a directory artifact
    with open(os.path.join(store.root, "_lineage", f"{fits_like.content_hash}.json"), "r+") as f:
        f.truncate(10)  # an unreadable record: reported once, with its artifact (not also as a write never finished)
    report = verify_store(store)
    assert not report.ok and report.checked == 3
    by_what = sorted((f.what, f.kind or "") for f in report.bad)
    assert by_what == [("artifact", "report"), ("artifact", "sparse_parity.runs"), ("record", "sparse_parity.runs")], \
        report.bad
    (record,) = [f for f in report.bad if f.what == "record"]
    assert record.content_hash == fits_like.content_hash and "unreadable" in record.problem
    assert "never finished" not in " ".join(f.line() for f in report.bad)
    assert all(f.quarantined_to is None for f in report.bad)
    repaired = verify_store(store, repair=True)
    assert len(repaired.bad) == 3 and all(f.quarantined_to for f in repaired.bad)
    assert not os.path.exists(fits_like.uri)  # quarantined with its record: nothing left half-known
    assert os.path.isdir(os.path.join(store.root, QUARANTINE_DIR))
    assert "missing" in ref_problem(runs) and "missing" in ref_problem(report_ref)  # the next run recomputes them
    assert ref_problem(spec) is None
    after = verify_store(store)
    assert after.ok and after.checked == 1


def test_verify_recognises_tables_written_before_the_canonical_hash(store):
    """A table published by an older quanta (pandas-based hash, no manifest) verifies; damaged, it does not."""
    import pyarrow.parquet as pq

    from storage.hashing import table_to_arrow
    from storage.integrity import legacy_table_hash
    from storage.verify import verify_store

    ref = store.write_table("sparse_parity.runs", _runs_df())  # makes the store; then an old-style artifact beside it
    old_dir = os.path.join(store.root, "sparse_parity.runs")
    tmp = os.path.join(old_dir, "tmp.parquet")
    pq.write_table(table_to_arrow(_runs_df(seed=[7, 7])), tmp)
    old_hash = legacy_table_hash(store, tmp)
    path = os.path.join(old_dir, f"{old_hash[:24]}.parquet")
    os.replace(tmp, path)
    L.write_record(store.fs, os.path.join(store.root, "_lineage", f"{old_hash}.json"),
                   {"kind": "sparse_parity.runs", "content_hash": old_hash, "uri": path, "schema_version": 1,
                    "inputs": []})
    report = verify_store(store)
    assert report.ok and report.checked == 2, report.bad
    flip_bytes(path)
    assert [f.content_hash for f in verify_store(store).bad] == [old_hash]
    assert store.artifact_problem(ref) is None
