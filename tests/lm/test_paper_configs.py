"""configs/*/paper*.toml hold the paper code's values (ejmichaud/quantization-model; docs/paper-suite.md lists each
with the file it came from). A change to one of these values is a change to what `paper` means."""
from __future__ import annotations

import numpy as np

from schemas.config import load_config
from schemas.qdg import QDGConfig
from schemas.sparse_parity import AlphaSweepConfig, SparseParityConfig


def _log_grid(lo: float, hi: float, n: int) -> list[int]:
    """The paper code's grids: [int(x) for x in np.power(2, np.linspace(np.log2(lo), np.log2(hi), n))]."""
    return [int(x) for x in np.power(2, np.linspace(np.log2(lo), np.log2(hi), n))]


def test_figure_2_is_p_scaling_15_and_d_scaling_6(project_root):
    cfg = load_config(SparseParityConfig, project_root / "configs/sparse_parity/paper.toml")
    t, g, d = cfg.task, cfg.grid, cfg.data_grid
    assert (t.n_tasks, t.n_bits, t.k, t.alpha, t.seed) == (500, 100, 3, 0.4, 0)
    assert g.widths == _log_grid(10, 500, 30) and g.depth == 1 and g.seeds == [0]
    assert (g.steps, g.batch_size, g.lr, g.weight_decay, g.eval_samples_per_task) == (200_000, 20_000, 1e-3, 0.0, 1000)
    assert d.width == 500 and d.data_sizes == _log_grid(1e4, 5e6, 30) and d.steps == 1_000_000 and d.seeds == [0]


def test_the_alpha_sweep_is_p_scaling_17_and_d_scaling_9(project_root):
    cfg = load_config(AlphaSweepConfig, project_root / "configs/sparse_parity/alpha_sweep_paper.toml")
    assert cfg.sweep.alphas == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]        # the code's 1.1 .. 1.8
    assert cfg.grid.widths == _log_grid(10, 300, 20) and cfg.grid.seeds == [0, 1, 2]
    assert (cfg.grid.steps, cfg.grid.batch_size, cfg.grid.weight_decay) == (100_000, 20_000, 0.0)
    assert cfg.data_grid.data_sizes == _log_grid(1e4, 5e6, 25) and cfg.data_grid.width == 500
    assert cfg.data_grid.steps == 100_000 and cfg.data_grid.seeds == [0]


def test_qdg_paper_is_clustering_0_and_the_fast_variant_differs_only_in_its_shortcuts(project_root):
    paper = load_config(QDGConfig, project_root / "configs/qdg/paper.toml")
    fast = load_config(QDGConfig, project_root / "configs/qdg/paper_fast.toml")
    c = paper.clustering
    assert (c.assign_labels, c.n_init, c.eigen_solver, c.method) == ("kmeans", 30, "arpack", "dense")
    assert c.n_clusters == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 125, 150, 175, 200, 225, 250, 275, 300, 350,
                            400, 500, 600, 700, 800, 900, 1000, 1100, 1200, 1400, 1500]
    assert paper.gradients.projection_dims is None and paper.primary_representation() == "gradient"
    assert paper.selection.model == "EleutherAI/pythia-70m-v0" == paper.lm.suite.models[0]
    assert (paper.selection.n_tokens, paper.selection.max_loss_nats, paper.selection.exclude_induction) == \
        (10_000, 0.1, True)
    assert (paper.zipf.rank_min, paper.zipf.rank_max, paper.report.k_shown) == (100, 1000, 400)
    # the faster variant: the same suite, model and tokens, other clustering
    assert fast.lm == paper.lm and fast.selection == paper.selection
    assert fast.gradients.projection_dims == 30_000 and fast.clustering.assign_labels == "cluster_qr"
