"""The study's random streams are defined by integer arithmetic alone, so every device gives the same numbers:
Philox4x32-10 against Random123's published answers and against an independent NumPy version; samples, eval sets,
subtask draws and epoch permutations against NumPy; a tiny grid against its recorded losses."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from schemas.sparse_parity import TaskConfig
from tasks.sparse_parity.data import Sampler, derive_seed, eval_set, make_spec, train_set
from tasks.sparse_parity.streams import Stream, integer_cdf, philox4x32
from tasks.sparse_parity.train import GridTrainer, Group, _GroupBatches, log_steps, train_grid

GOLDEN = Path(__file__).resolve().parent / "golden" / "sparse_parity_tiny.json"


# ------------------------------------------------------------------------------- an independent NumPy reference
def np_philox(ctr: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 (Salmon et al. 2011) in uint64 NumPy arithmetic: ctr (n, 4) uint32-valued -> (n, 4)."""
    x = ctr.astype(np.uint64).copy()
    k = np.array(key, dtype=np.uint64)
    m32 = np.uint64(0xFFFFFFFF)
    for r in range(10):
        p0 = np.uint64(0xD2511F53) * x[:, 0]  # < 2**64: exact in uint64
        p1 = np.uint64(0xCD9E8D57) * x[:, 2]
        x = np.stack([(p1 >> np.uint64(32)) ^ x[:, 1] ^ k[0], p1 & m32,
                      (p0 >> np.uint64(32)) ^ x[:, 3] ^ k[1], p0 & m32], axis=1)
        k = (k + np.array([0x9E3779B9, 0xBB67AE85], dtype=np.uint64)) & m32
    return x


