"""The optional Johnson-Lindenstrauss (JL) projection of per-token gradients (paper follow-ups: 5,000-30,000 dims).

One seeded sparse random matrix R (dims x dim) is used for every token and every block: scikit-learn's
`SparseRandomProjection` (Li, Hastie & Church's very sparse projection: entries +-1/sqrt(density * dims) with
probability density / 2 each, 0 otherwise; density = 1/sqrt(dim) by default), drawn from `seed` alone, so each block
task rebuilds the same matrix independently. R is applied to the raw gradient; the result is L2-normalised by the
caller. `jl_epsilon` / `cosine_error_bound` state what the JL lemma guarantees for a given number of points and
dims (the bound the tests check against).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch


def projection_matrix(dim: int, dims: int, seed: int, density: float | str = "auto"):
    """R as a scipy CSR matrix, shape (dims, dim), float32: a function of (dim, dims, seed, density) only."""
    return _projection_matrix(int(dim), int(dims), int(seed), density)


@functools.lru_cache(maxsize=2)
def _projection_matrix(dim: int, dims: int, seed: int, density):
    import warnings

    import scipy.sparse as sp
    from sklearn.exceptions import DataDimensionalityWarning
    from sklearn.random_projection import SparseRandomProjection

    if dims <= 0:
        raise ValueError(f"gradients.projection_dims must be positive (got {dims})")
    with warnings.catch_warnings():
        # projecting to more dims than the gradient has is allowed (pointless, but not wrong)
        warnings.simplefilter("ignore", DataDimensionalityWarning)
        proj = SparseRandomProjection(n_components=dims, density=density, random_state=seed)
        proj.fit(sp.csr_matrix((1, dim), dtype=np.float32))  # fit only reads the number of features
    r = proj.components_.tocsr().astype(np.float32)
    r.sort_indices()
    return r, float(proj.density_)


class Projector:
    """x (m, dim) -> x R^T (m, dims), on the device of x, with the same R for every call (and every process)."""

    def __init__(self, dim: int, dims: int, seed: int, device: str | torch.device = "cpu"):
        self.dim, self.dims, self.seed = int(dim), int(dims), int(seed)
        import warnings

        r, self.density = projection_matrix(self.dim, self.dims, self.seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.matrix = torch.sparse_csr_tensor(torch.as_tensor(r.indptr, dtype=torch.int64),
                                                  torch.as_tensor(r.indices, dtype=torch.int64),
                                                  torch.as_tensor(r.data), size=r.shape, device=device,
                                                  check_invariants=False)  # scipy built it sorted and valid

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"projection expects {self.dim}-dim gradients, got {x.shape[-1]}")
        return torch.sparse.mm(self.matrix, x.to(self.matrix.dtype).T).T

    @property
    def attrs(self) -> dict:
        """What `qdg.gradient_block` attrs["projection"] records."""
        return {"dims": self.dims, "seed": self.seed, "density": self.density, "from_dim": self.dim,
                "method": "sklearn.random_projection.SparseRandomProjection"}


def jl_epsilon(n_points: int, dims: int) -> float:
    """The distortion eps the JL lemma guarantees for `n_points` points projected to `dims` dims, i.e. the eps with
    dims = 4 ln(n) / (eps^2/2 - eps^3/3) (Dasgupta & Gupta 2003; scikit-learn's `johnson_lindenstrauss_min_dim`):
    every squared distance is kept within a factor [1 - eps, 1 + eps]. Returns inf where no eps < 1 is guaranteed."""
    need = 4.0 * math.log(max(int(n_points), 2)) / int(dims)
    if need >= 1.0 / 6.0:  # eps^2/2 - eps^3/3 is at most 1/6 (at eps = 1)
        return math.inf
    lo, hi = 0.0, 1.0
    for _ in range(100):  # eps^2/2 - eps^3/3 increases on (0, 1): bisection
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid * mid / 2 - mid ** 3 / 3 < need else (lo, mid)
    return hi


def cosine_error_bound(eps: float) -> float:
    """|cos(Ru, Rv) - cos(u, v)| <= 2 eps / (1 - eps) for unit u, v when R keeps the squared norms of u, v, u + v
    and u - v within [1 - eps, 1 + eps] (polarisation: <Ru, Rv> = (|R(u+v)|^2 - |R(u-v)|^2) / 4 is within eps of
    <u, v>, and |Ru| |Rv| is within [1 - eps, 1 + eps]). For n unit vectors this is the JL guarantee on the 2n + 1
    points {0, +-u_i}: use `jl_epsilon(2 n + 1, dims)`."""
    return math.inf if eps >= 1 else 2 * eps / (1 - eps)
