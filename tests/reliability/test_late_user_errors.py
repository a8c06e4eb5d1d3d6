"""User errors that only show once work has run (issue 22, 5): qdg-sparse-parity's number of samples is known only
after training (how many subtasks the model learned x model.samples_per_subtask), so a cluster count k that passed
the early check (k < samples_per_subtask x n_tasks) but is not below the samples drawn is one line naming
clustering.n_clusters and n, exit 2; it is not silently dropped. The tiny config, one representation and regime."""
from __future__ import annotations

import re

from reliability_cli import ROOT

QDG_SP_TINY = ROOT / "configs/qdg/sparse_parity_tiny.toml"
MINIMAL = ["--set", "regimes=['study']", "--set", "representations=['gradient']", "--set", "compare_label_sign=false",
           "--set", "compare_control_weights=false", "--set", "model.unlearned_control=false",
           "--set", "benchmark.bootstrap=0", "--set", "report.plots=false"]


def test_more_clusters_than_the_samples_drawn_is_one_line_naming_the_field_and_n(prefect_server, quanta, tmp_path):
    # 100 < 20 samples x 8 subtasks: passes the early check; the tiny model learns fewer than 5 subtasks
    got = quanta("run", "qdg-sparse-parity", "--config", QDG_SP_TINY, *MINIMAL, "--set", "clustering.n_clusters=[100]",
                 "--store", tmp_path / "store")
    assert got.rc == 2, got.text[-3000:]
    errors = [line for line in got.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and got.err.rstrip().endswith(errors[0]), got.err[-3000:]
    m = re.search(r"clustering.n_clusters: k = 100 is not below the (\d+) samples drawn \((\d+) subtasks x "
                  r"model.samples_per_subtask\)", errors[0])
    assert m and int(m.group(1)) == 20 * int(m.group(2)) < 100, errors[0]
    assert "Traceback" not in got.text


def test_a_diverging_long_regime_names_its_own_fields(prefect_server, quanta, tmp_path):
    """The long regime's training diverging is one line naming long.weight_decay and the grid's lr (exit 2), not the
    study's hint alone ("lower grid.lr") under a traceback."""
    got = quanta("run", "qdg-sparse-parity", "--config", QDG_SP_TINY, *MINIMAL, "--set", "regimes=['long']",
                 "--set", "long.weight_decay=0", "--set", "sparse_parity.grid.lr=1e30", "--store", tmp_path / "store")
    assert got.rc == 2, got.text[-3000:]
    errors = [line for line in got.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and got.err.rstrip().endswith(errors[0]), got.err[-3000:]
    assert "error: long: training diverged" in errors[0], errors[0]
    assert "(lower long.weight_decay (0) or sparse_parity.grid.lr)" in errors[0], errors[0]
    assert "Traceback" not in got.text
