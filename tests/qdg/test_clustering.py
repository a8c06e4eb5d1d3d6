"""Clustering stage: affinity, spectral clustering on the dense and the kNN paths, stability between seeds."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from fault_helpers import task_states
from planted_gradients import local_scheduler, planted_gradients, write_gradient_blocks
from schemas.qdg import ClusteringConfig, SimilarityConfig, SpectralOptions
from tasks.qdg.clustering import (affinity_from_cosine, canonical_labels, cluster_labels_to_store, labels_ari,
                                  randomized_spectral_embedding, spectral_labels, stability_table)
from tasks.qdg.knn import knn_affinity_to_store, knn_graph
from tasks.qdg.similarity import similarity_matrix_to_store

SIZES = [90, 70, 50, 30]  # planted clusters, unequal


@pytest.fixture(scope="module")
def scheduler():
    with local_scheduler() as cluster:
        yield cluster.scheduler_address


@pytest.fixture
def planted(store, scheduler):
    """(store, gradient block refs, true labels, similarity config) for 240 tokens in 4 planted clusters."""
    g, truth = planted_gradients(SIZES, dim=64, noise=1.0, seed=7)
    refs = write_gradient_blocks(store, g, block_rows=100)
    return store, refs, truth, SimilarityConfig(dask_address=scheduler, chunk_rows=64)


def _truth_table(truth):
    return pd.DataFrame({"row": np.arange(len(truth)), "label": truth})


def test_affinity_from_cosine_is_one_minus_angle_over_pi():
    c = np.array([[1.0, 0.0, -1.0], [1.0000001, -1.0000002, 0.5]], dtype=np.float32)
    a = affinity_from_cosine(c)
    assert a.dtype == np.float64 and a.shape == (2, 3)
    np.testing.assert_allclose(a, [[1.0, 0.5, 0.0], [1.0, 0.0, 2 / 3]], atol=1e-6)  # clipped; arccos(1/2) = pi/3
    np.testing.assert_allclose(affinity_from_cosine(c[1]), a[1], atol=1e-6)


def test_canonical_labels_number_clusters_by_size():
    assert canonical_labels(np.array([5, 2, 2, 9, 9, 9, 5])).tolist() == [1, 2, 2, 0, 0, 0, 1]
    assert canonical_labels(np.array([3, 1, 1, 3])).tolist() == [0, 1, 1, 0]  # tie: the earlier row's cluster


def test_dense_path_recovers_planted_clusters_and_seeds_reproduce(planted):
    store, refs, truth, cfg = planted
    sim = similarity_matrix_to_store(store, refs, cfg)
    opts = ClusteringConfig().spectral()
    first = cluster_labels_to_store(store, sim, 4, 0, opts)
    again = cluster_labels_to_store(store, sim, 4, 0, opts)
    other = cluster_labels_to_store(store, sim, 4, 1, opts)
    assert first == again  # same seed: same labels, same content hash
    df = store.read_table(first)
    assert labels_ari(df, _truth_table(truth)) > 0.99
    assert np.bincount(df["label"]).tolist() == SIZES  # label 0 = the largest cluster
    assert set(df["k"]) == {4} and set(df["seed"]) == {0}
    stab = stability_table([df, store.read_table(other)])
    assert stab[["k", "seed_a", "seed_b"]].values.tolist() == [[4, 0, 1]] and stab["ari"].iloc[0] > 0.99


def test_randomized_embedding_spans_the_exact_spectral_subspace():
    g, truth = planted_gradients([60, 50, 40, 30, 20], dim=48, noise=1.5, seed=9)
    a = affinity_from_cosine(g @ g.T)
    dd = np.sqrt(a.sum(axis=1))
    w, v = np.linalg.eigh(a / dd[:, None] / dd[None, :])  # exact, ascending
    exact = v[:, -5:] / dd[:, None]  # what scikit-learn's embedding spans: u = D^-1/2 x of the top eigenvectors
    maps = randomized_spectral_embedding(a.copy(), 5, np.random.RandomState(0))
    q, _ = np.linalg.qr(exact)
    residual = maps - q @ (q.T @ maps)
    assert np.linalg.norm(residual) / np.linalg.norm(maps) < 1e-4
    for solver, assign in (("randomized", "cluster_qr"), ("randomized", "kmeans"), ("arpack", "cluster_qr")):
        labels = spectral_labels(a.copy(), 5, 0, SpectralOptions(eigen_solver=solver, assign_labels=assign))
        # noise 1.5: a token or two sits between clusters
        assert labels_ari(pd.DataFrame({"row": np.arange(200), "label": labels}), _truth_table(truth)) > 0.97


def test_knn_path_recovers_planted_clusters(planted):
    store, refs, truth, cfg = planted
    knn = knn_affinity_to_store(store, refs, 12, cfg)
    labels = cluster_labels_to_store(store, knn, 4, 0, SpectralOptions(eigen_solver="auto"))  # amg
    assert labels_ari(store.read_table(labels), _truth_table(truth)) > 0.99


def test_knn_affinity_equals_the_dense_top_k_neighbours(planted):
    store, refs, truth, cfg = planted
    k = 9
    c = store.read_zarr(similarity_matrix_to_store(store, refs, cfg))[0]["c"]
    a = store.read_zarr(knn_affinity_to_store(store, refs, k, cfg))[0]
    got = sp.csr_array((a["data"], a["indices"], a["indptr"]), shape=c.shape)
    top = np.argsort(-c, axis=1, kind="stable")[:, :k]  # each row's k most similar, itself first
    assert (top[:, 0] == np.arange(len(c))).all()
    dense = np.zeros_like(c, dtype=np.float64)
    np.put_along_axis(dense, top, affinity_from_cosine(np.take_along_axis(c, top, axis=1)), axis=1)
    expected = np.maximum(dense, dense.T)  # union of the two directions
    assert np.array_equal(got.toarray() > 0, expected > 0)
    np.testing.assert_allclose(got.toarray(), expected, atol=1e-6)
    assert ((got.toarray() > 0).sum(axis=1) >= k).all()


def test_knn_from_the_dense_similarity_equals_the_blockwise_graph_and_brute_force(planted):
    """For small n the kNN graph read from a dense `qdg.similarity` is the blockwise one (angular), and the binary
    weighting is its 0/1 pattern: both equal a brute-force union of each row's k nearest."""
    from tasks.qdg.knn import knn_from_similarity_to_store

    store, refs, truth, cfg = planted
    k = 9
    sim = similarity_matrix_to_store(store, refs, cfg)
    c = np.asarray(store.read_zarr(sim)[0]["c"], dtype=np.float64)
    brute = np.zeros_like(c)
    for i in range(len(c)):  # plain loops: row i's k largest cosines, itself first
        order = sorted(range(len(c)), key=lambda j: (j != i, -c[i, j], j))[:k]
        brute[i, order] = 1.0 - np.arccos(np.clip(c[i, order], -1, 1)) / np.pi
    brute = np.maximum(brute, brute.T)

    def dense(ref):
        a = store.read_zarr(ref)[0]
        return sp.csr_array((a["data"], a["indices"], a["indptr"]), shape=c.shape).toarray()

    angular = dense(knn_from_similarity_to_store(store, sim, k, "angular", block_rows=50))
    np.testing.assert_allclose(angular, brute, atol=1e-6)
    np.testing.assert_allclose(angular, dense(knn_affinity_to_store(store, refs, k, cfg)), atol=1e-6)
    binary = dense(knn_from_similarity_to_store(store, sim, k, "binary"))
    assert np.array_equal(binary, (brute > 0).astype(np.float32))
    labels = cluster_labels_to_store(store, knn_from_similarity_to_store(store, sim, 12, "binary"), 4, 0,
                                     SpectralOptions())
    assert labels_ari(store.read_table(labels), _truth_table(truth)) > 0.99


