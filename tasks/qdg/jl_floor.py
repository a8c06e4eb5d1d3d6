"""The least JL projection QDG accepts for n rows (`gradients.projection_dims`, `clustering.compare_projection_dims`).

The rule: a projection must let the Johnson-Lindenstrauss bound say something about the clustering, namely keep every
pairwise cosine of the n rows within JL_COSINE_ERROR = 0.5 (`tasks.qdg.projection.cosine_error_bound`), so that two
rows in the same direction (cosine 1) stay above 1/2 and two orthogonal rows (cosine 0) stay below it. The bound is
2 eps / (1 - eps) for the JL distortion eps on the 2n + 1 points {0, +-u_i}, so eps = c / (2 + c) = 0.2 and

    dims >= 4 ln(2n + 1) / (eps^2/2 - eps^3/3)    (~ 231 ln(2n + 1): 1,266 dims for 120 rows, 2,286 for 10,000)

(Dasgupta & Gupta's bound, as scikit-learn's `johnson_lindenstrauss_min_dim`). Fewer dims are refused before any
work: with `projection_dims = 1` every row is +-1 and the clusters, and the Zipf fit of their sizes, mean nothing.
"""
from __future__ import annotations

import math

from tasks.qdg.gradient_dims import ProjectionError

JL_COSINE_ERROR = 0.5


def jl_floor(n_rows: int, cosine_error: float = JL_COSINE_ERROR) -> int:
    """The least dims whose JL bound keeps every pairwise cosine of `n_rows` unit rows within `cosine_error`."""
    eps = cosine_error / (2.0 + cosine_error)
    return math.ceil(4.0 * math.log(2 * max(int(n_rows), 1) + 1) / (eps ** 2 / 2 - eps ** 3 / 3))


def check_jl_floor(dims: int, n_rows: int, field: str, rows: str) -> None:
    """ProjectionError (one line naming `field`) when `dims` is below `jl_floor(n_rows)`; `rows` says what they are."""
    floor = jl_floor(n_rows)
    if dims < floor:
        raise ProjectionError(f"{field} = {dims:,} is below the JL floor for {n_rows:,} {rows}: {floor:,} dims, the "
                              f"fewest with which the Johnson-Lindenstrauss bound keeps every pairwise cosine within "
                              f"{JL_COSINE_ERROR} (docs/qdg.md): project to at least {floor:,} dims, or omit {field}")
