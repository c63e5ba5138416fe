"""Fixtures for the store tests: a real redis-server, and every backend behind one sync face.

The suite starts its own ``redis-server`` on a free loopback port in a temp dir (once per
session), unless ``TIERSEL_TEST_REDIS_URL`` names one to use. A missing redis-server is a failure
with a clear message, never a skip.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tiersel.clock import FakeClock
from tiersel.signals import SignalConfig
from tiersel.stores import (
    open_async_ledger,
    open_async_signal_store,
    open_ledger,
    open_signal_store,
)

BACKENDS = ("memory", "memory-async", "redis", "redis-async")

# The contract tests' clock: every store runs on it (Redis stores opened with clock=caller), so
# a test moves time with `advance` instead of sleeping. It only ever moves forward; each test has
# fresh stores (in memory) or keys of its own (in Redis), so it needs no reset.
CLOCK = FakeClock(1_000_000.0)


def now() -> float:
    return CLOCK.now()


def advance(seconds: float) -> None:
    CLOCK.advance(seconds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start a throwaway redis-server on loopback; return it and its URL."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        pytest.fail(
            "redis-server not found (neither on PATH nor /usr/bin/redis-server): install it"
            " (apt-get install redis-server) or set TIERSEL_TEST_REDIS_URL=redis://host:port/db",
            pytrace=False,
        )
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"redis-server on port {port} did not start", pytrace=False)
            time.sleep(0.02)
        finally:
            client.close()
    return proc, url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis to test against: $TIERSEL_TEST_REDIS_URL, or our own redis-server."""
    given = os.environ.get("TIERSEL_TEST_REDIS_URL")
    if given:
        client = redis.Redis.from_url(given)
        try:
            client.ping()
        except redis.exceptions.RedisError as exc:
            pytest.fail(f"TIERSEL_TEST_REDIS_URL does not answer: {exc}", pytrace=False)
        finally:
            client.close()
        yield given
        return
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own, so tests never see each other's keys."""
    return f"test-{uuid.uuid4().hex[:12]}"


class Synced:
    """Any store with a sync face: async methods run to completion on the fixture's loop."""

    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        self.store = store
        self.loop = loop
        self.is_async = loop is not None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if self.loop is None or not inspect.iscoroutinefunction(attr):
            return attr
        loop = self.loop

        def call(*args: Any, **kwargs: Any) -> Any:
            return loop.run_until_complete(attr(*args, **kwargs))

        return call


class Backend:
    """Opens ledgers and signal stores of one backend, all sharing one namespace."""

    def __init__(self, kind: str, redis_url: str, prefix: str) -> None:
        self.kind = kind
        self.redis_url = redis_url
        self.prefix = prefix
        self.is_redis = kind.startswith("redis")
        self.is_async = kind.endswith("async")
        self.url = f"{redis_url}?prefix={prefix}&clock=caller" if self.is_redis else "memory://"
        self.loop = asyncio.new_event_loop() if self.is_async else None
        self._opened: list[Synced] = []
        self._first_ledger: Synced | None = None
        self._first_signals: Synced | None = None

    def ledger(
        self, limit_usd: float, *, reservation_ttl_s: float | None = None, **kw: Any
    ) -> Synced:
        """A ledger. In memory every call returns the first one (it is per process)."""
        if not self.is_redis and self._first_ledger is not None:
            return self._first_ledger
        opener: Callable[..., Any] = open_async_ledger if self.is_async else open_ledger
        store = Synced(
            opener(self.url, limit_usd=limit_usd, reservation_ttl_s=reservation_ttl_s, **kw),
            self.loop,
        )
        self._opened.append(store)
        self._first_ledger = self._first_ledger or store
        return store

    def signals(self, config: SignalConfig | None = None, **kw: Any) -> Synced:
        """A signal store. In memory every call returns the first one."""
        if not self.is_redis and self._first_signals is not None:
            return self._first_signals
        opener: Callable[..., Any] = open_async_signal_store if self.is_async else open_signal_store
        store = Synced(opener(self.url, config, **kw), self.loop)
        self._opened.append(store)
        self._first_signals = self._first_signals or store
        return store

    def fresh(self) -> Backend:
        """Another backend of this kind, in a namespace of its own (close it, or use ``with``)."""
        return Backend(self.kind, self.redis_url, f"{self.prefix}-{uuid.uuid4().hex[:8]}")

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for store in self._opened:
            closer = getattr(store.store, "aclose" if self.is_async else "close", None)
            if closer is not None:
                result = closer()
                if self.loop is not None and inspect.isawaitable(result):
                    self.loop.run_until_complete(result)
        if self.loop is not None:
            self.loop.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, prefix: str) -> Iterator[Backend]:
    """Each backend in turn; Redis ones in a namespace of this test's own."""
    url = request.getfixturevalue("redis_url") if request.param.startswith("redis") else ""
    b = Backend(request.param, url, prefix)
    try:
        yield b
    finally:
        b.close()
