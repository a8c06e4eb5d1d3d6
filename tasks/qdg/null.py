"""The null beside every QDG number: what the same pipeline gives on inputs with no structure.

A QDG statistic (the envelope slope of cluster sizes, a per-k slope or MLE exponent, seed stability) means something
only next to what chance gives with the same n, k list, affinity and clustering: the paper's envelope over
log-spaced k reads -1.00 on pure noise (a k-way split of near-equal parts puts 1/k at every rank <= k). For each
representation, two nulls, each drawn `null.draws` times:

- `gaussian`: isotropic Gaussian rows of the representation's dimension d. For d > n the rows are the n-dimensional
  Bartlett factor L of a Wishart(I_n, d) matrix (L_ii = sqrt(chi2(d - i)), L_ij ~ N(0, 1) below the diagonal), whose
  Gram matrix L L^T has exactly the distribution of X X^T for X (n x d) Gaussian: the same cosines, bit-for-bit in
  distribution, at n x n cost instead of n x d.
- `permuted`: the representation itself with each column permuted independently across rows (every marginal kept,
  the joint structure between dimensions destroyed), rows re-normalised.

Each draw is one cached task (`qdg-null-{representation}-{kind}-{draw}`): it makes the rows, the same affinity (the
dense angular A = 1 - arccos(C)/pi, or the symmetrised kNN graph past `clustering.dense_max_n`, built here in memory),
the same spectral clustering for every (k, seed) and the same Zipf table (no bootstrap: the null's spread is the
draws), and writes one `qdg.null_draw` table of statistics. A summary task puts the measured statistics beside the
draws' mean and 95% range, with an empirical p-value and `distinguishable` (`qdg.null`). The ARI between two
representations' clusterings is compared with its permutation null (one labelling permuted across tokens, sizes
kept), drawn in the summary task.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from schemas.qdg import SpectralOptions, ZipfConfig
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.progress import run_logger
from tasks.qdg.clustering import affinity_from_cosine, labels_ari, spectral_labels
from tasks.qdg.knn import knn_graph, top_k_rows
from tasks.qdg.size_exponent import size_exponent, size_exponent_table
from tasks.qdg.zipf import cluster_sizes, zipf_table

NULL_KINDS = ("gaussian", "permuted")
# seeds of the null's random streams: one per (kind, draw), independent of the representation's own seeds
_KIND_STREAM = {"gaussian": 0x6A55, "permuted": 0x9E37}


# ------------------------------------------------------------------------------------------------ null rows
def null_rows(g: np.ndarray | None, n: int, dim: int, kind: str, seed: int) -> np.ndarray:
    """(n, min(d, n) or d) float32 L2-normalised rows of one null draw (module docstring). `g` (n, d): the
    representation's rows, needed for `permuted` only."""
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        if dim <= n:
            x = rng.standard_normal((n, dim))
        else:  # Bartlett: the Gram of n Gaussian vectors in d > n dims, from an n x n lower-triangular factor
            x = np.tril(rng.standard_normal((n, n)), -1)
            x[np.arange(n), np.arange(n)] = np.sqrt(rng.chisquare(dim - np.arange(n)))
    elif kind == "permuted":
        if g is None:
            raise ValueError("the permuted null needs the representation's rows")
        x = permute_columns(np.asarray(g, dtype=np.float64), rng)
    else:
        raise ValueError(f"null kind must be one of {NULL_KINDS} (got {kind!r})")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def permute_columns(g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each column of g (n, d) permuted across rows on its own: argsort of uniform keys per column (numpy's
    `Generator.permuted(axis=0)` loops over columns: 15x slower for a few hundred rows of 50,000 columns)."""
    order = np.argsort(rng.random(g.shape, dtype=np.float32), axis=0, kind="stable")
    return np.take_along_axis(g, order, axis=0)


def null_affinity(rows: np.ndarray, method: str, neighbors: int, weighting: str = "angular"):
    """The affinity QDG would cluster for these rows: dense A = 1 - arccos(C)/pi (float32, diagonal 1), or the
    symmetrised kNN graph of each row's `neighbors` largest cosines, itself first (`tasks.qdg.knn.top_k_rows` and
    `knn_graph`, the kNN stage's own selection and weighting)."""
    n = rows.shape[0]
    if method == "dense":
        c = rows @ rows.T
        np.fill_diagonal(c, 1.0)
        return affinity_from_cosine(c, np.empty((n, n), dtype=np.float32))
    k = min(neighbors, n)
    parts = [top_k_rows(rows[i:i + 1024] @ rows.T, k, first_row=i) for i in range(0, n, 1024)]
    return knn_graph(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), weighting)


