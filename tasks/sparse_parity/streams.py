"""Random streams that give the same numbers on every device: Philox4x32-10 written in int64 tensor ops.

torch's generators are device-specific (the CPU's Mersenne Twister and CUDA's Philox offsets give different
numbers for one seed), so a grid trained on a GPU used to see other batches and eval sets than the same config on
the CPU. Here every random number of the study is a pure function of (key, counter): `Stream(key, device)` hands
out Philox4x32-10 blocks (Salmon et al. 2011, the generator cuRAND and JAX use) for counters 0, 1, 2, ... computed
by elementwise integer ops on `device` (no host round trip, no device generator), so CPU and CUDA give equal
values bit for bit. Random123's published known-answer vectors and an independent NumPy version are in the tests.

Integer arithmetic only, with no overflow anywhere: 32-bit words live in int64 tensors in [0, 2**32); a 32 x 32-bit
product is taken with the multiplier's signed representative (M - 2**32, |.| < 2**31), so it fits in int64, and
its high word is recovered exactly ((x * (M - 2**32)) >> 32 is floor division, off by exactly x).
"""
from __future__ import annotations

import numpy as np
import torch

MASK32 = 0xFFFF_FFFF
PHILOX_M = (0xD251_1F53, 0xCD9E_8D57)  # round multipliers
PHILOX_W = (0x9E37_79B9, 0xBB67_AE85)  # key schedule (Weyl) increments
ROUNDS = 10


def _signed32(m: int) -> int:
    return m - (1 << 32) if m >= 1 << 31 else m


def philox4x32(counter: list[torch.Tensor], key: tuple[int, int]) -> list[torch.Tensor]:
    """Philox4x32-10 of counters (c0, c1, c2, c3) (int64 tensors of one shape, values in [0, 2**32)) under the
    key (k0, k1) (Python ints < 2**32): the four output words, int64 tensors of the same shape."""
    x0, x1, x2, x3 = counter
    k0, k1 = key
    m0, m1 = _signed32(PHILOX_M[0]), _signed32(PHILOX_M[1])
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + PHILOX_W[0]) & MASK32, (k1 + PHILOX_W[1]) & MASK32
        p0, p1 = x0 * m0, x2 * m1  # |x·m| < 2**63: exact
        hi0, hi1 = (p0 >> 32).add_(x0), (p1 >> 32).add_(x2)  # high words of x0·M0, x2·M1
        x0, x1, x2, x3 = hi1.bitwise_xor_(x1).bitwise_xor_(k0), p1.bitwise_and_(MASK32), \
            hi0.bitwise_xor_(x3).bitwise_xor_(k1), p0.bitwise_and_(MASK32)
    return [x0, x1, x2, x3]


class Stream:
    """One random stream: Philox4x32-10 under a 64-bit key, counter = blocks handed out so far (64-bit, in the
    counter's first two words; the last two are 0). `words(n)` continues the stream; its values depend only on the
    key and on how many words were asked for before, never on the device."""

    def __init__(self, key: int, device: str | torch.device = "cpu"):
        if not 0 <= int(key) < 1 << 64:
            raise ValueError(f"stream key {key} is out of range [0, 2**64)")
        self.key = int(key)
        self.device = torch.device(device)
        self.blocks = 0  # counters used
        self._byte_shifts = torch.arange(0, 32, 8, dtype=torch.int64, device=self.device)
        self._byte_bits = ((torch.arange(256, device=self.device)[:, None] >> torch.arange(8, device=self.device))
                           & 1).to(torch.uint8)  # row b: the 8 bits of byte b, lowest first

    def words(self, n: int) -> torch.Tensor:
        """The stream's next n 32-bit words, int64 (n,) in [0, 2**32). A call takes whole 4-word blocks."""
        nb = -(-int(n) // 4)
        ctr = torch.arange(self.blocks, self.blocks + nb, dtype=torch.int64, device=self.device)
        self.blocks += nb
        zero = torch.zeros_like(ctr)
        out = philox4x32([ctr & MASK32, ctr >> 32, zero, zero], (self.key & MASK32, self.key >> 32))
        return torch.stack(out, dim=1).view(-1)[:n]

    def bits(self, n: int, n_bits: int) -> torch.Tensor:
        """(n, n_bits) uint8 fair coin flips, 32 per word (row i uses words i·w .. i·w + w - 1, w = ceil(n_bits /
        32), lowest bit first). Unpacked a byte at a time through a 256 x 8 table (4x faster than shifting every
        bit out of an int64 word)."""
        w = (n_bits + 31) // 32
        byte = (self.words(n * w)[:, None] >> self._byte_shifts) & 0xFF  # (n·w, 4), lowest byte first
        return torch.index_select(self._byte_bits, 0, byte.view(-1)).view(n, 32 * w)[:, :n_bits]

    def categorical(self, n: int, thresholds: torch.Tensor) -> torch.Tensor:
        """n draws (n,) int64 from the distribution whose integer CDF is `thresholds` (see `integer_cdf`): one
        32-bit word each, compared as integers (no float rounding, the same on every device)."""
        return torch.searchsorted(thresholds, self.words(n), right=True)

    def below(self, n: int, high: int) -> torch.Tensor:
        """n uniform integers in [0, high) (int64): floor(word · high / 2**32), bias < high / 2**32."""
        if not 0 < high <= 1 << 31:
            raise ValueError(f"high must be in (0, 2**31] (got {high})")
        return (self.words(n) * high) >> 32

    def permutation(self, n: int) -> torch.Tensor:
        """A uniformly random permutation of range(n) (int64): the stable argsort of n 63-bit random keys."""
        w = self.words(2 * n)
        keys = (w[:n] << 31) | (w[n:] >> 1)
        return torch.argsort(keys, stable=True)


def integer_cdf(probs: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """The integer thresholds of a categorical distribution for `Stream.categorical`: thresholds[i] = round(2**32 ·
    (p_0 + ... + p_i)) (the last = 2**32), computed on the host in float64 (NumPy, the same on every machine), as
    int64 on `device`. A 32-bit word u draws i = #{j : thresholds[j] <= u}, so i has probability (thresholds[i] -
    thresholds[i-1]) / 2**32: each p_i rounded to a multiple of 2**-32 (2.3e-10)."""
    cdf = np.cumsum(np.asarray(probs, dtype=np.float64))
    thr = np.rint(cdf / cdf[-1] * 2.0**32).astype(np.int64)
    thr[-1] = 1 << 32
    return torch.as_tensor(thr, device=device)
