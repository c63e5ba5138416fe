"""Injected time. Logic reads ``clock.now()``. Only the shells that receive replies read the wall
clock, to date an error reply (a Retry-After may be an HTTP date, `tiersel.engine.Reply`)."""

from __future__ import annotations

import math
import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "ScaledClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Monotonic seconds, and a way to wait (sync and async)."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    async def asleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real monotonic clock."""

    __slots__ = ()

    # The monotonic clock itself, not a method calling it: read several times a call, and a
    # Python frame around it costs more than the reading.
    now = staticmethod(time.monotonic)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        import asyncio  # here, not at import: `import tiersel` does not load asyncio

        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeClock:
    """A clock that only moves when told to; sleeping advances it at once.

    >>> clock = FakeClock()
    >>> clock.sleep(2.5); clock.now()
    2.5
    """

    __slots__ = ("_lock", "_now")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        if not math.isfinite(self._now):
            raise ValueError(f"FakeClock: start must be a finite time, got {start!r}")
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        _finite(seconds)
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards ({seconds} s)")
        with self._lock:
            self._now += seconds
            return self._now

    def sleep(self, seconds: float) -> None:
        """Advance the clock by ``seconds`` (a wait of no time, or less, is none)."""
        _finite(seconds)
        self.advance(max(0.0, seconds))

    async def asleep(self, seconds: float) -> None:
        """On a `tiersel.virtual_time.VirtualTimeLoop` driven by this clock, wait ``seconds`` of
        virtual time (concurrent waits overlap; the loop moves the clock). Anywhere else, advance
        the clock at once and let the other tasks run: simple for one task, but concurrent sleeps
        then add up."""
        _finite(seconds)
        if seconds <= 0:
            return  # nothing to wait for: no yield to the loop either
        import asyncio

        loop = asyncio.get_running_loop()
        if getattr(loop, "clock", None) is self:
            await asyncio.sleep(seconds)
        else:
            self.advance(seconds)
            await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now})"


def _finite(seconds: float) -> None:
    """A NaN or infinite time moved a `FakeClock` to a time every later decision failed on
    ("cannot convert float NaN to integer"), naming neither the clock nor the input."""
    if not math.isfinite(seconds):
        raise ValueError(f"FakeClock: cannot move by {seconds!r} s: give a finite time")


class ScaledClock:
    """The system's monotonic clock, read in the time of a server running ``1 / scale`` times
    faster (the simulator's ``--time-scale``): ``now()`` is simulated seconds and ``sleep(s)``
    waits ``s * scale`` real seconds.

    >>> ScaledClock(0.5).now() > 0
    True
    """

    __slots__ = ("scale",)

    def __init__(self, scale: float) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.scale = float(scale)

    def now(self) -> float:
        return time.monotonic() / self.scale

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds * self.scale)

    async def asleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(max(0.0, seconds * self.scale))

    def __repr__(self) -> str:
        return f"ScaledClock({self.scale})"
