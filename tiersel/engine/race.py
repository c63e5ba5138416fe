"""How the sync and async shells run a hedge (a `Race` effect): two sends, the first success wins.

The first request goes at once. The second goes when the first has not answered after the
race's delay (measured on the selector's clock), or as soon as the first fails with an error
worth another attempt (a shed, a rate limit, a server error, a timeout; not a 400 or a 401),
with the time left then as its timeout. The first success wins; when one fails, the other is
waited for. The loser still in flight is cancelled: the async shell cancels its task, which
closes its connection, so the provider stops generating and billing. A sync shell cannot
interrupt a request another thread is blocked in: its loser is left to finish in its thread and
closed unread, and the flow charges it its worst case.

An exception a racer's send raises (not a transport error, which the shells turn into a failed
reply) counts as that attempt's failure, so that the other's bill is still counted; an
interruption (``KeyboardInterrupt``, a cancelled task) ends the race at once.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tiersel.clock import Clock
from tiersel.engine.billing import classify_reply
from tiersel.engine.effects import Race, Raced, Send
from tiersel.engine.results import Reply

if TYPE_CHECKING:
    import asyncio

__all__ = ["race_async", "race_sync"]

_TIMER = -1
_TICK_S = 0.25
"""The longest a sync race's timer sleeps at a time (so its thread ends soon after the race)."""


def _ok(reply: Reply) -> bool:
    return 200 <= reply.status < 300 and not reply.timed_out and reply.error is None


def _failed(exc: Exception, elapsed: float) -> Reply:
    return Reply(0, {}, None, elapsed, error=f"{type(exc).__name__} raised by the send")


def _discard(reply: Reply) -> None:
    """Close a loser's response if it was left open."""
    raw = reply.raw
    close = getattr(raw, "close", None) or getattr(getattr(raw, "response", None), "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()


class _Referee:
    """The race's state: which requests went when, which answered how."""

    def __init__(self, effect: Race, clock: Clock) -> None:
        self.effect = effect
        self.clock = clock
        self.began = clock.now()
        self.sent_at: list[float | None] = [None, None]
        self.failed: dict[int, Reply] = {}

    def second(self) -> Send:
        """The second request, its timeout what is left of the first's when it goes."""
        second = self.effect.second
        if second.timeout_s is None:
            return second
        left = second.timeout_s - (self.clock.now() - self.began)
        return replace(second, timeout_s=max(left, 1e-3))

    def result(self, i: int, reply: Reply) -> Raced | None:
        """The race's end if ``reply`` (from request ``i``) ends it, else None: a success, a
        failure not worth another attempt, or the second of two failures."""
        other = 1 - i
        sent = self.sent_at[other] is not None
        if _ok(reply) or not classify_reply(reply).retryable:
            if other in self.failed:
                return Raced(i, reply, self.failed[other], True)
            started = self.sent_at[other]
            elapsed = self.clock.now() - started if started is not None else 0.0
            return Raced(i, reply, None, sent, elapsed)
        self.failed[i] = reply
        if other in self.failed:
            return Raced(i, reply, self.failed[other], True)
        return None


def race_sync(send: Callable[[Send], Reply], effect: Race, clock: Clock) -> Raced:
    """Run ``effect`` with a sync ``send``: each request in its own thread."""
    answers: queue.SimpleQueue[tuple[int, Reply | BaseException | None]] = queue.SimpleQueue()
    over = threading.Event()
    lock = threading.Lock()
    referee = _Referee(effect, clock)

    def attempt(i: int, request: Send) -> None:
        began = clock.now()
        try:
            reply = send(request)
        except Exception as exc:
            reply = _failed(exc, clock.now() - began)
        except BaseException as exc:  # handed to the caller's thread
            answers.put((i, exc))
            return
        with lock:
            if over.is_set():
                _discard(reply)  # the race ended without it
                return
            answers.put((i, reply))

    def timer() -> None:
        left = effect.after_s
        while left > 0 and not over.is_set():
            tick = min(left, _TICK_S)
            clock.sleep(tick)
            left -= tick
        if not over.is_set():
            answers.put((_TIMER, None))

    def start(i: int, request: Send) -> None:
        referee.sent_at[i] = clock.now()
        threading.Thread(target=attempt, args=(i, request), daemon=True).start()

    start(0, effect.first)
    threading.Thread(target=timer, daemon=True).start()
    try:
        while True:
            i, got = answers.get()
            if i == _TIMER:
                if referee.sent_at[1] is None:
                    start(1, referee.second())
                continue
            if isinstance(got, BaseException):
                raise got
            assert got is not None
            with lock:
                ended = referee.result(i, got)
                if ended is not None:
                    over.set()
                    return _uncancelled(ended)
            if referee.sent_at[1] is None:
                start(1, referee.second())  # the first failed fast: the second goes now
    finally:
        over.set()


def _uncancelled(raced: Raced) -> Raced:
    """A sync race's end: its loser still in flight was not cancelled."""
    if raced.other_sent and raced.other is None:
        return Raced(raced.winner, raced.reply, None, True, raced.other_elapsed_s, False)
    return raced


async def race_async(send: Callable[[Send], Awaitable[Reply]], effect: Race, clock: Clock) -> Raced:
    """Run ``effect`` with an async ``send``: each request a task, the loser cancelled."""
    import asyncio  # here: deciding and sync sends never load asyncio (tests/core/test_imports.py)

    referee = _Referee(effect, clock)
    tasks: dict[asyncio.Future[Any], int] = {}

    async def attempt(i: int, request: Send) -> Reply:
        referee.sent_at[i] = began = clock.now()  # set once the task runs: then it is sent
        try:
            return await send(request)
        except Exception as exc:
            return _failed(exc, clock.now() - began)

    def start(i: int, request: Send) -> None:
        tasks[asyncio.ensure_future(attempt(i, request))] = i

    start(0, effect.first)
    timer: asyncio.Future[Any] | None = asyncio.ensure_future(clock.asleep(effect.after_s))
    try:
        while True:
            waiting = set(tasks) | ({timer} if timer is not None else set())
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in [t for t in done if t in tasks]:  # answers first, then the timer
                i = tasks.pop(task)
                ended = referee.result(i, task.result())
                if ended is not None:
                    return ended
                if 1 not in tasks.values() and referee.sent_at[1] is None:
                    start(1, referee.second())  # the first failed fast: the second goes now
            if timer is not None and timer in done:
                timer = None
                if 1 not in tasks.values() and referee.sent_at[1] is None:
                    start(1, referee.second())
    finally:
        if timer is not None:
            timer.cancel()
        for task in tasks:
            task.cancel()
        if tasks:
            leftover = await asyncio.gather(*tasks, return_exceptions=True)
            for left in leftover:  # a loser that answered as the race ended: close it unread
                if isinstance(left, Reply):
                    _discard(left)