def np_words(key: int, start_block: int, n: int) -> np.ndarray:
    """Words of the stream `key` from block `start_block`: counter (block low, block high, 0, 0), 4 words each."""
    blocks = np.arange(start_block, start_block + -(-n // 4), dtype=np.uint64)
    ctr = np.stack([blocks & np.uint64(0xFFFFFFFF), blocks >> np.uint64(32), 0 * blocks, 0 * blocks], axis=1)
    return np_philox(ctr, (key & 0xFFFFFFFF, key >> 32)).reshape(-1)[:n]


def np_bits(words: np.ndarray, n: int, n_bits: int) -> np.ndarray:
    w = (n_bits + 31) // 32
    return ((words.reshape(n, w, 1) >> np.arange(32, dtype=np.uint64)) & np.uint64(1)).reshape(n, -1)[:, :n_bits]


# ------------------------------------------------------------------------------------------------ the stream
@pytest.mark.parametrize("ctr, key, out", [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_gives_random123s_known_answers(ctr, key, out):
    got = philox4x32([torch.tensor([c], dtype=torch.int64) for c in ctr], key)
    assert [int(g) for g in got] == list(out)
    assert np_philox(np.array([ctr]), key)[0].tolist() == list(out)  # and so does the reference below


def test_stream_words_equal_the_numpy_reference_and_continue_it():
    key = derive_seed("batches", 3, -1)  # a real 63-bit key: both key words in use
    s = Stream(key)
    first, second = s.words(10), s.words(13)  # 10 words take 3 blocks: the next call starts at block 3
    assert first.dtype == torch.int64 and int(first.min()) >= 0 and int(first.max()) < 2**32
    np.testing.assert_array_equal(first.numpy(), np_words(key, 0, 10).astype(np.int64))
    np.testing.assert_array_equal(second.numpy(), np_words(key, 3, 13).astype(np.int64))
    big = Stream(key)
    big.blocks = 2**32 - 2  # the counter's high word comes into play
    np.testing.assert_array_equal(big.words(16).numpy(), np_words(key, 2**32 - 2, 16).astype(np.int64))
    assert not torch.equal(Stream(key + 1).words(10), first)


def test_bits_subtasks_and_permutations_equal_the_numpy_reference():
    key = 12345
    s = Stream(key)
    bits = s.bits(50, 70)  # 3 words per row, the last 26 bits of each row's third word unused
    np.testing.assert_array_equal(bits.numpy(), np_bits(np_words(key, 0, 150), 50, 70))
    probs = np.array([0.5, 0.25, 0.125, 0.125])
    thr = integer_cdf(probs)
    assert thr.tolist() == [2**31, 3 * 2**30, 7 * 2**29, 2**32]
    draws = Stream(key).categorical(1000, thr)
    u = np_words(key, 0, 1000)
    np.testing.assert_array_equal(draws.numpy(), (u[:, None] >= np.array(thr.tolist(), dtype=np.uint64)).sum(1))
    perm = Stream(key).permutation(1001)
    w = np_words(key, 0, 2002)
    keys = (w[:1001] << np.uint64(31)) | (w[1001:] >> np.uint64(1))
    np.testing.assert_array_equal(perm.numpy(), np.argsort(keys, kind="stable"))


def test_the_draws_have_the_right_distributions():
    probs = np.arange(1, 9, dtype=np.float64) ** -1.4
    probs /= probs.sum()
    n = 200_000
    counts = np.bincount(Stream(7).categorical(n, integer_cdf(probs)).numpy(), minlength=8)
    chi2 = ((counts - n * probs) ** 2 / (n * probs)).sum()
    assert chi2 < 24.3  # 7 degrees of freedom: p = 0.001
    coins = Stream(8).bits(20000, 70).double()
    assert (coins.mean(0) - 0.5).abs().max() < 0.015  # 4.2 sigma at n = 20000
    assert coins.T.corrcoef().fill_diagonal_(0).abs().max() < 0.04
    b = Stream(9).below(100_000, 10)
    assert int(b.min()) == 0 and int(b.max()) == 9 and abs(float(b.double().mean()) - 4.5) < 0.05
    assert sorted(Stream(10).permutation(500).tolist()) == list(range(500))


def test_samples_and_eval_sets_equal_the_numpy_reference():
    spec = make_spec(TaskConfig(n_tasks=6, n_bits=10, k=3, alpha=0.4, seed=3))
    t, bits, y = Sampler(spec, seed=99).sample(40)
    u = np_words(99, 0, 40)  # 40 subtask words (10 blocks), then one word of bits per sample
    thr = np.rint(np.cumsum(spec.probs) / np.cumsum(spec.probs)[-1] * 2.0**32).astype(np.uint64)
    np.testing.assert_array_equal(t.numpy(), (u[:, None] >= thr[None, :-1]).sum(1))
    ref_bits = np_bits(np_words(99, 10, 40), 40, 10)
    np.testing.assert_array_equal(bits.numpy(), ref_bits)
    parity = ref_bits[np.arange(40)[:, None], spec.subsets[t.numpy()]].sum(1) % 2
    np.testing.assert_array_equal(y.numpy(), parity)
    et, ebits, _ = eval_set(spec, 5, seed=0)
    assert et.tolist() == [i for i in range(6) for _ in range(5)]
    np.testing.assert_array_equal(ebits.numpy(), np_bits(np_words(derive_seed("eval-set", 0), 0, 30), 30, 10))
    d = train_set(spec, 30, seed=4)  # drawn like a fresh batch, from its own stream
    ref = Sampler(spec, seed=derive_seed("train-set", 4, 30)).sample(30)
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(d, ref))


def test_finite_sets_are_read_in_epochs_of_distinct_samples():
    spec = make_spec(TaskConfig(n_tasks=6, n_bits=10, k=3, alpha=0.4, seed=3))
    n, B = 100, 30  # 3 batches an epoch, 10 samples skipped
    data = train_set(spec, n, seed=1)
    batches = _GroupBatches(spec, [Group(seed=1, data_size=n, data=data)], B, torch.device("cpu"))
    order = np.argsort(data[0], kind="stable")  # the set is kept in subtask order
    epochs = []
    for epoch in range(2):
        w = np_words(derive_seed("batches", 1, n), 2 * n // 4 * epoch, 2 * n)
        keys = (w[:n] << np.uint64(31)) | (w[n:] >> np.uint64(1))
        perm = np.argsort(keys, kind="stable")
        seen = []
        for j in range(3):
            t, bits, y, wt = batches.next()
            idx = np.sort(perm[j * B:(j + 1) * B])
            np.testing.assert_array_equal(t[0].numpy(), data[0][order][idx])
            np.testing.assert_array_equal(bits[0].numpy(), data[1][order][idx].astype(np.float32))
            assert torch.all(wt == 1)
            seen += idx.tolist()
        assert len(set(seen)) == 90  # no sample twice in an epoch
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # the next epoch is a new permutation


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_numbers_bit_for_bit():
    spec = make_spec(TaskConfig(n_tasks=50, n_bits=37, k=3, alpha=0.4, seed=0))
    for a, b in zip(Sampler(spec, 5).sample(10_000), Sampler(spec, 5, device="cuda").sample(10_000)):
        assert torch.equal(a, b.cpu())
    for a, b in zip(eval_set(spec, 20, 0), eval_set(spec, 20, 0, device="cuda")):
        assert torch.equal(a, b.cpu())
    assert torch.equal(Stream(3).permutation(10_000), Stream(3, "cuda").permutation(10_000).cpu())
    data = train_set(spec, 5000, seed=1)
    on = {d: GridTrainer(spec, [8, 24], [Group(seed=0), Group(seed=1, data_size=5000, data=data)], batch_size=512,
                         lr=1e-3, weight_decay=0.0, device=d) for d in ("cpu", "cuda")}
    assert torch.equal(on["cpu"].net.flat.data, on["cuda"].net.flat.data.cpu())  # init: a CPU generator, moved
    for _ in range(3):  # fresh batches and epoch slices of a finite set
        for a, b in zip(on["cpu"].batches.next(), on["cuda"].batches.next()):
            assert torch.equal(a, b.cpu())


# ------------------------------------------------------------------------------------------------ the golden grid
def golden_run() -> dict:
    """A tiny grid (3 widths; fresh samples and a finite set read in epochs) trained on the CPU in float32."""
    g = json.loads(GOLDEN.read_text())["setup"]
    spec = make_spec(TaskConfig(**g["task"]))
    groups = [Group(seed=0)] + [Group(seed=s, data_size=d, data=train_set(spec, d, s)) for d, s in g["finite"]]
    res = train_grid(spec, g["widths"], groups, steps=g["steps"], batch_size=g["batch_size"], lr=g["lr"],
                     weight_decay=g["weight_decay"], log_at=log_steps(g["steps"], g["log_points"]),
                     eval_data=eval_set(spec, g["eval_samples_per_task"], seed=spec.seed), device="cpu")
    return {"steps": res.steps.tolist(), "mean_loss_bits": res.mean_loss_bits.tolist(),
            "final_loss_bits": res.loss_bits[:, :, -1].tolist()}


def test_a_tiny_grid_reproduces_its_recorded_losses():
    """float32 training on the CPU is deterministic: the recorded losses (tests/sparse_parity/golden, written by
    `python -m tests.sparse_parity.test_streams`) hold to 1e-6 relative. A change of any random stream or of the training
    arithmetic moves them by far more (a different batch changes the first step's loss at 1e-2)."""
    want = json.loads(GOLDEN.read_text())
    got = golden_run()
    assert got["steps"] == want["steps"]
    np.testing.assert_allclose(got["mean_loss_bits"], want["mean_loss_bits"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["final_loss_bits"], want["final_loss_bits"], rtol=1e-6, atol=1e-7)


if __name__ == "__main__":  # re-record the golden losses (after a deliberate change of a stream or the arithmetic)
    record = {"setup": json.loads(GOLDEN.read_text())["setup"], "tolerance": "rtol 1e-6, atol 1e-7", **golden_run()}
    GOLDEN.write_text("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in record.items()) + "\n}\n")
