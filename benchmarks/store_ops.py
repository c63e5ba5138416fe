"""Reserve+settle pairs per second through the budget ledgers, with many callers at once.

Each caller loops: reserve a worst case under a fresh call id, then settle a real cost below it.
The same loop runs on every backend in one run:

- ``redis asyncio``: `AsyncRedisLedger` (redis.asyncio), ``--callers`` tasks on one event loop;
- ``redis threads``: `RedisLedger` (redis-py), ``--callers`` threads;
- ``memory asyncio`` / ``memory threads``: the in-process ledger the same two ways (the baseline).

Redis is the one at ``--redis-url``, or else a redis-server this script starts on a free loopback
port (and stops). Target on the 2-core dev machine: >= 5,000 pairs/s on Redis.

    python benchmarks/store_ops.py [--redis-url URL] [--callers 64] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis

from tiersel.stores import open_async_ledger, open_ledger

TARGET_PAIRS_PER_S = 5_000
# Enough money that no reservation is ever refused: the benchmark measures the operations.
LIMIT_USD = 1e6


@contextlib.contextmanager
def redis_server(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(binary):
        sys.exit("redis-server not found: install it, or pass --redis-url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder],
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        try:
            for _ in range(500):
                try:
                    client.ping()
                    break
                except redis.exceptions.ConnectionError:
                    time.sleep(0.01)
            yield url
        finally:
            client.close()
            proc.terminate()
            proc.wait(10)


def run_async(url: str, callers: int, seconds: float, name: str) -> tuple[int, float]:
    async def main() -> tuple[int, float]:
        ledger: Any = open_async_ledger(url, limit_usd=LIMIT_USD, name=name)
        await ledger.state(0.0)  # connect and load the scripts before timing
        done = 0
        stop = time.perf_counter() + seconds

        async def caller(c: int) -> None:
            nonlocal done
            i = 0
            while time.perf_counter() < stop:
                cid = f"{c}-{i}"
                i += 1
                if await ledger.reserve(cid, 0.002, 0.0) is None:
                    raise RuntimeError("a reservation was refused")
                await ledger.settle(cid, 0.001, 0.0)
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(caller(c) for c in range(callers)))
        elapsed = time.perf_counter() - start
        state = await ledger.state(0.0)
        check(state, done)
        if hasattr(ledger, "aclose"):
            await ledger.aclose()
        return done, elapsed

    return asyncio.run(main())


def run_threads(url: str, callers: int, seconds: float, name: str) -> tuple[int, float]:
    ledger: Any = open_ledger(url, limit_usd=LIMIT_USD, name=name)
    ledger.state(0.0)
    counts = [0] * callers
    stop = time.perf_counter() + seconds

    def caller(c: int) -> None:
        i = 0
        while time.perf_counter() < stop:
            cid = f"{c}-{i}"
            i += 1
            if ledger.reserve(cid, 0.002, 0.0) is None:
                raise RuntimeError("a reservation was refused")
            ledger.settle(cid, 0.001, 0.0)
        counts[c] = i

    threads = [threading.Thread(target=caller, args=(c,)) for c in range(callers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    done = sum(counts)
    check(ledger.state(0.0), done)
    if hasattr(ledger, "close"):
        ledger.close()
    return done, elapsed


def check(state: Any, pairs: int) -> None:
    """Every pair settled: nothing left reserved, and the spend is exactly the pairs' cost."""
    if state.reserved_usd > 1e-9 or abs(state.spent_usd - pairs * 0.001) > 1e-6:
        raise RuntimeError(f"the ledger does not balance after {pairs} pairs: {state}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="a Redis to use (default: start one)")
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(
        f"callers: {args.callers}, {args.seconds:.1f} s per backend, cores: {os.cpu_count()},"
        f" load average before: {os.getloadavg()[0]:.2f}"
    )
    with redis_server(args.redis_url) as url:
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        redis_store = f"{url}{'&' if '?' in url else '?'}prefix={prefix}"
        runs = [
            ("redis asyncio", lambda: run_async(redis_store, args.callers, args.seconds, "a")),
            ("redis threads", lambda: run_threads(redis_store, args.callers, args.seconds, "t")),
            ("memory asyncio", lambda: run_async("memory://", args.callers, args.seconds, "a")),
            ("memory threads", lambda: run_threads("memory://", args.callers, args.seconds, "t")),
        ]
        figures: dict[str, float] = {}
        for label, go in runs:
            pairs, elapsed = go()
            figures[label] = pairs / elapsed
            rate = figures[label]
            print(f"{label:>15}: {pairs:>8} pairs in {elapsed:5.2f} s = {rate:>9,.0f} pairs/s")
        if args.redis_url is not None:  # our own server goes away with its keys
            client = redis.Redis.from_url(url)
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)
            client.close()
    print(f"load average after: {os.getloadavg()[0]:.2f} (the machine is shared)")
    best = max(figures["redis asyncio"], figures["redis threads"])
    verdict = "meets" if best >= TARGET_PAIRS_PER_S else "MISSES"
    print(
        f"redis best: {best:,.0f} pairs/s, {verdict} the target of {TARGET_PAIRS_PER_S:,};"
        f" memory asyncio is {figures['memory asyncio'] / figures['redis asyncio']:.1f}x"
        " redis asyncio"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
