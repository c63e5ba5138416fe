"""The virtual-time event loop: concurrent sleeps overlap, time jumps only when every task waits."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from tiersel.clock import FakeClock
from tiersel.virtual_time import VirtualTimeLoop, run_virtual


def test_64_tasks_sleeping_one_second_finish_at_one_second() -> None:
    clock = FakeClock()
    ends: list[float] = []

    async def nap() -> None:
        await clock.asleep(1.0)
        ends.append(clock.now())

    async def main() -> None:
        await asyncio.gather(*(nap() for _ in range(64)))

    started = time.perf_counter()
    run_virtual(main(), clock)
    assert ends == [1.0] * 64
    assert clock.now() == 1.0
    assert time.perf_counter() - started < 30  # virtual: no real second per sleep


def test_on_another_loop_a_fake_clock_still_advances_at_once() -> None:
    """Outside its virtual loop, `FakeClock.asleep` keeps its old meaning (sleeps add up)."""
    clock = FakeClock()

    async def main() -> None:
        await asyncio.gather(*(clock.asleep(1.0) for _ in range(4)))

    asyncio.run(main())
    assert clock.now() == 4.0


def test_timers_fire_in_order_and_the_clock_stops_at_each() -> None:
    clock = FakeClock(100.0)
    seen: list[tuple[str, float]] = []

    async def at(name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        seen.append((name, clock.now()))

    async def main() -> None:
        await asyncio.gather(at("c", 30), at("a", 0.5), at("b", 2))

    run_virtual(main(), clock)
    assert seen == [("a", 100.5), ("b", 102.0), ("c", 130.0)]


def test_wait_for_times_out_in_virtual_seconds() -> None:
    clock = FakeClock()

    async def main() -> float:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(3600), timeout=5)
        return clock.now()

    assert run_virtual(main(), clock) == pytest.approx(5.0)


def test_the_clock_waits_for_work_in_a_thread() -> None:
    """A thread's work takes no virtual time, and no timer fires while it runs."""
    clock = FakeClock()
    order: list[str] = []

    def work() -> float:
        time.sleep(0.05)
        order.append("thread done")
        return clock.now()

    async def timer() -> None:
        await asyncio.sleep(1.0)
        order.append("timer")

    async def main() -> float:
        t = asyncio.create_task(timer())
        at = await asyncio.to_thread(work)
        await t
        return at

    assert run_virtual(main(), clock) == 0.0
    assert order == ["thread done", "timer"]
    assert clock.now() == 1.0


def test_a_reply_on_a_socket_arrives_before_the_clock_jumps() -> None:
    """With a socket open, a reply already on its way is read before the next timer fires."""
    clock = FakeClock()
    a, b = socket.socketpair()

    def answer_soon() -> None:
        b.send(b"pong")

    async def main() -> tuple[bytes, float]:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(sock=a)
        threading.Thread(target=answer_soon).start()
        timeout = loop.create_task(asyncio.sleep(10))
        data = await reader.readexactly(4)
        at = clock.now()
        timeout.cancel()
        writer.close()
        return data, at

    try:
        data, at = run_virtual(main(), clock)
    finally:
        b.close()
    assert data == b"pong"
    assert at == 0.0


def test_the_loop_reports_virtual_time() -> None:
    clock = FakeClock(7.0)
    loop = VirtualTimeLoop(clock)
    try:
        assert loop.time() == 7.0
        assert loop.run_until_complete(asyncio.sleep(2.5, result="done")) == "done"
        assert loop.time() == clock.now() == 9.5
    finally:
        loop.close()
