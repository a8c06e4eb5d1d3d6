"""Training that fails early and clearly: seeds that cannot collide, divergence named and never stored, grids that
do not fit refused before work (and no sum(widths)² tensor anywhere), progress with rate and ETA."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from fault_helpers import task_states
from schemas import ConfigError
from tasks.devices import DeviceError
from schemas.config import load_config
from schemas.sparse_parity import SparseParityConfig, TaskConfig
from tasks.sparse_parity.data import Sampler, derive_seed, eval_set, make_spec
from tasks.sparse_parity.model import WidthGrid, grid_param_count
from tasks.sparse_parity.streams import Stream
from tasks.sparse_parity.train import (Group, TrainingDiverged, _GroupBatches, check_memory, log_steps, n_params,
                                       shard_memory, train_grid)

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/sparse_parity/tiny.toml"


@pytest.fixture(scope="module")
def spec():
    return make_spec(TaskConfig(n_tasks=6, n_bits=10, k=3, alpha=0.4, seed=3))


# ------------------------------------------------------------------------------------------------ seeds
def test_the_old_seed_arithmetic_collided_and_derived_seeds_do_not(spec):
    old = lambda seed, d: 7_777_777 + 131 * seed + d  # noqa: E731  (the batch seed before)
    assert old(1, -1) == old(0, 130)
    assert derive_seed("batches", 1, -1) != derive_seed("batches", 0, 130)
    sizes = [-1] + list(range(1, 400))
    seeds = {derive_seed(name, s, d) for name in ("batches", "train-set", "init") for s in range(12) for d in sizes}
    assert len(seeds) == 3 * 12 * len(sizes)  # every (stream, seed, D) its own seed
    assert derive_seed("batches", 0, 130) == derive_seed("batches", 0, 130) < 2**63
    # and the streams themselves differ: the two formerly colliding groups draw different batches
    a = _GroupBatches(spec, [Group(seed=1, data_size=-1)], 64, torch.device("cpu")).next()
    b = _GroupBatches(spec, [Group(seed=0, data_size=130)], 64, torch.device("cpu")).next()
    assert not torch.equal(a[1], b[1])


def test_batches_are_fresh_samples_ordered_by_subtask(spec):
    batches = _GroupBatches(spec, [Group(seed=2)], 300, torch.device("cpu"))
    drawn = [batches.next() for _ in range(batches.ahead + 1)]  # past one prefetch
    t, bits, y = Sampler(spec, seed=derive_seed("batches", 2, -1)).sample(batches.ahead * 300)
    for k, (tk, bk, yk, wk) in enumerate(drawn[:-1]):
        order = torch.argsort(t[k * 300:(k + 1) * 300], stable=True) + k * 300
        assert torch.equal(tk[0], t[order]) and torch.equal(bk[0], bits[order].float()) and torch.equal(yk[0], y[order])
        assert torch.all(tk[0][1:] >= tk[0][:-1]) and torch.all(wk == 1)
    assert not torch.equal(drawn[-1][1], drawn[0][1])  # the next prefetch continues the stream
    assert torch.equal(drawn[0][2][0], torch.gather(drawn[0][1][0].long(), 1, torch.as_tensor(spec.subsets)[
        drawn[0][0][0]]).sum(1) % 2)  # labels stay the parities of their own rows
    coins = Stream(0).bits(20000, 70).double()
    assert coins.shape == (20000, 70) and set(coins.unique().tolist()) == {0.0, 1.0}
    assert (coins.mean(0) - 0.5).abs().max() < 0.015  # 4.2 sigma at n = 20000
    assert coins.T.corrcoef().fill_diagonal_(0).abs().max() < 0.04  # bits unpacked from one word are independent


# ------------------------------------------------------------------------------------------ divergence
def test_divergence_names_the_models_and_the_learning_rate(spec):
    with pytest.raises(TrainingDiverged) as e:
        train_grid(spec, [4, 16], [Group(seed=0), Group(seed=1)], steps=50, batch_size=64, lr=1e6,
                   weight_decay=0.01, log_at=log_steps(50, 5), eval_data=eval_set(spec, 10, seed=0))
    msg = str(e.value)
    assert "width 4 (D=fresh, seed 0)" in msg and "width 16 (D=fresh, seed 1)" in msg
    assert "lr = 1e+06" in msg and "grid.lr" in msg and "\n" not in msg


def test_a_diverging_shard_fails_and_nothing_is_stored(prefect_server, tmp_path):
    from flows.sparse_parity import sparse_parity_flow
    from storage import Store

    store = str(tmp_path / "store")
    cfg = load_config(SparseParityConfig, TINY, ["grid.lr=1e6", "grid.steps=40", "grid.log_points=5"])
    state = sparse_parity_flow(config=cfg, store=store, return_state=True)
    assert state.is_failed()
    with pytest.raises(TrainingDiverged, match="lr = 1e\\+06"):
        state.result()
    states = task_states(state.state_details.flow_run_id)
    assert [s for name, s in states.items() if name.startswith("train-shard")] == ["Failed"]
    assert [r["kind"] for r in Store(store).lineage_index()] == ["sparse_parity.spec"]  # no curves


# ---------------------------------------------------------------------------------------------- memory
def test_a_wide_depth_1_grid_builds_no_sum_of_widths_squared_tensor(spec):
    widths = [8, 60000]  # before: a 60008² mask (14 GB) even at depth 1
    net = WidthGrid(spec.n_tasks, spec.n_bits, widths, 1, [0])
    held = sum(t.numel() for t in list(net.parameters()) + list(net.buffers()))
    assert net.flat.numel() == sum(n_params(spec.input_dim, w, 1) for w in widths) == held
    res = train_grid(spec, widths, [Group(seed=0)], steps=2, batch_size=32, lr=1e-3, weight_decay=0.0,
                     log_at=np.array([2]), eval_data=eval_set(spec, 4, seed=0))
    assert np.isfinite(res.mean_loss_bits).all()


def test_hidden_layers_hold_the_sum_of_width_squares(spec):
    widths = list(range(10, 410, 10))  # sum(w²) = 2.2M, sum(w)² = 67M
    net = WidthGrid(spec.n_tasks, spec.n_bits, widths, 2, [0, 1])
    assert net.views(net.flat.data)["w_hidden0"].shape == (2, sum(w * w for w in widths))
    held = sum(t.numel() for t in list(net.parameters()) + list(net.buffers()))
    assert held == 2 * sum(n_params(spec.input_dim, w, 2) for w in widths)
    assert grid_param_count(spec.n_tasks, spec.n_bits, widths, 2) == sum(n_params(spec.input_dim, w, 2) for w in widths)


def test_preflight_refuses_a_grid_that_does_not_fit_with_the_estimate():
    from flows.sparse_parity import preflight

    cpu = torch.device("cpu")
    ok = load_config(SparseParityConfig, TINY, ["grid.widths=[8, 60000]"])
    check_memory(ok, cpu, available=2 << 30)  # depth 1: about 0.1 GiB
    big = load_config(SparseParityConfig, TINY, ["grid.widths=[8, 60000]", "grid.depth=2"])
    need = sum(shard_memory(8, 12, dict(widths=[8, 60000], depth=2, batch_size=256, eval_samples_per_task=100),
                            [(-1, 0)], cpu).values())
    assert 16 * (60000**2 + 64) < need < 16 * 60000**2 * 1.01  # 4 copies (param, grad, 2 moments) of w² dominate
    with pytest.raises(ConfigError) as e:
        check_memory(big, cpu, available=8 << 30)
    msg = str(e.value)
    assert f"about {need / 2**30:.1f} GiB" in msg and "8.0 GiB available" in msg and "grid.widths" in msg and "grid.depth" in msg
    assert "\n" not in msg
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="grid.device = 'cuda' but no CUDA device"):  # a UserInputError
            preflight(load_config(SparseParityConfig, TINY, ["grid.device='cuda'"]))


def test_cli_refuses_before_any_work(tmp_path, capsys):
    from flows.cli import main

    store = tmp_path / "store"
    rc = main(["run", "sparse-parity", "--config", str(TINY), "--store", str(store),
               "--set", "grid.widths=[8, 200000]", "--set", "grid.depth=3"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: the training shard") and "GiB" in err and len(err.splitlines()) == 1
    assert not store.exists() or not any(store.rglob("*.zarr*"))


# -------------------------------------------------------------------------------------------- progress
def test_progress_reports_rate_eta_and_test_losses(spec):
    from tasks.progress import Progress

    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger("test-training-progress")
    logger.addHandler(Capture())
    logger.setLevel(logging.INFO)
    with Progress("train-shard", total=30, unit="step", interval=0.0, logger=logger) as progress:
        train_grid(spec, [4, 8], [Group(seed=0)], steps=30, batch_size=32, lr=1e-3, weight_decay=0.0,
                   log_at=log_steps(30, 4), eval_data=eval_set(spec, 4, seed=0), progress=progress)
    assert lines[-1].startswith("train-shard: 30/30 steps") and "steps/s" in lines[-1]
    assert "test_loss_bits=" in lines[-1] and "<" in lines[0]  # elapsed<remaining
