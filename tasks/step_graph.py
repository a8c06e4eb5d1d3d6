"""A training step replayed as one CUDA graph: one launch per step instead of one per kernel (the sparse-parity grid
step makes ~70 small launches, which bound it on a GPU).

`StepGraph(fn, device)` calls `fn(*static)` on static input buffers: each call copies its inputs into them, runs
`warmup` eager steps (on a side stream on CUDA, as torch.cuda.graph asks), then captures one step and replays it
for every later call. `fn` must be graph-safe: no host synchronisation, the same shapes every call, persistent
state updated in place (a fused AdamW with capturable=True). On the CPU nothing is captured: every call runs
`fn(*static)` eagerly on the same static buffers, so the CPU path exercises the buffer handling (tests compare it
with plain steps).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class StepGraph:
    def __init__(self, fn: Callable[..., None], device: torch.device, warmup: int = 3,
                 keep: Callable[[], list] | None = None):
        """keep: returns tensors the captured step reads or writes besides its inputs and the module's parameters
        (e.g. workspaces held in a cache that may drop them later): they stay referenced while the graph lives, so
        their memory is never handed to another tensor."""
        self.fn, self.device, self.warmup, self.keep = fn, torch.device(device), warmup, keep
        self.static: list[torch.Tensor] | None = None
        self.graph = None
        self.kept: list = []
        self.calls = 0

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, inputs: Sequence[torch.Tensor]) -> None:
        if self.static is None:
            self.static = [x.clone() for x in inputs]
        else:
            for s, x in zip(self.static, inputs):
                s.copy_(x)
        self.calls += 1
        if self.device.type != "cuda":
            self.fn(*self.static)
        elif self.graph is None and self.calls <= self.warmup:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.fn(*self.static)
            torch.cuda.current_stream(self.device).wait_stream(side)
        else:
            if self.graph is None:
                self.kept = list(self.keep()) if self.keep else []
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):  # records the step; nothing runs yet
                    self.fn(*self.static)
            self.graph.replay()