def test_leiden_finds_planted_communities_without_k(store):
    from schemas.qdg_transform import GraphOptions
    from tasks.qdg.communities import community_labels_to_store, leiden_labels
    from tasks.qdg.knn import knn_graph, top_k_rows

    g, truth = planted_gradients([120, 80, 60, 40, 20], dim=64, noise=1.0, seed=3)
    cos, cols = top_k_rows(g @ g.T, 16)
    a = knn_graph(cos, cols, "binary")
    labels = leiden_labels(a, seed=0)
    from sklearn.metrics import adjusted_rand_score

    assert labels.max() + 1 == 5 and adjusted_rand_score(truth, labels) > 0.99
    assert np.array_equal(labels, leiden_labels(a, seed=0))  # seeded: the same partition
    noise = np.random.default_rng(0).standard_normal((320, 64)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    chance = leiden_labels(knn_graph(*top_k_rows(noise @ noise.T, 16), "binary"), seed=0)
    assert abs(adjusted_rand_score(truth, chance)) < 0.05  # no structure: communities unrelated to the truth
    with pytest.raises(ValueError, match="sparse kNN"):
        leiden_labels(np.ones((4, 4)), seed=0)
    from tasks.qdg.knn import write_knn_affinity

    ref = write_knn_affinity(store, a, np.arange(len(truth)), 64, 16, "binary", [], {})
    table = store.read_table(community_labels_to_store(store, ref, 0, GraphOptions()))
    assert (table.k == 5).all() and labels_ari(table, _truth_table(truth)) > 0.99


def test_knn_graph_symmetrises_as_a_union():
    cos = np.array([[1.0, 0.5], [1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    cols = np.array([[0, 1], [1, 2], [2, 1]])  # 1 is among 0's nearest, not 0 among 1's: still an edge
    a = knn_graph(cos, cols).toarray()
    np.testing.assert_allclose(a, [[1, 2 / 3, 0], [2 / 3, 1, 0.5], [0, 0.5, 1]], atol=1e-6)


def test_k_not_below_n_is_a_clear_error_before_work(planted):
    store, refs, _, cfg = planted
    sim = similarity_matrix_to_store(store, refs, cfg)
    with pytest.raises(ValueError, match=r"k = 240 must be >= 2 and < the number of tokens \(240\)"):
        cluster_labels_to_store(store, sim, 240, 0, SpectralOptions())
    assert not os.path.exists(os.path.join(store.root, "qdg.labels"))
    with pytest.raises(ValueError, match="k = 5 must be"):
        spectral_labels(np.ones((5, 5)), 5, 0)


def test_labels_ari_aligns_rows_and_refuses_different_tokens():
    a = pd.DataFrame({"row": [3, 1, 2, 0], "label": [1, 0, 1, 0]})
    b = pd.DataFrame({"row": [0, 1, 2, 3], "label": [7, 7, 4, 4]})  # the same partition, other names and order
    assert labels_ari(a, b) == pytest.approx(1.0)
    assert labels_ari(a, b.assign(label=[0, 1, 0, 1])) < 0
    with pytest.raises(ValueError, match="cover different tokens"):
        labels_ari(a, b.assign(row=[0, 1, 2, 9]))


def test_method_for_picks_dense_up_to_the_limit():
    cfg = ClusteringConfig(dense_max_n=100)
    assert (cfg.method_for(100), cfg.method_for(101)) == ("dense", "knn")
    assert ClusteringConfig(method="knn").method_for(10) == "knn"


def test_each_clustering_is_its_own_cached_task_and_new_ks_compute_only_themselves(prefect_server, planted):
    """The stages as Prefect tasks: a rerun is all `Cached`; adding a cluster count computes only its clusterings
    and what reads all of them (stability, Zipf)."""
    from prefect import flow

    from schemas.qdg import ZipfConfig
    from tasks.qdg.clustering import cluster_labels, clustering_stability
    from tasks.qdg.similarity import similarity_matrix
    from tasks.qdg.zipf import zipf_analysis

    store, refs, _, sim_cfg = planted

    @flow
    def qdg_clusters(ks: list[int], seeds: list[int]):
        cfg = ClusteringConfig(n_clusters=ks, seeds=seeds)
        sim = similarity_matrix.with_options(task_run_name="similarity")(refs, cfg=sim_cfg, store=store.url)
        labels = {(k, s): cluster_labels.with_options(task_run_name=f"cluster-k{k}-s{s}")(
            sim, k=k, seed=s, spectral=cfg.spectral(), store=store.url) for k in cfg.n_clusters for s in cfg.seeds}
        clustering_stability.with_options(task_run_name="stability")(list(labels.values()), store=store.url)
        zipf_analysis.with_options(task_run_name="zipf")([labels[k, seeds[0]] for k in ks], None,
                                                         cfg=ZipfConfig(bootstrap=0), store=store.url)
        return labels

    first = qdg_clusters([3, 4], [0, 1], return_state=True)
    assert set(task_states(first.state_details.flow_run_id).values()) == {"Completed"}
    again = qdg_clusters([3, 4], [0, 1], return_state=True)
    assert set(task_states(again.state_details.flow_run_id).values()) == {"Cached"}
    assert again.result() == first.result()
    more = task_states(qdg_clusters([3, 4, 5], [0, 1], return_state=True).state_details.flow_run_id)
    assert {n for n, s in more.items() if s == "Completed"} == {"cluster-k5-s0", "cluster-k5-s1", "stability",
                                                                    "zipf"}, more


def test_the_clustering_config_hands_a_task_exactly_its_spectral_options():
    cfg = ClusteringConfig(n_clusters=[5, 9], seeds=[3], eigen_solver="arpack", assign_labels="kmeans", n_init=4)
    assert cfg.spectral() == SpectralOptions(eigen_solver="arpack", assign_labels="kmeans", n_init=4)
    # the k and seed lists are not part of it: a task's cache key does not move when they change
    assert cfg.spectral() == cfg.model_copy(update={"n_clusters": [5], "seeds": [0, 1]}).spectral()
