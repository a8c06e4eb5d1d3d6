"""Sparse parity data and the batched training grid: batched == alone, and models really learn."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from schemas.sparse_parity import TaskConfig
from tasks.sparse_parity.data import Sampler, eval_set, make_spec, train_set, zipf_probs
from tasks.sparse_parity.train import Group, log_steps, n_params, train_grid, train_single


@pytest.fixture(scope="module")
def spec():
    return make_spec(TaskConfig(n_tasks=6, n_bits=10, k=3, alpha=0.4, seed=3))


def test_zipf_frequencies_use_the_papers_alpha():
    p = zipf_probs(50, 0.4)
    assert p.sum() == pytest.approx(1.0)
    assert p[0] / p[1] == pytest.approx(2 ** 1.4)  # p_k ∝ k^-(alpha+1)
    assert np.all(np.diff(p) < 0)


def test_labels_are_parities_of_the_subsets(spec):
    t, bits, y = Sampler(spec, seed=0).sample(500)
    for i in range(500):
        s = spec.subsets[int(t[i])]
        assert int(y[i]) == int(bits[i, s].sum()) % 2
    counts = np.bincount(t.numpy(), minlength=spec.n_tasks) / 500
    assert counts[0] > counts[-1]  # drawn with Zipf frequencies


@pytest.mark.parametrize("depth", [1, 2])
def test_batched_grid_equals_training_each_model_alone(spec, depth):
    widths = [3, 8, 17]
    groups = [Group(seed=0), Group(seed=1, data_size=50, data=train_set(spec, 50, 1)),
              Group(seed=2, data_size=500, data=train_set(spec, 500, 2))]
    ev = eval_set(spec, 40, seed=0)
    log_at = log_steps(30, 5)
    kw = dict(depth=depth, steps=30, batch_size=128, lr=5e-3, weight_decay=0.01, log_at=log_at, eval_data=ev)
    grid = train_grid(spec, widths, groups, keep_states=True, **kw)
    for g, group in enumerate(groups):
        for m, w in enumerate(widths):
            mean, per_task, state = train_single(spec, w, group, **kw)
            np.testing.assert_allclose(grid.mean_loss_bits[g, m], mean, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(grid.loss_bits[g, m], per_task, rtol=1e-5, atol=1e-6)
            for k, v in state.items():
                torch.testing.assert_close(grid.states[g][m][k], v, rtol=1e-5, atol=1e-6)
    assert grid.n_params == [n_params(spec.input_dim, w, depth) for w in widths]


def test_models_learn_frequent_subtasks_first(spec):
    ev = eval_set(spec, 200, seed=0)
    log_at = log_steps(400, 8)
    res = train_grid(spec, [64], [Group(seed=0)], steps=400, batch_size=512, lr=1e-2, weight_decay=0.0,
                     log_at=log_at, eval_data=ev)
    final = res.loss_bits[0, 0, -1]
    assert final[0] < 0.1  # the most frequent subtask is learned (bits)
    assert res.mean_loss_bits[0, 0, -1] < 0.5 * res.mean_loss_bits[0, 0, 0]
    assert final[0] <= final[-1] + 1e-6


def test_log_steps_are_log_spaced_and_end_at_steps():
    s = log_steps(1000, 10)
    assert s[0] == 1 and s[-1] == 1000 and np.all(np.diff(s) > 0)
    ratios = s[1:] / s[:-1]
    assert ratios.max() / ratios.min() < 1.5


def test_init_is_thread_safe_and_matches_torch_default_distribution():
    from concurrent.futures import ThreadPoolExecutor

    from tasks.sparse_parity.train import init_mlp

    ref = {w: init_mlp(30, w, 2, seed=3).state_dict() for w in (8, 64, 256)}
    with ThreadPoolExecutor(4) as pool:  # many threads initialising at once must not disturb each other
        got = list(pool.map(lambda w: (w, init_mlp(30, w, 2, seed=3).state_dict()), [8, 64, 256] * 8))
    for w, sd in got:
        for k, v in sd.items():
            assert torch.equal(v, ref[w][k])
    big = init_mlp(400, 512, 1, seed=0)[0].weight
    bound = 1 / np.sqrt(400)
    assert big.abs().max() <= bound and big.abs().max() > 0.99 * bound  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert abs(big.mean().item()) < 1e-3


def test_the_cuda_graph_switch_trains_the_same_models(spec):
    """grid.cuda_graph: on CUDA each step is replayed as one graph; on the CPU the same steps run on the static batch
    buffers the graph reads. Either way every model's trajectory is unchanged (fresh and finite data)."""
    groups = [Group(seed=0), Group(seed=1, data_size=500, data=train_set(spec, 500, 1))]
    kw = dict(steps=12, batch_size=128, lr=5e-3, weight_decay=0.01, log_at=log_steps(12, 4),
              eval_data=eval_set(spec, 40, seed=0), keep_states=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    plain = train_grid(spec, [3, 8], groups, device=dev, **kw)
    graphed = train_grid(spec, [3, 8], groups, device=dev, cuda_graph=True, **kw)
    tol = dict(rtol=0, atol=0) if dev == "cpu" else dict(rtol=1e-4, atol=1e-6)  # CUDA: atomics in index_add_
    np.testing.assert_allclose(graphed.loss_bits, plain.loss_bits, **tol)
    for g in range(2):
        for m in range(2):
            for k, v in plain.states[g][m].items():
                torch.testing.assert_close(graphed.states[g][m][k], v, **tol)
