"""A one-line progress bar on stderr while a job runs: lines done, spend against budget, tiers.

Drawn only on a terminal (and at most ten times a second); elsewhere it stays quiet, so logs and
pipes get the final summary alone.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tiersel.batch.summary import BatchSummary

__all__ = ["ProgressBar"]

_WIDTH = 24


class ProgressBar:
    """Redraws ``summary`` on ``stream``; ``enabled=None`` means "when it is a terminal".

    ``tick`` is the wall clock used only to limit redraws (the job's own clock may be virtual).
    """

    def __init__(
        self,
        summary: BatchSummary,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval_s: float = 0.1,
        tick: Callable[[], float] = time.monotonic,
    ) -> None:
        self.summary = summary
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self._interval = interval_s
        self._tick = tick
        self._last = float("-inf")
        self._drawn = False

    def update(self, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self._tick()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        self.stream.write("\r" + self.line() + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def line(self) -> str:
        """The bar's text."""
        s = self.summary
        done = s.rows
        share = done / s.lines if s.lines else 1.0
        filled = int(share * _WIDTH)
        bar = "#" * filled + "." * (_WIDTH - filled)
        served = sum(t.ok for t in s.by_tier.values())
        mix = " ".join(
            f"{name} {100.0 * t.ok / served:.0f}%"
            for name, t in sorted(s.by_tier.items(), key=lambda kv: -kv[1].ok)
            if served and t.ok
        )
        return (
            f"[{bar}] {done}/{s.lines}  ${s.spent_usd:.4f}/${s.budget_usd:.2f}"
            f"  ok {s.calls_ok} fail {s.calls_failed} exh {s.calls_budget_exhausted}"
            f" inv {s.calls_invalid}" + (f"  {mix}" if mix else "")
        )

    def close(self) -> None:
        """Draw the last state and end the line."""
        if self.enabled and self._drawn:
            self.update(force=True)
            self.stream.write("\n")
            self.stream.flush()
