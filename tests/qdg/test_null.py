"""The null beside every QDG number (tasks/qdg/null.py): structure-free rows through the same pipeline."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from planted_gradients import planted_gradients, write_gradient_blocks
from schemas.qdg import ClusteringConfig, ZipfConfig
from tasks.qdg.clustering import spectral_labels
from tasks.qdg.null import (clustering_statistics, compare_with_null, draw_seed, null_affinity, null_draw_to_store,
                            null_rows, null_rows_of, null_table, permute_columns, statistics_of, verdict)
from tasks.qdg.zipf import cluster_sizes, zipf_table

KS = [5, 10, 20]
CL = ClusteringConfig(n_clusters=KS, seeds=[0, 1])
ZCFG = ZipfConfig(bootstrap=0)


def test_the_gaussian_null_in_fewer_dims_has_the_cosines_of_d_dimensional_gaussian_rows():
    """Bartlett's factor: n rows in n dims whose Gram matrix is distributed as that of n Gaussian rows in d > n
    dims: off-diagonal cosines with mean 0 and variance 1/d (and higher moments of the same law)."""
    n, d = 200, 20000
    rows = null_rows(None, n, d, "gaussian", seed=3)
    assert rows.shape == (n, n) and np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)
    off = (rows @ rows.T)[np.triu_indices(n, 1)].astype(np.float64)
    direct = np.random.default_rng(4).standard_normal((n, d))
    direct /= np.linalg.norm(direct, axis=1, keepdims=True)
    off_d = (direct @ direct.T)[np.triu_indices(n, 1)]
    se = np.sqrt(2.0 / off.size)  # of a variance ratio from ~20k nearly independent pairs
    assert abs(off.mean()) < 4 / np.sqrt(d * off.size)
    assert off.var() * d == pytest.approx(1.0, abs=5 * se) and off_d.var() * d == pytest.approx(1.0, abs=5 * se)
    assert np.mean(off ** 4) * d * d / 3 == pytest.approx(np.mean(off_d ** 4) * d * d / 3, rel=0.15)


def test_the_permuted_null_keeps_every_column_and_breaks_the_rows():
    g, _ = planted_gradients([30, 20, 10], dim=40, noise=0.3, seed=0)
    x = permute_columns(g.astype(np.float64), np.random.default_rng(1))
    assert np.array_equal(np.sort(x, axis=0), np.sort(g.astype(np.float64), axis=0))  # every column's values kept
    # each column its own permutation (x[:, j] = g[perm_j, j]): no two columns share one
    perms = {tuple(np.argsort(g[:, j])[np.argsort(np.argsort(x[:, j]))]) for j in range(g.shape[1])}
    assert len(perms) == g.shape[1]
    rows = null_rows(g, *g.shape, "permuted", seed=1)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5) and not np.allclose(rows, g, atol=1e-3)


def _measured(rows: np.ndarray) -> tuple[dict, pd.DataFrame]:
    """The statistics the pipeline reports for these rows (seed stability included) and their Zipf table."""
    a = null_affinity(rows, "dense", 20)
    labels = {k: spectral_labels(a.copy(), k, 0, CL.spectral()) for k in KS}
    zipf = zipf_table({k: cluster_sizes(labels[k], k) for k in KS}, rows.shape[0], (0.1, None), ZCFG)
    return statistics_of(zipf, {}), zipf


def _draw_table(rows: np.ndarray, kind: str, draw: int) -> pd.DataFrame:
    x = null_rows(rows, *rows.shape, kind, draw_seed(0, kind, draw))
    stats = clustering_statistics(null_affinity(x, "dense", 20), KS, [0], CL.spectral(), ZCFG)
    return pd.DataFrame({"statistic": list(stats), "value": list(stats.values())})


def test_random_rows_are_indeterminate_and_planted_clusters_are_distinguishable():
    """The measured statistics of random rows sit inside their null (indeterminate); the size slope at k = 5 of
    strongly planted, unequal clusters sits far outside it (near-equal splits of structure-free rows are flat).
    Seed stability is not such a statistic: cluster_qr is deterministic on a converged embedding, so it is ~1 for
    noise too whenever the embedding converges."""
    n, draws = 300, 19
    noise = null_rows(None, n, 64, "gaussian", seed=12345)
    planted, _ = planted_gradients([120, 70, 50, 30, 20, 10], dim=64, noise=0.2, seed=0)
    for rows, random in ((noise, True), (planted, False)):
        measured, zipf = _measured(rows)
        by_kind = {kind: [_draw_table(rows, kind, d) for d in range(draws)] for kind in ("gaussian", "permuted")}
        table = null_table(null_rows_of(measured, by_kind, "r", 0.95))
        env = zipf[zipf.scope == "envelope"].iloc[0]
        if random:
            assert verdict(env.consistent, table, "r")[0] == "indeterminate"
        else:
            slope = table[table.statistic == "slope_k5"]
            assert len(slope) == 2 and (slope.distinguishable == "yes").all() and (slope.measured < slope.null_lo).all()


def test_compare_with_null_p_values_and_the_draw_count_that_a_p_value_needs():
    draws = np.linspace(-1, 1, 19)
    far = compare_with_null(5.0, draws, 0.95)
    assert far["p"] == pytest.approx(1 / 20) and far["distinguishable"] == "yes"
    inside = compare_with_null(0.1, draws, 0.95)
    assert inside["p"] > 0.5 and inside["distinguishable"] == "no"
    few = compare_with_null(5.0, draws[:5], 0.95)  # 5 draws: p >= 1/6 whatever is measured
    assert few["p"] == pytest.approx(1 / 6) and few["distinguishable"] == "no"
    assert compare_with_null(np.nan, draws, 0.95)["distinguishable"] == "n/a"


def test_no_null_is_never_a_claim():
    assert verdict("yes", None, "r")[0] == "indeterminate"
    assert verdict("n/a", None, "r")[0] == "indeterminate"


def test_null_draws_are_reproducible_bit_for_bit(store):
    g, _ = planted_gradients([40, 30, 20, 10], dim=32, noise=0.4, seed=1)
    blocks = write_gradient_blocks(store, g, block_rows=50)
    kw = dict(method="dense", neighbors=10, n_clusters=KS, seeds=[0, 1], spectral=CL.spectral(), zcfg=ZCFG,
              null_seed=7)
    for kind in ("gaussian", "permuted"):
        a = null_draw_to_store(store, blocks, kind, 2, **kw)
        b = null_draw_to_store(store, blocks, kind, 2, **kw)
        c = null_draw_to_store(store, blocks, kind, 3, **kw)
        assert a.content_hash == b.content_hash and a.content_hash != c.content_hash
        assert set(store.read_table(a).statistic) >= {"envelope_slope", "slope_k5", "stability_k20"}
