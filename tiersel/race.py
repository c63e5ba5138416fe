"""How the sync and async shells run a hedge (a `Race` effect): two sends, the first success wins.

The first request goes at once. The second goes when the first has not answered after the
race's delay (measured on the selector's clock), or as soon as the first fails. The first
success wins; when one fails, the other is waited for. The loser still in flight is cancelled:
the async shell cancels its task, which closes its connection, so the provider stops generating
and billing. A sync shell cannot interrupt a request another thread is blocked in; its loser
is left to finish in its thread and closed unread, and the flow charges it its worst case.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tiersel.clock import Clock
from tiersel.dispatch import Race, Raced, Reply, Send

if TYPE_CHECKING:
    import asyncio

__all__ = ["race_async", "race_sync"]

_TIMER = -1


def _ok(reply: Reply) -> bool:
    return 200 <= reply.status < 300 and not reply.timed_out and reply.error is None


def _discard(reply: Reply) -> None:
    """Close a loser's response if it was left open (a stream)."""
    close = getattr(reply.raw, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()


class _Referee:
    """The race's state: which requests went when, which answered how."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent_at: list[float | None] = [None, None]
        self.failed: dict[int, Reply] = {}

    def result(self, i: int, reply: Reply) -> Raced | None:
        """The race's end if ``reply`` (from request ``i``) ends it, else None."""
        other = 1 - i
        sent = self.sent_at[other] is not None
        if _ok(reply):
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

    def attempt(i: int, request: Send) -> None:
        try:
            reply = send(request)
        except BaseException as exc:  # handed to the caller's thread
            answers.put((i, exc))
            return
        with lock:
            if over.is_set():
                _discard(reply)  # the race ended without it
                return
            answers.put((i, reply))

    def timer() -> None:
        clock.sleep(effect.after_s)
        answers.put((_TIMER, None))

    referee = _Referee(clock)

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
                    start(1, effect.second)
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
                start(1, effect.second)  # the first failed fast: the second goes now
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

    referee = _Referee(clock)
    tasks: dict[asyncio.Future[Any], int] = {}

    def start(i: int, request: Send) -> None:
        referee.sent_at[i] = clock.now()
        tasks[asyncio.ensure_future(send(request))] = i

    start(0, effect.first)
    timer: asyncio.Future[Any] | None = asyncio.ensure_future(clock.asleep(effect.after_s))
    try:
        while True:
            waiting = set(tasks) | ({timer} if timer is not None else set())
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if timer is not None and timer in done:
                done.discard(timer)
                timer = None
                if referee.sent_at[1] is None:
                    start(1, effect.second)
            for task in done:
                if task not in tasks:
                    continue
                i = tasks.pop(task)
                ended = referee.result(i, task.result())
                if ended is not None:
                    return ended
                if referee.sent_at[1] is None:
                    start(1, effect.second)  # the first failed fast: the second goes now
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
