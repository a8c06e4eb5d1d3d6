"""Configs fail early with a message naming the field."""
from __future__ import annotations

import pytest

from schemas import ConfigError
from schemas.config import load_config, parse_override
from schemas.sparse_parity import SparseParityConfig

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load(tmp_path, text: str, overrides=None):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return load_config(SparseParityConfig, p, overrides)


@pytest.mark.parametrize("text, needle", [
    ("[task]\nk = 5\nn_bits = 4\n", "k must be <= n_bits"),
    ("[task]\nalpha = 0\n", "task.alpha"),
    ("[task]\nalpha = -0.5\n", "task.alpha"),
    ("[grid]\nwidths = []\n", "widths must not be empty"),
    ("[grid]\nwidths = [10, 0]\n", "widths must be positive"),
    ("[grid]\nbatch_size = 0\n", "grid.batch_size"),
    ("[grid]\ndata_sizes = [100, -5]\n", "data_sizes must be positive"),
    ("[grid]\nwidth = [10]\n", "grid.width: unknown key"),
    ("[tsk]\nk = 3\n", "tsk: unknown key"),
    ("[grid]\ndevice = 'tpu'\n", "grid.device"),
    ("[fit]\nn_min = 100\nn_max = 10\n", "n_min must be < n_max"),
    ("[grid]\nwidths = [10, 20]\n[fit]\nd_width = 30\n", "fit.d_width must be one of"),
    ("[grid]\nsteps = 5\nlog_points = 10\n", "log_points must be <= grid.steps"),
])
def test_bad_values_name_the_field(tmp_path, text, needle):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text)
    assert needle in str(e.value)


def test_overrides_are_parsed_as_toml_and_checked(tmp_path):
    cfg = _load(tmp_path, "[task]\nn_tasks = 10\n", ["grid.widths=[4, 8]", "task.alpha=0.8", "report.title=hello"])
    assert cfg.grid.widths == [4, 8] and cfg.task.alpha == 0.8 and cfg.report.title == "hello"
    with pytest.raises(ConfigError, match="unknown key 'widht' in grid"):
        _load(tmp_path, "", ["grid.widht=[4]"])
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        _load(tmp_path, "", ["nope.x=1"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override("grid.widths")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(SparseParityConfig, tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        _load(tmp_path, "[task\n")


def test_shipped_configs_are_valid(project_root):
    for path in sorted((project_root / "configs" / "sparse_parity").glob("*.toml")):
        if "alpha_sweep" in path.name:
            continue
        cfg = load_config(SparseParityConfig, path)
        assert cfg.grid.widths
    paper = load_config(SparseParityConfig, project_root / "configs/sparse_parity/paper.toml")
    assert (paper.task.n_tasks, paper.task.n_bits, paper.task.k, paper.task.alpha) == (500, 100, 3, 0.4)
    # the widths P-scaling-15 computes: int(2 ** linspace(log2 10, log2 500, 30)), whose int() makes the first 9
    assert len(paper.grid.widths) == 30 and paper.grid.widths[0] == 9 and paper.grid.widths[-1] == 500
    assert paper.grid.batch_size == 20000 and paper.grid.steps == 200_000 and paper.grid.lr == 1e-3


def test_cli_rejects_bad_config_before_running(tmp_path, capsys):
    from flows.cli import main

    store = tmp_path / "store"
    rc = main(["run", "sparse-parity", "--config", str(ROOT / "configs/sparse_parity/tiny.toml"), "--set", "task.k=50",
               "--store", str(store)])
    assert rc == 2
    assert "k must be <= n_bits" in capsys.readouterr().err
    assert not store.exists()
