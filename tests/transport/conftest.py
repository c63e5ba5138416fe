"""Fixtures for the transport tests: one simulator server (real HTTP, loopback) per session.

The server runs the ``peak`` scenario 20 times faster than real time (``TIME_SCALE``): the
scenario is calm (no shedding) from 0 s to 60 s and sheds standard heavily from 90 s to 300 s.
Tests move its clock where they need it with ``server.reset(time_s=...)``; a selector on
``ScaledClock(TIME_SCALE)`` reads the same simulated seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import httpx2
import pytest

import tiersel
from tiersel.clock import ScaledClock
from tiersel.sim.server import RunningServer, serve_in_subprocess
from tiersel.wrap import AsyncTierTransport, CallRecord, TierTransport

TIME_SCALE = 0.05
MODEL = "accounts/fireworks/models/kimi-k3"
CANARY_KEY = "sk-canary-7f3c9e21-DO-NOT-LEAK"
ANTHROPIC = pytest.mark.xdist_group("anthropic")
"""The anthropic SDK takes 1.5 s to import: the tests that use it import it when they run, and
run in one pytest-xdist worker (--dist loadgroup), so the other workers never import it."""


@pytest.fixture(scope="session")
def server() -> Iterator[RunningServer]:
    with serve_in_subprocess("peak", time_scale=TIME_SCALE, seed=3) as running:
        yield running


@pytest.fixture
def calm(server: RunningServer) -> RunningServer:
    """The server, its stats cleared and its clock at the start of the calm stretch."""
    server.reset(time_s=0.0)
    return server


@pytest.fixture
def clock() -> ScaledClock:
    return ScaledClock(TIME_SCALE)


class Recorder:
    """Collects the `CallRecord` of every routed call (an ``on_call`` hook)."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def __call__(self, record: CallRecord) -> None:
        self.records.append(record)

    @property
    def last(self) -> CallRecord:
        assert self.records, "no call was recorded"
        return self.records[-1]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


HttpClients = dict[str, Callable[[Any], Any]]

SYNC_CLIENTS: HttpClients = {
    "httpx": lambda transport: httpx.Client(transport=transport),
    "httpx2": lambda transport: httpx2.Client(transport=transport),
}
ASYNC_CLIENTS: HttpClients = {
    "httpx": lambda transport: httpx.AsyncClient(transport=transport),
    "httpx2": lambda transport: httpx2.AsyncClient(transport=transport),
}


def sync_http(library: str, selector: tiersel.Selector, recorder: Recorder | None = None) -> Any:
    """An ``httpx`` or ``httpx2`` client with a `TierTransport` mounted."""
    return SYNC_CLIENTS[library](TierTransport(selector, on_call=recorder))


def async_http(library: str, selector: tiersel.Selector, recorder: Recorder | None = None) -> Any:
    """An ``httpx`` or ``httpx2`` async client with an `AsyncTierTransport` mounted."""
    return ASYNC_CLIENTS[library](AsyncTierTransport(selector, on_call=recorder))
