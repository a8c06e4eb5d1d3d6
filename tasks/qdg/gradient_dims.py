"""The gradient dimension of a QDG study, known before any work (from the config alone: the model is built on
PyTorch's `meta` device, which allocates nothing), so that a JL projection that would not reduce it, or whose matrix
would not fit in memory, is refused before the run starts.

The projection matrix R (dims x dim) is scikit-learn's very sparse random projection: density 1/sqrt(dim), so about
dims * sqrt(dim) nonzeros; building it (scikit-learn's float64 values and int indices) and holding it twice (scipy
CSR, then a torch CSR tensor with int64 indices) takes about PROJECTION_BYTES_PER_NONZERO bytes per nonzero at peak.
"""
from __future__ import annotations

import math

from schemas.errors import UserInputError
from schemas.lm import LMConfig
from schemas.qdg import GradientConfig
from schemas.sparse_parity import SparseParityConfig

PROJECTION_BYTES_PER_NONZERO = 40


class ProjectionError(UserInputError):
    """A JL projection that does not reduce the gradient dimension, or whose matrix does not fit in memory."""


def projection_bytes(dim: int, dims: int) -> int:
    """Peak memory (bytes, an estimate) of building and holding the projection matrix from `dim` to `dims`."""
    return int(PROJECTION_BYTES_PER_NONZERO * dims * math.sqrt(dim))


def check_projection(dim: int, dims: int, field: str, what: str, memory: int) -> int:
    """ProjectionError unless `dims` < `dim` and the matrix fits in `memory` bytes; else its estimated bytes."""
    if dims >= dim:
        raise ProjectionError(f"{field} = {dims:,} does not reduce the gradient dimension ({dim:,} for {what}): "
                              f"project to fewer than {dim:,} dims (paper follow-ups: 5,000-30,000 of millions), or omit {field}")
    need = projection_bytes(dim, dims)
    if need > memory:
        raise ProjectionError(f"{field} = {dims:,}: the projection matrix from {dim:,} dims needs ~{need / 1e9:.1f} GB "
                              f"({what}), this machine has {memory / 1e9:.1f} GB: project to fewer dims")
    return need


def _count(model, cfg: GradientConfig) -> int:
    from tasks.qdg.gradients import gradient_parameter_names

    names = set(gradient_parameter_names(model, cfg))
    return int(sum(p.numel() for n, p in model.named_parameters() if n in names))


def lm_gradient_dim(lm: LMConfig, model_label: str, cfg: GradientConfig) -> tuple[int, str] | None:
    """(gradient dim, model label) of the selection model `model_label` ('smallest' = fewest non-embedding
    parameters) of the suite; None when it cannot be known before the run (a pretrained model not on this disk)."""
    import torch

    from tasks.lm.suite import neox_config, param_counts

    models: dict[str, object] = {}
    with torch.device("meta"):
        if lm.suite.kind == "trained":
            from transformers import GPTNeoXForCausalLM

            for size in lm.suite.sizes:
                cfg_neox = neox_config(size, lm.tokenizer.vocab_size, lm.suite.context_length)
                models[size.label] = GPTNeoXForCausalLM(cfg_neox)
        else:
            from transformers import AutoConfig, AutoModelForCausalLM

            try:
                for name in lm.suite.models:
                    config = AutoConfig.from_pretrained(name, revision=lm.suite.revision, local_files_only=True)
                    models[name] = AutoModelForCausalLM.from_config(config)
            except Exception:  # noqa: BLE001  (not on this disk: the gradient task finds its dim)
                return None
    if not models:
        return None
    if model_label == "smallest":
        model_label = min(models, key=lambda k: param_counts(models[k])[1])
    if model_label not in models:
        return None
    return _count(models[model_label], cfg), model_label


def parity_gradient_dim(sp: SparseParityConfig, width: int, cfg: GradientConfig, include_control_weights: bool) -> int:
    """The gradient dim of the depth-1 sparse-parity MLP of `width` (input n_tasks + n_bits, 2 logits) for the
    parameters cfg keeps, the first layer's control-bit columns only if `include_control_weights`."""
    from tasks.qdg.parity import parity_parameter_names

    n_in = (sp.task.n_tasks if include_control_weights else 0) + sp.task.n_bits
    sizes = {"0.weight": width * n_in, "0.bias": width, "2.weight": 2 * width, "2.bias": 2}
    return sum(sizes[n] for n in parity_parameter_names(cfg))
