"""A dependency-free progress bar for ``wait(progress=True)`` and ``zoserve watch``."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class ProgressBar:
    """Renders step/queries against the budget on one terminal line."""

    def __init__(self, total: int | None, unit: str, stream: TextIO | None = None, width: int = 30):
        self.total, self.unit, self.width = total, unit, width
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()
        self._last = 0.0

    def update(self, done: int, best: float | None, status: str = "running", force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        rate = done / max(now - self.t0, 1e-9)
        best_s = f" best={best:.6g}" if best is not None else ""
        if self.total:
            frac = min(1.0, done / self.total)
            bar = "#" * int(frac * self.width) + "-" * (self.width - int(frac * self.width))
            line = f"\r[{bar}] {done}/{self.total} {self.unit} {rate:.1f}/s{best_s} {status}"
        else:
            line = f"\r{done} {self.unit} {rate:.1f}/s{best_s} {status}"
        self.stream.write(line.ljust(80))
        self.stream.flush()

    def close(self, *_: Any) -> None:
        self.stream.write("\n")
        self.stream.flush()