# ------------------------------------------------------------------------------------------- statistics
def clustering_statistics(affinity, n_clusters: Sequence[int], seeds: Sequence[int], spectral: SpectralOptions,
                          zcfg: ZipfConfig, alpha_n=None) -> dict[str, float]:
    """The QDG statistics of one affinity, computed as the pipeline computes them: spectral clustering for every
    (k, seed), the calibrated headline exponent (tasks.qdg.size_exponent, over-clustered at the largest k), the Zipf
    table of the first seed's sizes (MLE without bootstrap), and the ARI between the first two seeds per k. Keys:
    envelope_slope, headline_exponent, slope_k{k}, exponent_mle_k{k}, stability_k{k}."""
    n = affinity.shape[0]
    labels = {(k, s): spectral_labels(affinity.copy(), k, s, spectral) for k in n_clusters for s in seeds[:2]}
    sizes = {k: cluster_sizes(labels[(k, seeds[0])], k) for k in n_clusters}
    k_over = max(n_clusters)
    fit = size_exponent(affinity, n_clusters=[k_over], spectral=spectral, seed=seeds[0],
                        labels=labels[(k_over, seeds[0])])
    table = zipf_table(sizes, n, alpha_n, zcfg.model_copy(update={"bootstrap": 0}),
                       size_exponent_table(fit, n))
    return statistics_of(table, {k: _ari(labels[(k, seeds[0])], labels[(k, seeds[1])])
                                 for k in n_clusters} if len(seeds) > 1 else {})


def statistics_of(zipf: pd.DataFrame, stability_by_k: Mapping[int, float]) -> dict[str, float]:
    """The named statistics of a `qdg.zipf` table and the mean seed ARI per k (the measured side and each draw)."""
    out: dict[str, float] = {}
    env = zipf[zipf.scope == "envelope"]
    if len(env):
        out["envelope_slope"] = float(env.slope.iloc[0])
    head = zipf[zipf.scope == "headline"]
    if len(head):  # stored as the slope -e of the calibrated exponent e
        out["headline_exponent"] = -float(head.slope.iloc[0])
    for r in zipf[zipf.scope == "k"].itertuples():
        out[f"slope_k{r.k}"] = float(r.slope)
        out[f"exponent_mle_k{r.k}"] = float(r.exponent_mle)
    for k, ari in stability_by_k.items():
        out[f"stability_k{k}"] = float(ari)
    return out


