"""The JL projection: one seeded matrix for every block, and pairwise cosines kept within the Johnson-Lindenstrauss
bound. The bound tested: for n unit vectors projected to d dims, eps = jl_epsilon(2n + 1, d) solves
d = 4 ln(2n + 1) / (eps^2/2 - eps^3/3) (the JL lemma for the 2n + 1 points {0, +-u_i}, whose pairwise distances
include |u_i|, |u_i - u_j| and |u_i + u_j|), and then |cos' - cos| <= 2 eps / (1 - eps) for every pair."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from schemas.qdg import GradientConfig
from tasks.qdg.gradients import TokenGradients, gradient_parameter_names
from tasks.qdg.projection import Projector, cosine_error_bound, jl_epsilon, projection_matrix
from tiny_lm import CTX, synthetic_corpus, tiny_suite


def _cos(x: np.ndarray) -> np.ndarray:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


def _check_jl(rows: np.ndarray, dims: int, seed: int = 0) -> tuple[float, float]:
    n, dim = rows.shape
    p = Projector(dim, dims, seed)
    half = n // 2  # two "blocks" projected by two independent Projector objects: the same matrix
    y = np.concatenate([p(torch.as_tensor(rows[:half])).numpy(),
                        Projector(dim, dims, seed)(torch.as_tensor(rows[half:])).numpy()])
    err = np.abs(_cos(y.astype(np.float64)) - _cos(rows.astype(np.float64))).max()
    return float(err), cosine_error_bound(jl_epsilon(2 * n + 1, dims))


def test_cosines_of_random_vectors_within_the_jl_bound():
    rng = np.random.default_rng(0)
    dim, n, dims = 20000, 40, 2000
    base = rng.standard_normal((8, dim))
    # clusters of similar vectors (cosines ~0.9 within) and unrelated ones (~0 across)
    rows = (base[np.arange(n) % 8] + 0.35 * rng.standard_normal((n, dim))).astype(np.float32)
    err, bound = _check_jl(rows, dims)
    assert bound < 0.5  # a bound that says something at these dims
    assert err <= bound, (err, bound)
    off = _cos(rows)[~np.eye(n, dtype=bool)]
    assert off.max() > 0.8 and np.abs(off).min() < 0.05  # similar and unrelated pairs both present


def test_cosines_of_real_gradient_rows_within_the_jl_bound():
    model = tiny_suite()["d16"]
    ids, offsets = synthetic_corpus()
    predicted = np.setdiff1d(np.arange(offsets[-1]), offsets[:-1])
    tokens = np.random.default_rng(1).choice(predicted, 30, replace=False)
    tg = TokenGradients(model, gradient_parameter_names(model, GradientConfig()), CTX)
    rows = np.zeros((len(tokens), tg.dim), dtype=np.float32)
    tg.compute(ids, offsets, tokens, lambda r, g, _: rows.__setitem__(r, g.numpy()))
    err, bound = _check_jl(rows, 1500)
    assert err <= bound, (err, bound)


def test_one_seeded_matrix_with_the_documented_entries():
    r, density = projection_matrix(5000, 300, seed=3)
    r2, _ = projection_matrix(5000, 300, seed=3)
    assert (r != r2).nnz == 0  # a function of (dim, dims, seed) only
    assert (r != projection_matrix(5000, 300, seed=4)[0]).nnz > 0
    assert r.shape == (300, 5000) and density == pytest.approx(1 / np.sqrt(5000))
    np.testing.assert_allclose(np.abs(r.data), 1 / np.sqrt(density * 300), rtol=1e-6)
    assert abs(r.nnz / (300 * 5000) - density) < 0.2 * density
    x = torch.randn(4, 5000)
    np.testing.assert_allclose(Projector(5000, 300, 3)(x).numpy(), (r @ x.numpy().T).T, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="expects 5000-dim"):
        Projector(5000, 300, 3)(torch.randn(2, 10))


def test_jl_epsilon_inverts_the_jl_dimension_formula():
    from sklearn.random_projection import johnson_lindenstrauss_min_dim

    for n, d in ((81, 2000), (10001, 5000), (201, 30000)):
        eps = jl_epsilon(n, d)
        assert 0 < eps < 1
        assert johnson_lindenstrauss_min_dim(n, eps=eps) <= d < johnson_lindenstrauss_min_dim(n, eps=eps * 0.99)
    assert jl_epsilon(10**6, 10) == float("inf") and cosine_error_bound(1.0) == float("inf")
