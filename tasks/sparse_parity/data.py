"""Multitask sparse parity (paper Section 3): the task spec, sampling, and its Prefect tasks.

Input layout: `n_tasks` one-hot control bits, then `n_bits` task bits. Subtask i's label is the parity of the
task bits in its fixed random subset S_i (|S_i| = k). Subtask i is drawn with probability
p_i = i^-(alpha+1) / sum_j j^-(alpha+1) (i = 1..n_tasks, the paper's alpha).
Every random number (fresh batches, training sets, eval sets) comes from a counter-based stream (streams.Stream),
so a config gives the same samples on the CPU and on a GPU.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from schemas.sparse_parity import TaskConfig
from storage import ArtifactRef, Store
from tasks.caching import quanta_task
from tasks.sparse_parity.streams import Stream, integer_cdf


@dataclass(frozen=True)
class SparseParitySpec:
    n_tasks: int
    n_bits: int
    k: int
    alpha: float
    seed: int
    subsets: np.ndarray  # (n_tasks, k) int64: the bits whose parity is subtask i's label
    probs: np.ndarray  # (n_tasks,) float64: subtask frequencies, descending, summing to 1

    @property
    def input_dim(self) -> int:
        return self.n_tasks + self.n_bits


def derive_seed(name: str, *parts: int) -> int:
    """A 63-bit seed for the random stream `name` ("init", "batches", "train-set", "eval-set") of the integer
    `parts` (e.g. seed, D), from numpy's SeedSequence: entropy = the name's hash, spawn key = the parts, each as
    two 32-bit words (zigzag-coded, so negative D = -1 is allowed and no two part tuples share a key). Distinct
    (name, parts) give independent streams; ad-hoc arithmetic such as 7_777_777 + 131*seed + D collided."""
    key = []
    for p in parts:
        z = 2 * int(p) if p >= 0 else -2 * int(p) - 1
        if z >= 2**64:
            raise ValueError(f"seed part {p} is out of range (|part| < 2**63)")
        key += [z & 0xFFFF_FFFF, z >> 32]
    entropy = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    words = np.random.SeedSequence(entropy, spawn_key=key).generate_state(2, np.uint32)
    return (int(words[0]) | int(words[1]) << 32) >> 1


def zipf_probs(n_tasks: int, alpha: float) -> np.ndarray:
    """p_i ∝ i^-(alpha+1), i = 1..n_tasks (the paper's alpha)."""
    w = np.arange(1, n_tasks + 1, dtype=np.float64) ** -(alpha + 1.0)
    return w / w.sum()


def subtask_probs(cfg: TaskConfig) -> np.ndarray:
    """The subtask frequencies of a config: Zipf (`zipf_probs`) or uniform, 1/n_tasks each (the paper's control,
    scripts/sparse-parity-v4-uniform.py)."""
    if cfg.frequencies == "uniform":
        return np.full(cfg.n_tasks, 1.0 / cfg.n_tasks)
    return zipf_probs(cfg.n_tasks, cfg.alpha)


def make_spec(cfg: TaskConfig) -> SparseParitySpec:
    rng = np.random.default_rng(cfg.seed)
    subsets = np.stack([np.sort(rng.choice(cfg.n_bits, size=cfg.k, replace=False)) for _ in range(cfg.n_tasks)])
    return SparseParitySpec(cfg.n_tasks, cfg.n_bits, cfg.k, cfg.alpha, cfg.seed, subsets.astype(np.int64),
                            subtask_probs(cfg))


def spec_from_arrays(arrays: dict, attrs: dict) -> SparseParitySpec:
    return SparseParitySpec(int(attrs["n_tasks"]), int(attrs["n_bits"]), int(attrs["k"]), float(attrs["alpha"]),
                            int(attrs["seed"]), np.asarray(arrays["subsets"], dtype=np.int64),
                            np.asarray(arrays["probs"], dtype=np.float64))


def labels(subsets: torch.Tensor, task: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Parity of `bits[S_task]` per sample. subsets (n_tasks, k), task (B,), bits (B, n_bits) -> (B,) int64."""
    idx = subsets[task]  # (B, k)
    return torch.gather(bits, 1, idx).sum(dim=1, dtype=torch.int64) % 2


def encode(task: torch.Tensor, bits: torch.Tensor, n_tasks: int) -> torch.Tensor:
    """Network input (B, n_tasks + n_bits) float32: one-hot control bits, then the task bits."""
    x = torch.zeros(task.shape[0], n_tasks + bits.shape[1], dtype=torch.float32, device=bits.device)
    x[torch.arange(task.shape[0], device=bits.device), task] = 1.0
    x[:, n_tasks:] = bits.float()
    return x


class Sampler:
    """Draws (task, bits, label) samples of one spec on one device from its own counter-based stream
    (streams.Stream, keyed by `seed`): the same samples on every device, bit for bit."""

    def __init__(self, spec: SparseParitySpec, seed: int, device: str | torch.device = "cpu"):
        self.spec = spec
        self.device = torch.device(device)
        self.stream = Stream(int(seed), self.device)
        self.thresholds = integer_cdf(spec.probs, self.device)
        self.subsets = torch.as_tensor(spec.subsets, device=self.device)

    def sample(self, n: int, task: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n samples: task (n,) int64 drawn with the Zipf frequencies (or fixed), bits (n, n_bits) uint8, label.
        The subtasks come first from the stream (one 32-bit word each, inverse CDF in integers), then the bits."""
        if task is None:
            t = self.stream.categorical(n, self.thresholds)
        else:
            t = torch.full((n,), int(task), dtype=torch.long, device=self.device)
        bits = self.stream.bits(n, self.spec.n_bits)
        return t, bits, labels(self.subsets, t, bits)


def eval_set(spec: SparseParitySpec, samples_per_task: int, seed: int, device="cpu"):
    """Fresh test samples, `samples_per_task` for every subtask (so each subtask's loss is measured equally
    well); the mean test loss is then the exact Zipf-weighted average of per-subtask losses. The same on every
    device."""
    s = Sampler(spec, seed=derive_seed("eval-set", seed), device=device)
    t = torch.arange(spec.n_tasks, device=s.device).repeat_interleave(samples_per_task)
    bits = s.stream.bits(t.shape[0], spec.n_bits)
    return t, bits, labels(s.subsets, t, bits)


def train_set(spec: SparseParitySpec, data_size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A finite training set of `data_size` samples drawn from the task distribution (reproducible; drawn on the
    CPU, which gives the same set as any device)."""
    s = Sampler(spec, seed=derive_seed("train-set", seed, data_size), device="cpu")
    t, bits, y = s.sample(data_size)
    return t.numpy().astype(np.int64), bits.numpy().astype(np.uint8), y.numpy().astype(np.int64)


# ------------------------------------------------------------------------------------------ Prefect tasks
@quanta_task(name="sparse-parity-spec")
def build_spec(*, task_cfg: TaskConfig, store: str) -> ArtifactRef:
    """Subsets S_i and Zipf frequencies of one task config, as a validated Zarr artifact."""
    spec = make_spec(task_cfg)
    return Store(store).write_zarr(
        "sparse_parity.spec", {"subsets": spec.subsets, "probs": spec.probs},
        attrs=task_cfg.model_dump(), params=task_cfg.model_dump())


def load_spec(st: Store, ref: ArtifactRef) -> SparseParitySpec:
    arrays, attrs = st.read_zarr(ref)
    return spec_from_arrays(arrays, attrs)


@quanta_task(name="sparse-parity-train-set")
def build_train_set(spec_ref: ArtifactRef, *, data_size: int, seed: int, store: str) -> ArtifactRef:
    st = Store(store)
    spec = load_spec(st, spec_ref)
    t, bits, y = train_set(spec, data_size, seed)
    return st.write_zarr("sparse_parity.train_set", {"task": t, "bits": bits, "label": y},
                         attrs={"data_size": data_size, "seed": seed}, inputs=[spec_ref],
                         params={"data_size": data_size, "seed": seed})
