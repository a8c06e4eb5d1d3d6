"""Where torch computations run: `auto` picks CUDA when present, else the CPU; every path also runs on the CPU."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from schemas.errors import UserInputError


class DeviceError(UserInputError):
    """A configured device is not available on this machine."""


def resolve_device(device: str | torch.device = "auto", field: str = "device") -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU is an error naming `field`."""
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"{field} = {device!r} but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(device)


@contextlib.contextmanager
def tensor_cores(device: torch.device) -> Iterator[None]:
    """On CUDA, let float32 matmuls use TF32 tensor cores (~1e-3 relative error, far below seed-to-seed noise) for
    the duration of the block; the process-wide setting is restored afterwards. A no-op on the CPU."""
    if device.type != "cuda":
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
