"""Progress of long loops (training steps, gradient blocks, similarity chunks, clusterings), in the Prefect run log
(which the terminal shows too) with count, rate and ETA, at most one line every `interval` seconds.

    progress = Progress("train-shard", total=steps, unit="step")
    for step in ...:
        ...
        progress.update(1, loss=f"{loss:.3f}")
    progress.close()
"""
from __future__ import annotations

import logging
import time

from tqdm import tqdm


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow or task run, else this module's logger."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001  (outside a run: MissingContextError; or Prefect not set up)
        return logging.getLogger("quanta")


class Progress:
    """Logs `name: 120/1000 steps [00:03<00:25, 35.2 steps/s] loss=0.41` when `interval` seconds have passed since
    the last line, and always once at the end (formatting by tqdm's `format_meter`)."""

    def __init__(self, name: str, total: int | None, unit: str = "it", interval: float = 10.0, logger=None):
        self.name, self.total, self.unit, self.interval = name, total, unit, interval
        self.logger = logger if logger is not None else run_logger()
        self.n = 0
        self.start = self.last = time.monotonic()
        self.extra = ""

    def update(self, n: int = 1, **info) -> None:
        self.n += n
        if info:
            self.extra = " ".join(f"{k}={v}" for k, v in info.items())
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._log(now)

    def _log(self, now: float) -> None:
        meter = tqdm.format_meter(self.n, self.total, now - self.start, unit=f" {self.unit}s",
                                  bar_format="{n_fmt}/{total_fmt}{unit} [{elapsed}<{remaining}, {rate_fmt}]")
        self.logger.info("%s: %s%s", self.name, meter, f" {self.extra}" if self.extra else "")

    def close(self) -> None:
        self._log(time.monotonic())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
