"""Hedges over real HTTP: the openai SDK through the transports, against the simulator.

At 20x speed and calm, a 200-token call with a short prompt, an 8 s deadline and reliability 0.99
is planned as ``standard~fast`` (fast sent 4.8 simulated seconds after standard unless standard
has answered, which the priors give even odds; the simulator's standard is slower, so most race).
The simulator counts the requests whose client went away before their answer was due, so the
test sees each loser cancelled on the provider's side.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import httpx2
import openai
import pytest

import tiersel
from tests.transport.conftest import MODEL, Recorder
from tiersel.budget import MemoryLedger
from tiersel.clock import ScaledClock
from tiersel.sim.server import RunningServer
from tiersel.wrap import AsyncTierTransport, TierTransport, requirements

PROMPT = "Say hello."
# (No watched attempt: where one is cheaper, a hedge must beat it, and here it does not.)
HEDGED = {"deadline_s": 8.0, "reliability": 0.99, "hedge": True, "watch": False}


def _settled(server: RunningServer, want: int) -> int:
    """The server's count of cancelled requests, once it has seen ``want`` (a disconnect reaches
    it a moment after the client closes)."""
    for _ in range(100):
        seen = int(server.stats()["cancelled"])
        if seen >= want:
            return seen
        time.sleep(0.02)
    return int(server.stats()["cancelled"])


async def test_async_hedges_race_and_cancel_their_losers(
    calm: RunningServer, clock: ScaledClock
) -> None:
    recorder = Recorder()
    ledger = MemoryLedger(10.0)
    selector = tiersel.Selector(clock=clock, api_key="", ledger=ledger)
    async with httpx2.AsyncClient(transport=AsyncTierTransport(selector, on_call=recorder)) as h:
        client = openai.AsyncOpenAI(api_key="sk-test", base_url=calm.openai_base_url, http_client=h)

        async def one(i: int) -> str:
            await clock.asleep(i * 0.5)
            with requirements(**HEDGED):
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=200
                )
            return raw.headers["x-tiersel-tier"]

        served = await asyncio.gather(*(one(i) for i in range(24)))
    records = recorder.records
    assert len(records) == 24 and all(r.ok for r in records)
    # Planned on the priors as a hedge (later plans follow what the signals then saw).
    assert records[0].decisions[0].label == "standard~fast"
    raced = [r for r in records if "~" in r.decisions[0].label and len(r.tried) == 2]
    assert raced  # standard had not answered when fast went out
    assert {r.tried for r in raced} <= {("standard", "fast"), ("fast", "standard")}
    assert sorted(served) == sorted(str(r.tier) for r in records)  # x-tiersel-tier follows
    # (Not checked: each call within its 8 s. At 20x speed with tests running in parallel, a
    # busy event loop's lost milliseconds count twenty-fold; test_peak.py measures deadlines.)
    # Each race's loser was cancelled on the server, before its answer was due. At 20x a loser
    # whose answer falls due in the few real milliseconds between the winner's answer and the
    # close is served, not cancelled: on a loaded machine, one race in eight may end so.
    cancelled = _settled(calm, len(raced))
    assert len(raced) - len(raced) // 8 <= cancelled <= len(raced)
    assert ledger.state(clock.now()).spent_usd == pytest.approx(sum(r.cost_usd for r in records))
    assert ledger.state(clock.now()).reserved_usd == 0.0
    assert calm.stats()["hinted"] == 0


def test_sync_hedges_race_and_charge_the_uncancelled_loser_its_worst_case(
    calm: RunningServer, clock: ScaledClock
) -> None:
    recorder = Recorder()
    ledger = MemoryLedger(10.0)
    selector = tiersel.Selector(clock=clock, api_key="", ledger=ledger)
    threads = threading.active_count()
    with httpx.Client(transport=TierTransport(selector, on_call=recorder)) as h:
        client = openai.OpenAI(api_key="sk-test", base_url=calm.openai_base_url, http_client=h)
        for _ in range(12):
            with requirements(**HEDGED):
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=200
                )
        # A loser runs on in its own thread after its race: let the last ones end before the
        # client closes, which would close their connections (a cancel, on the server's count).
        # On a busy CI machine one was still running at the close.
        until = time.monotonic() + 30
        while threading.active_count() > threads and time.monotonic() < until:
            time.sleep(0.01)
    records = recorder.records
    assert len(records) == 12 and all(r.ok for r in records)
    assert records[0].decisions[0].label == "standard~fast"  # on the priors
    raced = [r for r in records if "~" in r.decisions[0].label and len(r.tried) == 2]
    assert raced
    uncancelled = 0
    for r in raced:
        lost = r.steps[0]
        served = tiersel.cost.charge(
            selector.pricing.model("kimi-k3"),
            r.steps[-1].tier,
            r.usage.prompt_tokens if r.usage else 0,
            r.usage.cached_tokens if r.usage else 0,
            r.usage.completion_tokens if r.usage else 0,
        )
        # The loser ran on (a sync shell cannot cancel it): charged its worst case; unless it
        # failed (a shed answers fast), when it is not billed.
        ran_on = r.cost_usd == pytest.approx(served + lost.worst_cost_usd)
        assert ran_on or r.cost_usd == pytest.approx(served)
        uncancelled += ran_on
    assert uncancelled > 0
    assert ledger.state(clock.now()).spent_usd == pytest.approx(sum(r.cost_usd for r in records))
    assert calm.stats()["cancelled"] == 0  # a sync loser runs to its end
