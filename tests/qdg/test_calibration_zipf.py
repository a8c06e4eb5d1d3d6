"""The qdg zipf stage with the calibrated headline exponent: the headline row beside the per-k and envelope rows,
checked against -(alpha_N + 1) by the envelope's rule, and the qdg-size-exponent task's artifact."""
from __future__ import annotations

import numpy as np
import pytest

from schemas.qdg import SpectralOptions, ZipfConfig
from tasks.qdg.calibration import planted_rows
from tasks.qdg.size_exponent import size_exponent_table
from tasks.qdg.zipf import headline_exponent, zipf_table


def _fit(e, lo, hi):
    from tasks.stats.cluster_sizes import SizeExponent

    return SizeExponent("merged_finite_zipf", e, [lo, hi], 30, 22, 0.95,
                        {"k_over": 160, "k_chosen": 30, "min_size": 10, "n_sim": 200})


def test_headline_row_joins_the_zipf_table_and_is_checked_against_alpha_n():
    sizes = {k: np.full(k, 1000 // k) for k in (10, 20, 40)}
    head = size_exponent_table(_fit(1.4, 1.35, 1.45), 1000)
    table = zipf_table(sizes, 1000, (0.4, [0.38, 0.42]), ZipfConfig(bootstrap=0), head)
    assert list(table.scope) == ["k", "k", "k", "envelope", "headline"]  # the existing rows unchanged, in order
    h = headline_exponent(table)
    assert h["estimator"] == "merged_finite_zipf" and h["exponent"] == pytest.approx(1.4)
    assert h["ci"] == pytest.approx([1.35, 1.45]) and h["slope_ci"] == pytest.approx([-1.45, -1.35])
    assert h["k"] == 30 and h["consistent"] == "yes"
    far = zipf_table(sizes, 1000, (0.9, [0.85, 0.95]), ZipfConfig(bootstrap=0), head)
    assert headline_exponent(far)["consistent"] == "no"
    assert headline_exponent(zipf_table(sizes, 1000, None, ZipfConfig(bootstrap=0))) is None


def test_size_exponent_task_writes_a_validated_artifact(store):
    from tasks.qdg.size_exponent import qdg_size_exponent

    rows, _ = planted_rows(1.6, 20, 800, 32, 0.3, seed=5)
    c = np.clip(rows @ rows.T, -1, 1)  # what the similarity stage stores: exactly symmetric, unit diagonal
    c = np.triu(c) + np.triu(c, 1).T
    np.fill_diagonal(c, 1.0)
    ref = store.write_zarr("qdg.similarity", {"c": c, "row": np.arange(800, dtype=np.int64)}, {"n": 800, "dim": 32})
    out = qdg_size_exponent.fn(ref, k_over=40, spectral=SpectralOptions(), seed=0, store=store.url)
    df = store.read_table(out)
    assert out.kind == "qdg.size_exponent" and len(df) == 1
    r = df.iloc[0]
    assert r.estimator == "merged_finite_zipf" and r.k_over == 40 and r.ci_lo <= 1.6 <= r.ci_hi
