"""An asyncio event loop on virtual time: concurrent sleeps overlap, and when every task waits on
a timer the clock jumps to the next one, so an hour of simulated traffic runs in seconds and
still runs as it would have in real time.

>>> import asyncio
>>> from tiersel.clock import FakeClock
>>> clock = FakeClock()
>>> async def nap() -> None:
...     await clock.asleep(1.0)
>>> async def main() -> float:
...     await asyncio.gather(*(nap() for _ in range(64)))
...     return clock.now()
>>> run_virtual(main(), clock)  # 64 one-second sleeps at once take one virtual second
1.0

The loop's time is its `FakeClock`'s: ``loop.time()``, ``asyncio.sleep``, ``asyncio.wait_for``
and ``clock.asleep`` all read and wait on the same virtual seconds, and the clock only moves
when nothing else can run. Real work is waited for in real time with the clock stopped:

- work in a thread (``run_in_executor``, ``asyncio.to_thread``: the batch journal's fsyncs) holds
  the clock until it ends;
- a network round trip inside `real_io` (a Redis store's) runs at real speed: while one is in
  flight the clock moves no faster than real time, so a reply that takes 30 ms under load comes
  30 ms of the clock later, not after a jump to its socket timeout;
- otherwise, while sockets are open on the loop, a reply already on its way is given
  `SOCKET_GRACE_S` of real time to arrive before the clock jumps.

Without such a loop a `FakeClock` advances at each ``asleep`` in turn, so 64 tasks waiting 1 s
each move it 64 s: see `FakeClock.asleep`.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from tiersel.clock import FakeClock

__all__ = ["SOCKET_GRACE_S", "VirtualTimeLoop", "real_io", "run_virtual"]

T = TypeVar("T")

# Real seconds a loop with open sockets waits for I/O before it moves the clock.
SOCKET_GRACE_S = 0.002


class _VirtualSelector(selectors.DefaultSelector):
    """The platform's selector, but a wait for a timer moves the clock instead of blocking."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        loop = self.loop
        if ready or loop is None or (timeout is not None and timeout <= 0):
            return ready
        if timeout is None or loop.real_work:
            # No timer, or a thread still working: wait for the real world (a thread's end
            # wakes the loop through its self-pipe), with the clock stopped.
            return super().select(None)
        if loop.real_io:
            # A round trip in flight: the next timer comes after as much real time (a socket
            # timeout fires when the server really is that slow).
            ready = super().select(timeout)
            if not ready:
                loop.clock.advance(timeout)
            return ready
        if len(self.get_map()) > 1:  # sockets besides the loop's own self-pipe
            ready = super().select(SOCKET_GRACE_S)
            if ready:
                return ready
        loop.clock.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose time is ``clock``'s, and which moves ``clock`` to the next timer when
    every task waits (see the module's docstring)."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock if clock is not None else FakeClock()
        self.real_work = 0  # executor jobs in flight
        self.real_io = 0  # round trips in flight (`real_io`)
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self.clock.now()

    def run_in_executor(  # type: ignore[override]
        self, executor: Any, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.real_work += 1
        future.add_done_callback(self._real_work_done)
        return future

    def _real_work_done(self, _future: asyncio.Future[Any]) -> None:
        self.real_work -= 1


@contextmanager
def real_io() -> Iterator[None]:
    """Mark a network round trip: on a `VirtualTimeLoop`, the clock moves no faster than real
    time until it ends (see the module's docstring); elsewhere, nothing."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if not isinstance(loop, VirtualTimeLoop):
        yield
        return
    loop.real_io += 1
    try:
        yield
    finally:
        loop.real_io -= 1


def run_virtual(main: Coroutine[Any, Any, T], clock: FakeClock | None = None) -> T:
    """Run ``main`` to its end on a new `VirtualTimeLoop` over ``clock`` (as `asyncio.run` does
    on a real one), and return its result."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(clock)) as runner:
        return runner.run(main)