def _ari(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def draw_seed(base: int, kind: str, draw: int) -> int:
    return int(np.random.SeedSequence([base, _KIND_STREAM[kind], draw]).generate_state(1)[0])


def read_rows(st: Store, blocks: Sequence[ArtifactRef]) -> np.ndarray:
    """The representation's rows (n, dim) float32 from its `qdg.gradient_block`s (validated on read)."""
    return np.concatenate([np.asarray(st.open_zarr(ref)["g"][...], dtype=np.float32) for ref in blocks], axis=0)


def null_draw_to_store(st: Store, blocks: Sequence[ArtifactRef], kind: str, draw: int, *, method: str,
                       neighbors: int, weighting: str = "angular", n_clusters: Sequence[int], seeds: Sequence[int],
                       spectral: SpectralOptions,
                       zcfg: ZipfConfig, null_seed: int) -> ArtifactRef:
    """One null draw without Prefect -> `qdg.null_draw` (statistic, value)."""
    if kind == "permuted":
        g = read_rows(st, blocks)
        n, dim = g.shape
    else:
        g = None  # only the shape: the blocks' metadata, once each
        shapes = [st.open_zarr(b, validate=False, verify_hash=False)["g"].shape for b in blocks]
        n, dim = sum(int(s[0]) for s in shapes), int(shapes[0][1])
    rows = null_rows(g, n, dim, kind, draw_seed(null_seed, kind, draw))
    stats = clustering_statistics(null_affinity(rows, method, neighbors, weighting), n_clusters, seeds, spectral,
                                  zcfg)
    run_logger().info("null %s draw %d: n = %d, dim = %d -> envelope slope %.3f", kind, draw, n, dim,
                      stats.get("envelope_slope", np.nan))
    table = pd.DataFrame({"statistic": list(stats), "value": np.array(list(stats.values()), dtype=np.float64)})
    return st.write_table("qdg.null_draw", table, inputs=list(blocks),
                          params={"kind": kind, "draw": draw, "method": method, "neighbors": neighbors,
                                  "weighting": weighting,
                                  "n_clusters": list(n_clusters), "seeds": list(seeds[:2]),
                                  "spectral": spectral.model_dump(mode="json"), "zipf": zcfg.model_dump(mode="json"),
                                  "null_seed": null_seed, "n": n, "dim": dim})


@quanta_task(name="qdg-null-draw")
def null_draw(blocks: list[ArtifactRef], *, kind: str, draw: int, method: str, neighbors: int, weighting: str,
              n_clusters: list[int], seeds: list[int], spectral: SpectralOptions, zipf: ZipfConfig, null_seed: int,
              store: str) -> ArtifactRef:
    """One draw of a null (`kind`: gaussian or permuted) for the representation whose blocks are given: the same
    affinity, clusterings and Zipf fits -> `qdg.null_draw`. Cached per draw: it takes the draw's index and the
    null's seed, never `null.draws`, so adding draws computes only the new ones."""
    return null_draw_to_store(Store(store), blocks, kind, draw, method=method, neighbors=neighbors,
                              weighting=weighting, n_clusters=n_clusters, seeds=seeds, spectral=spectral, zcfg=zipf,
                              null_seed=null_seed)


# -------------------------------------------------------------------------------------------- the summary
def compare_with_null(measured: float, draws: np.ndarray, level: float) -> dict:
    """Measured value vs the null's draws: mean, central `level` range, two-sided empirical p-value
    (1 + #{|draw - mean| >= |measured - mean|}) / (1 + draws) and `distinguishable` = p < 1 - level. With fewer than
    1/(1 - level) - 1 draws no p-value can be that small: never distinguishable (say so, draw more)."""
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    out = {"measured": float(measured), "null_mean": np.nan, "null_lo": np.nan, "null_hi": np.nan, "p": np.nan,
           "distinguishable": "n/a", "draws": int(draws.size)}
    if draws.size == 0 or not np.isfinite(measured):
        return out
    mean = float(draws.mean())
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    p = (1 + int((np.abs(draws - mean) >= abs(measured - mean) - 1e-12).sum())) / (1 + draws.size)
    out.update(null_mean=mean, null_lo=float(lo), null_hi=float(hi), p=float(p),
               distinguishable="yes" if p < 1 - level else "no")
    return out


def permutation_ari_null(a: np.ndarray, b: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """ARIs of `a` against `b` permuted across tokens (cluster sizes kept): what agreement chance gives."""
    rng = np.random.default_rng(seed)
    return np.array([_ari(a, rng.permutation(b)) for _ in range(draws)])


def null_rows_of(measured: Mapping[str, float], draws_by_kind: Mapping[str, Sequence[pd.DataFrame]],
                 representation: str, level: float) -> list[dict]:
    """`qdg.null` rows of one representation: each measured statistic against each null kind's draws."""
    rows = []
    for kind, tables in draws_by_kind.items():
        values: dict[str, list[float]] = {}
        for t in tables:
            for s, v in zip(t.statistic, t.value):
                values.setdefault(s, []).append(float(v))
        for stat, value in measured.items():
            if stat in values:
                rows.append({"representation": representation, "null": kind, "statistic": stat,
                             **compare_with_null(value, np.array(values[stat]), level)})
    return rows


def measured_statistics(st: Store, zipf: ArtifactRef, stability: ArtifactRef | None) -> dict[str, float]:
    stab = {}
    if stability is not None:
        sdf = st.read_table(stability)
        stab = {int(k): float(g.ari.mean()) for k, g in sdf.groupby("k")}
    return statistics_of(st.read_table(zipf), stab)


def null_table(rows: list[dict]) -> pd.DataFrame:
    cols = ["representation", "null", "statistic", "measured", "null_mean", "null_lo", "null_hi", "p",
            "distinguishable", "draws"]
    df = pd.DataFrame(rows, columns=cols)
    return df.astype({c: "float64" for c in ("measured", "null_mean", "null_lo", "null_hi", "p")} |
                     {"draws": "int64", "representation": "object", "null": "object", "statistic": "object",
                      "distinguishable": "object"})


@quanta_task(name="qdg-null")
def null_summary(zipf: list[ArtifactRef], stability: list[ArtifactRef | None], draws: list[list[ArtifactRef]],
                 agreement_labels: list[ArtifactRef] | None = None, *, representations: list[str], kinds: list[str],
                 level: float, seed: int, permutation_draws: int, store: str) -> ArtifactRef:
    """`qdg.null`: per representation (lists in `representations` order), every measured statistic beside each
    null kind's draws (`draws[i]` = that representation's draw refs, `kinds` order, `len(kinds)` equal parts);
    `agreement_labels`: the first-seed labels at one k of each representation, whose pairwise ARIs get their
    permutation null (statistic `ari_{a}_{b}_k{k}`, null 'permutation')."""
    st = Store(store)
    rows: list[dict] = []
    for i, rep in enumerate(representations):
        measured = measured_statistics(st, zipf[i], stability[i])
        per = len(draws[i]) // max(1, len(kinds))
        by_kind = {kind: [st.read_table(r) for r in draws[i][j * per:(j + 1) * per]] for j, kind in enumerate(kinds)}
        rows += null_rows_of(measured, by_kind, rep, level)
    if agreement_labels:
        tables = [st.read_table(r) for r in agreement_labels]
        for i in range(len(tables)):
            for j in range(i + 1, len(tables)):
                a, b = (tables[x].sort_values("row")["label"].to_numpy() for x in (i, j))
                k = int(tables[i]["k"].iloc[0])
                measured = labels_ari(tables[i], tables[j])
                rows.append({"representation": f"{representations[i]} vs {representations[j]}", "null": "permutation",
                             "statistic": f"ari_k{k}", **compare_with_null(
                                 measured, permutation_ari_null(a, b, permutation_draws, seed), level)})
    inputs = list(zipf) + [s for s in stability if s is not None] + [r for d in draws for r in d] + \
        list(agreement_labels or [])
    return st.write_table("qdg.null", null_table(rows), inputs=inputs,
                          params={"level": level, "kinds": kinds, "representations": representations})


# ------------------------------------------------------------------------------------ verdicts and results
def verdict(consistent: str, null: pd.DataFrame | None, representation: str,
            statistic: str = "envelope_slope") -> tuple[str, str]:
    """The three-valued `consistent` of a statistic and why: `indeterminate` when it is not distinguishable from
    every null kind (inside the range chance gives: no claim either way), else the paper's rule's yes / no
    (`consistent`, from the Zipf table); a statistic that cannot be compared (n/a) is indeterminate too, and so is
    every verdict without a null (null.draws = 0): nothing says the number is more than chance."""
    if consistent == "n/a":
        return "indeterminate", f"the {statistic} has no finite interval, or there is no alpha_N to compare it with"
    if null is None or null.empty:
        return "indeterminate", "no null was drawn (null.draws = 0): nothing says this slope is more than chance"
    rows = null[(null.representation == representation) & (null.statistic == statistic)]
    if rows.empty:
        return "indeterminate", f"no null for {representation}'s {statistic}"
    inside = [f"{r.null} {r.null_mean:.3g} [{r.null_lo:.3g}, {r.null_hi:.3g}] (p = {r.p:.2g}, {r.draws} draws)"
              for r in rows.itertuples() if r.distinguishable != "yes"]
    if inside:
        return "indeterminate", (f"the measured {statistic} {rows.measured.iloc[0]:.3g} is not distinguishable from "
                                 "what structure-free rows give: " + "; ".join(inside))
    away = "; ".join(f"{r.null} {r.null_mean:.3g} [{r.null_lo:.3g}, {r.null_hi:.3g}], p = {r.p:.2g}"
                     for r in rows.itertuples())
    return consistent, f"the measured {statistic} {rows.measured.iloc[0]:.3g} is away from every null ({away}); " \
        f"by the paper's rule it is {'consistent' if consistent == 'yes' else 'inconsistent'} with -(alpha_N + 1)"


def _num(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def null_results(null: pd.DataFrame | None) -> dict:
    """`results.null`: {representation: {statistic: {kind: {mean, range, p, distinguishable, draws}, measured,
    distinguishable (yes only when from every kind)}}}."""
    out: dict = {}
    if null is None:
        return out
    for r in null.itertuples():
        entry = out.setdefault(r.representation, {}).setdefault(r.statistic, {"measured": _num(r.measured)})
        entry[r.null] = {"mean": _num(r.null_mean), "range": [_num(r.null_lo), _num(r.null_hi)], "p": _num(r.p),
                         "distinguishable": r.distinguishable, "draws": int(r.draws)}
    for stats in out.values():
        for entry in stats.values():
            kinds = [v for v in entry.values() if isinstance(v, dict)]
            entry["distinguishable"] = "yes" if kinds and all(v["distinguishable"] == "yes" for v in kinds) else "no"
    return out


def null_shown(null: pd.DataFrame, statistics: Sequence[str] = ("envelope_slope",)) -> pd.DataFrame:
    """The report's view of `qdg.null`: the chosen statistics (prefixes), measured beside each null's range."""
    keep = null[null.statistic.map(lambda s: any(s.startswith(p) for p in statistics))]
    return pd.DataFrame({"representation": keep.representation, "statistic": keep.statistic, "null": keep.null,
                         "measured": keep.measured.round(3),
                         "null 95%": [f"{m:.3g} [{a:.3g}, {b:.3g}]" for m, a, b in
                                      zip(keep.null_mean, keep.null_lo, keep.null_hi)],
                         "p": keep.p.round(3), "distinguishable": keep.distinguishable})
