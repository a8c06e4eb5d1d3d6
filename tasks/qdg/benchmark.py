"""The known-quanta benchmark of qdg-sparse-parity: (representation, transform, affinity, clusterer) x training regime
x training seed -> how well the clusters recover the true subtasks, with intervals, beside baselines and the per-unit
specialisation of each model.

Per (regime, training seed, representation, transform, affinity, clusterer), from the `qdg.labels` at k = the
number of sampled subtasks (spectral; one per clustering seed) or of the communities Leiden found:
- ari: adjusted Rand index against the true subtask of each sample, mean over the clustering seeds (spectral with
  cluster_qr is deterministic on a converged embedding: the seeds are no spread);
- ari_lo, ari_hi: the `level` bootstrap interval over samples (resample the samples with replacement, recompute
  the seed-mean ARI of the same labels on the resample; `bootstrap` resamples, seeded; percentiles shifted by the
  bootstrap's bias, see `bootstrap_interval`);
- knn_purity: the fraction of each sample's `purity_neighbors` nearest neighbours (cosine of the representation,
  itself excluded) in its own subtask, mean over samples: whether the *model* separates its quanta, whatever the
  clustering does with it;
- label_ari: the same clusters against the labels (0/1); control_ari: the same representation's clusters of as many
  unlearned subtasks against their subtasks (NaN where there is no control, e.g. the modular model);
- purity_mean, purity_min: per true subtask, the fraction of its samples in its most common cluster (mean over
  seeds), averaged and the smallest over the subtasks.
Baselines (kind = baseline), clustered by the same spectral clustering: `control_bits` (the one-hot control bits:
the subtask itself, the ceiling, ARI 1), `task_bits` (the task bits as +-1: the floor, ~0), `random` (seeded
Gaussian vectors, ~0).
Specialisation of a regime's model (`specialised`, `units_used`): D[t, j] = the mean exact ablation damage (loss
change in nats when unit j is zeroed, `unit_ablation`) over the samples of learned subtask t; a unit is *used* when
max_t D[t, j] >= `specialised_min_nats`, and *specialised* when moreover its largest D is at least
`specialised_ratio` times its second largest (negative means count as 0); `specialised` = specialised / used.
Mean rows (kind = mean, training_seed = -1), per (regime, representation, transform, affinity, clusterer) trained
with several seeds: the mean over the models of every column, `ari_lo`/`ari_hi` the `level` t-interval of the mean
ARI over the models (each with its own samples: the spread of models and of sample draws together), `ari_min` the
smallest.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.stats
import torch

from schemas.qdg import PARAMETER_SPACE_REPRESENTATIONS, BenchmarkConfig, SpectralOptions
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.qdg.clustering import affinity_from_cosine, spectral_labels
from tasks.qdg.parity import load_parity_model
from tasks.qdg.parity_representations import hidden_and_gap, unit_ablation
from tasks.sparse_parity.data import encode

BASELINES = ("control_bits", "task_bits", "random")
COLUMNS = ["regime", "training_seed", "representation", "transform", "affinity", "clusterer", "kind", "k",
           "n_samples", "n_subtasks", "ari", "ari_lo", "ari_hi", "ari_min", "n_models", "label_ari", "control_ari",
           "purity_mean", "purity_min", "knn_purity", "specialised", "units_used"]
GROUP = ["regime", "representation", "transform", "affinity", "clusterer", "kind"]


def seed_mean_ari(truth: np.ndarray, labels: list[np.ndarray], idx: np.ndarray | None = None) -> float:
    from sklearn.metrics import adjusted_rand_score

    if idx is None:
        return float(np.mean([adjusted_rand_score(truth, lab) for lab in labels]))
    return float(np.mean([adjusted_rand_score(truth[idx], lab[idx]) for lab in labels]))


def resampled_ari(truth: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> float:
    """adjusted_rand_score(truth[idx], labels[idx]) from the contingency counts (no per-call input checks: the
    bootstrap calls it thousands of times; tested equal to scikit-learn's)."""
    t, lab = truth[idx], labels[idx]
    nl = int(lab.max()) + 1
    cont = np.bincount(t * nl + lab, minlength=(int(t.max()) + 1) * nl).reshape(-1, nl)
    comb = lambda x: (x * (x - 1) / 2.0).sum()  # noqa: E731
    n, sum_ij = len(idx), comb(cont.astype(np.float64))
    sum_a, sum_b = comb(cont.sum(1).astype(np.float64)), comb(cont.sum(0).astype(np.float64))
    expected = sum_a * sum_b / (n * (n - 1) / 2.0)
    top = (sum_a + sum_b) / 2.0
    return 1.0 if top == expected else float((sum_ij - expected) / (top - expected))


def bootstrap_interval(truth: np.ndarray, labels: list[np.ndarray], n_boot: int, level: float,
                       seed: int) -> tuple[float, float]:
    """Bootstrap interval of the seed-mean ARI over resamples of the samples (the labels are not recomputed).

    A resample with replacement holds copies of samples, and two copies always share a cluster in both partitions:
    the resampled ARI is biased upward (by ~0.05 at 100 samples near ARI 0). The percentiles are therefore shifted
    by the bootstrap's bias (mean of the resamples minus the estimate): the interval has the bootstrap's spread
    around the estimate. Clipped to [-1, 1]."""
    if n_boot == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    n = len(truth)
    codes = np.unique(truth, return_inverse=True)[1].reshape(-1)
    stats = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        stats.append(np.mean([resampled_ari(codes, lab, idx) for lab in labels]))
    stats = np.asarray(stats)
    bias = stats.mean() - seed_mean_ari(truth, labels)
    q = (1 - level) / 2
    lo, hi = np.quantile(stats, q) - bias, np.quantile(stats, 1 - q) - bias
    return float(np.clip(lo, -1, 1)), float(np.clip(hi, -1, 1))


def purity(truth: np.ndarray, labels: list[np.ndarray]) -> tuple[float, float]:
    """(mean, min) over true subtasks of the fraction of its samples in its most common cluster (mean over seeds)."""
    subtasks = np.unique(truth)
    per = np.zeros(len(subtasks))
    for lab in labels:
        for i, t in enumerate(subtasks):
            per[i] += np.bincount(lab[truth == t]).max() / np.sum(truth == t)
    per /= len(labels)
    return float(per.mean()), float(per.min())


def knn_purity(cosines: np.ndarray, truth: np.ndarray, neighbors: int) -> float:
    """Mean over samples of the fraction of its `neighbors` most similar other samples (cosines (n, n), itself
    excluded; ties by index) that share its subtask."""
    c = np.array(cosines, dtype=np.float64)
    n = len(truth)
    k = min(neighbors, n - 1)
    np.fill_diagonal(c, -np.inf)
    nearest = np.argsort(-c, axis=1, kind="stable")[:, :k]
    return float((truth[nearest] == truth[:, None]).mean())


def aligned_labels(st: Store, refs: list[ArtifactRef], n: int) -> list[np.ndarray]:
    """The labels of each `qdg.labels` table in sample-row order 0..n-1."""
    out = []
    for ref in refs:
        df = st.read_table(ref).set_index("row").sort_index()
        if df.index.tolist() != list(range(n)):
            raise ValueError(f"labels {ref.short} do not cover the {n} samples")
        out.append(df["label"].to_numpy())
    return out


def baseline_vectors(name: str, task: np.ndarray, bits: np.ndarray, n_tasks: int, dims: int,
                     seed: int) -> np.ndarray:
    """(n, dim) float64 unit rows of a baseline representation."""
    if name == "control_bits":
        v = np.eye(n_tasks)[task]
    elif name == "task_bits":
        v = 2.0 * bits - 1.0
    elif name == "random":
        v = np.random.default_rng(seed).standard_normal((len(task), dims))
    else:
        raise ValueError(f"unknown baseline {name!r}")
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def baseline_labels(vectors: np.ndarray, k: int, seeds: list[int], options: SpectralOptions) -> list[np.ndarray]:
    c = np.clip(vectors @ vectors.T, -1, 1).astype(np.float32)
    return [spectral_labels(affinity_from_cosine(c), k, s, options) for s in seeds]


def specialisation(mlp: torch.nn.Sequential, n_tasks: int, task: np.ndarray, bits: np.ndarray, label: np.ndarray,
                   ratio: float, min_nats: float) -> tuple[float, int]:
    """(fraction of used units that are specialised, number of used units): see the module docstring."""
    t, b, y = (torch.as_tensor(v) for v in (task, bits, label))
    with torch.no_grad():
        a, d, v = hidden_and_gap(mlp, encode(t, b, n_tasks))
        abl = unit_ablation(a, d, v, y).double().numpy()
    subtasks = np.unique(task)
    damage = np.clip(np.stack([abl[task == s].mean(0) for s in subtasks]), 0, None)  # (T, width)
    top = np.sort(damage, axis=0)[::-1]
    used = top[0] >= min_nats
    second = top[1] if len(subtasks) > 1 else np.zeros_like(top[0])
    special = used & (top[0] >= ratio * second)
    return (float(special.sum() / used.sum()) if used.any() else float("nan")), int(used.sum())


def benchmark_rows(entry: dict, kind: str, truth: np.ndarray, sign: np.ndarray, labels: list[np.ndarray],
                   control: tuple[np.ndarray, list[np.ndarray]] | None, spec: tuple[float, int], nn_purity: float,
                   cfg: BenchmarkConfig) -> dict:
    """One model's row; `entry`: its regime, training_seed, representation, transform, affinity, clusterer."""
    lo, hi = bootstrap_interval(truth, labels, cfg.bootstrap, cfg.level, cfg.seed)
    pm, pmin = purity(truth, labels)
    ari = seed_mean_ari(truth, labels)
    return {**entry, "kind": kind, "k": int(round(np.mean([len(np.unique(lab)) for lab in labels]))),
            "n_samples": int(len(truth)), "n_subtasks": int(len(np.unique(truth))), "ari": ari, "ari_lo": lo,
            "ari_hi": hi, "ari_min": ari, "n_models": 1, "label_ari": seed_mean_ari(sign, labels),
            "control_ari": seed_mean_ari(control[0], control[1]) if control is not None else float("nan"),
            "purity_mean": pm, "purity_min": pmin, "knn_purity": nn_purity, "specialised": spec[0],
            "units_used": spec[1]}


def t_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The `level` Student-t interval of the mean of `values` (NaN for fewer than 2)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float("nan"), float("nan")
    half = scipy.stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def mean_rows(df: pd.DataFrame, level: float) -> pd.DataFrame:
    """One `mean` row per group of per-model rows with at least two training seeds (see the module docstring)."""
    out = []
    for key, g in df.groupby(GROUP, sort=False):
        if g.training_seed.nunique() < 2:
            continue
        lo, hi = t_interval(g.ari.to_numpy(), level)
        row = dict(zip(GROUP, key))
        row.update(kind="mean", training_seed=-1, k=int(round(g.k.mean())), n_samples=int(round(g.n_samples.mean())),
                   n_subtasks=int(round(g.n_subtasks.mean())), ari=float(g.ari.mean()), ari_lo=lo, ari_hi=hi,
                   ari_min=float(g.ari.min()), n_models=int(len(g)),
                   units_used=int(round(g.units_used.mean())),
                   **{c: float(g[c].mean()) for c in ("label_ari", "purity_mean", "purity_min", "knn_purity")},
                   control_ari=float(g.control_ari.mean()) if g.control_ari.notna().any() else float("nan"),
                   specialised=float(g.specialised.mean()) if g.specialised.notna().any() else float("nan"))
        out.append(row)
    return pd.DataFrame(out, columns=COLUMNS)


ENTRY_KEYS = ("regime", "training_seed", "representation", "transform", "affinity", "clusterer")


@quanta_task(name="qdg-parity-benchmark")
def parity_benchmark(*, entries: list[dict], samples: list[ArtifactRef], labels: list[list[ArtifactRef]],
                     similarities: list[ArtifactRef], control_samples: list[ArtifactRef | None],
                     control_labels: list[list[ArtifactRef]], models: list[ArtifactRef], seeds: list[int],
                     spectral: SpectralOptions, cfg: BenchmarkConfig, store: str) -> ArtifactRef:
    """`qdg.parity_benchmark`: one row per entry i (entries[i]: {regime, training_seed, representation, transform,
    affinity, clusterer}; its model, learned samples, the labels of its clusterings, the dense similarity its
    k-NN purity is read from, and its control's samples and labels), per (regime, training seed) the baseline rows,
    and the mean rows over training seeds."""
    st = Store(store)
    rows, done, spec_of, purity_of = [], set(), {}, {}
    for i, entry in enumerate(entries):
        entry = {k: entry[k] for k in ENTRY_KEYS}
        arrays, attrs = st.read_zarr(samples[i])
        task, bits, sign = (np.asarray(arrays[k]) for k in ("task", "bits", "label"))
        model = models[i]
        if model.content_hash not in spec_of:
            mlp, _, _ = load_parity_model(st, model)
            spec_of[model.content_hash] = specialisation(mlp, int(attrs["n_tasks"]), task, bits, sign,
                                                         cfg.specialised_ratio, cfg.specialised_min_nats)
        if similarities[i].content_hash not in purity_of:
            c = np.asarray(st.open_zarr(similarities[i])["c"][...])
            purity_of[similarities[i].content_hash] = knn_purity(c, task, cfg.purity_neighbors)
        control = None
        if control_samples[i] is not None and control_labels[i]:
            carr, _ = st.read_zarr(control_samples[i])
            ctask = np.asarray(carr["task"])
            control = (ctask, aligned_labels(st, control_labels[i], len(ctask)))
        rows.append(benchmark_rows(entry, "representation", task, sign, aligned_labels(st, labels[i], len(task)),
                                   control, spec_of[model.content_hash], purity_of[similarities[i].content_hash],
                                   cfg))
        group = (entry["regime"], entry["training_seed"])
        if group not in done:
            done.add(group)
            k = len(np.unique(task))
            for name in BASELINES:
                v = baseline_vectors(name, task, bits, int(attrs["n_tasks"]), cfg.random_dims, cfg.seed)
                base = {**entry, "representation": name, "transform": "none", "affinity": "dense",
                        "clusterer": "spectral"}
                rows.append(benchmark_rows(base, "baseline", task, sign, baseline_labels(v, k, seeds, spectral),
                                           None, (np.nan, 0), knn_purity(v @ v.T, task, cfg.purity_neighbors), cfg))
    df = pd.DataFrame(rows, columns=COLUMNS)
    means = mean_rows(df, cfg.level)
    if len(means):
        df = pd.concat([df, means], ignore_index=True)
    df = df.astype({c: "int64" for c in ("training_seed", "k", "n_samples", "n_subtasks", "n_models", "units_used")})
    inputs = list(dict.fromkeys([*models, *samples, *similarities, *(r for lr in labels for r in lr),
                                 *(s for s in control_samples if s is not None),
                                 *(r for lr in control_labels for r in lr)]))
    return st.write_table("qdg.parity_benchmark", df, inputs=inputs,
                          params={"benchmark": cfg.model_dump(), "seeds": list(seeds),
                                  "spectral": spectral.model_dump(mode="json")})


def best_row(df: pd.DataFrame) -> dict | None:
    """The highest-ARI parameter-space representation on a trained model (the modular control excluded): among the
    mean rows over training seeds where there are any, else among the single models'."""
    sub = df[df.kind.isin(["representation", "mean"]) & df.representation.isin(PARAMETER_SPACE_REPRESENTATIONS)
             & (df.regime != "modular")]
    if (sub.kind == "mean").any():
        sub = sub[sub.kind == "mean"]
    if not len(sub):
        return None
    r = sub.loc[sub.ari.idxmax()]
    return {"representation": r.representation, "regime": r.regime, "transform": r["transform"],
            "affinity": r.affinity, "clusterer": r.clusterer, "ari": float(r.ari),
            "ari_ci": [float(r.ari_lo), float(r.ari_hi)], "ari_min": float(r.ari_min), "n_models": int(r.n_models)}


def benchmark_records(df: pd.DataFrame) -> list[dict]:
    """The table as results records (`ari_ci` = [lo, hi])."""
    out = []
    for r in df.to_dict(orient="records"):
        r["ari_ci"] = [r.pop("ari_lo"), r.pop("ari_hi")]
        out.append(r)
    return out


def short_table(df: pd.DataFrame) -> pd.DataFrame:
    """The table with short column names and rounded numbers (fits the Prefect UI's width)."""
    def f(x):
        return "" if pd.isna(x) else f"{x:.2f}"

    return pd.DataFrame({
        "regime": df.regime, "seed": df.training_seed.map(lambda s: "mean" if s < 0 else str(s)),
        "rep": df.representation, "transform": df["transform"], "affinity": df.affinity + "/" + df.clusterer,
        "k": df.k, "ARI": df.ari.map(f),
        "CI": [f"[{f(a)}, {f(b)}]" if not pd.isna(a) else "" for a, b in zip(df.ari_lo, df.ari_hi)],
        "min": df.ari_min.map(f), "lbl": df.label_ari.map(f), "ctrl": df.control_ari.map(f),
        "pur": df.purity_mean.map(f), "15nn": df.knn_purity.map(f), "spec": df.specialised.map(f)})


def markdown_from_results(results: dict) -> str:
    """The benchmark as a markdown table from a run's `--json` results (what docs/qdg.md quotes)."""
    from tasks.reporting import markdown_table

    df = pd.DataFrame(results["benchmark"])
    df["ari_lo"] = [c[0] for c in df.ari_ci]
    df["ari_hi"] = [c[1] for c in df.ari_ci]
    df = df.astype({c: float for c in ("ari_lo", "ari_hi", "control_ari", "specialised")})
    return markdown_table(short_table(headline_rows(df)))


def headline_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows a reader compares: the means over training seeds (and the baselines) where there are any, else
    every row."""
    return df if not (df.kind == "mean").any() else df[df.kind != "representation"]


if __name__ == "__main__":  # quanta run qdg-sparse-parity --config ... --json | python -m tasks.qdg.benchmark
    import json
    import sys

    out = json.load(sys.stdin)
    print(markdown_from_results(out.get("results", out)))
