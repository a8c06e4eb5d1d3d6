"""The null stage of both QDG flows: for each representation, `null.draws` cached draws of each null kind through
the same affinity, clusterings and Zipf fits, then one summary beside the measured statistics (tasks/qdg/null.py)."""
from __future__ import annotations

from schemas.qdg import ClusteringConfig, NullConfig, ZipfConfig
from storage import ArtifactRef
from tasks.qdg.null import null_draw, null_summary


def null_stage(blocks: dict[str, list], zipf: dict[str, ArtifactRef], stability: dict[str, ArtifactRef | None],
               agreement_labels: dict[str, ArtifactRef] | None, *, method: str, cl: ClusteringConfig,
               zcfg: ZipfConfig, ncfg: NullConfig, store: str) -> ArtifactRef | None:
    """`qdg.null` for the representations in `blocks` (their order), or None when `null.draws` is 0. A draw's task
    takes its index and the null's seed, not the draw count: raising `null.draws` computes only the new draws."""
    if ncfg.draws == 0:
        return None
    reps = list(blocks)
    draws = {r: [null_draw.with_options(task_run_name=f"qdg-null-{r}-{kind}-{d}")(
                     blocks[r], kind=kind, draw=d, method=method, neighbors=cl.knn_neighbors,
                     weighting=cl.knn_weighting, n_clusters=cl.n_clusters, seeds=cl.seeds[:2],
                     spectral=cl.spectral(), zipf=zcfg, null_seed=ncfg.seed, store=store)
                 for kind in ncfg.kinds for d in range(ncfg.draws)] for r in reps}
    labels = [agreement_labels[r] for r in reps] if agreement_labels and len(reps) > 1 else None
    return null_summary.with_options(task_run_name="qdg-null")(
        [zipf[r] for r in reps], [stability[r] for r in reps], [draws[r] for r in reps], labels,
        representations=reps, kinds=list(ncfg.kinds), level=ncfg.level, seed=ncfg.seed,
        permutation_draws=ncfg.permutation_draws, store=store)
