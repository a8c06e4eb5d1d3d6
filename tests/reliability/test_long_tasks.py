"""Long loops say how far they are (issue 22, 3): the qdg-sparse-parity trainings (a regime's model from scratch, the
group-lasso fine-tuning) log `name: done/total steps [elapsed<remaining, rate]` (tasks.progress), at least once at
the end and every 10 s before; and a group-lasso fine-tuning that diverges names its own fields. Plain functions, a
few steps each."""
from __future__ import annotations

import logging
import re

import pytest
import torch

from schemas.qdg import GroupLassoConfig
from schemas.sparse_parity import TaskConfig
from tasks.qdg.parity import mlp_from_arrays, train_parity_mlp
from tasks.qdg.regimes import RegimeDiverged, group_lasso_finetune, modular_mlp
from tasks.sparse_parity.data import make_spec

# tqdm's meter: done/total, elapsed<remaining (the ETA), rate
METER = re.compile(r": (\d+)/(\d+) steps \[\d\d:\d\d<\d\d:\d\d, ")


@pytest.fixture
def spec():
    return make_spec(TaskConfig(n_tasks=4, n_bits=8, k=3, seed=0))


def _meters(caplog, name: str) -> list[tuple[int, int]]:
    return [(int(m.group(1)), int(m.group(2))) for r in caplog.records if r.getMessage().startswith(name)
            and (m := METER.search(r.getMessage()))]


def test_a_regime_model_logs_its_training_progress_with_an_eta(spec, caplog):
    params = {"depth": 1, "steps": 7, "batch_size": 64, "lr": 1e-2, "weight_decay": 0.0, "eval_samples_per_task": 10}
    with caplog.at_level(logging.INFO, logger="quanta"):
        train_parity_mlp(spec, 8, 0, -1, params)
    assert _meters(caplog, "qdg-parity-model-w8-s0")[-1:] == [(7, 7)], caplog.text


def test_the_group_lasso_fine_tuning_logs_progress_with_an_eta(spec, caplog):
    mlp = mlp_from_arrays(modular_mlp(spec, [0, 1]))
    with caplog.at_level(logging.INFO, logger="quanta"):
        group_lasso_finetune(mlp, spec, GroupLassoConfig(lam=1e-3, steps=5), 1e-2, 64, 0)
    assert _meters(caplog, "qdg-parity-group-lasso-lam0.001")[-1:] == [(5, 5)], caplog.text


def test_a_diverging_group_lasso_fine_tuning_names_lam_and_lr(spec):
    mlp = mlp_from_arrays(modular_mlp(spec, [0, 1]))
    with torch.no_grad():
        mlp[0].weight.fill_(float("nan"))  # as a NaN model after an overflowing penalty
    with pytest.raises(RegimeDiverged, match=r"lower group_lasso.lam \(0.001\) or group_lasso.lr \(0.01\)"):
        group_lasso_finetune(mlp, spec, GroupLassoConfig(lam=1e-3, steps=10), 1e-2, 64, 0)
