"""The Responses API and text completions through the transports, over real HTTP against
``tiersel sim serve --scenario peak``: the openai SDK's ``responses.create`` (plain and streamed,
sync and async) and ``completions.create`` get a tier chosen per call, as chat completions do,
and the ledger and the ``x-tiersel-*`` headers follow what was served.

The calls run late in the peak's busy spell (scenario time 280-303 s: standard shed about 90% of
the time, until the spell eases from 300 s), so tight calls escalate and loose ones wait out the
sheds in little time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

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

PROMPT = "hello " * 200  # about 300 prompt tokens
TIGHT = {"deadline_s": 10.0, "reliability": 0.99}
LOOSE = {"deadline_s": 120.0}  # two minutes: time to wait out the spell on standard
CALLS = 24  # alternately tight and loose, one a simulated second
START_S = 280.0


@dataclass(frozen=True)
class Seen:
    """One call as its caller saw it: the headers tiersel added, and the text it read."""

    tight: bool
    call_id: str
    tier: str = ""
    cost_usd: float = 0.0
    basis: str = ""
    text: str = ""
    failed: bool = False


def _responses_kwargs(stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL,
        "input": [{"role": "user", "content": PROMPT}],
        "instructions": "Answer briefly.",
        "max_output_tokens": 60,
        "stream": stream,
    }


def _read(parsed: Any, stream: bool) -> str:
    if not stream:
        return str(parsed.output_text)
    events = list(parsed)
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete")
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


async def _aread(parsed: Any, stream: bool) -> str:
    if not stream:
        return str(parsed.output_text)
    events = [e async for e in parsed]
    assert events[-1].type in ("response.completed", "response.incomplete")
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def _seen(tight: bool, raw: Any, text: str) -> Seen:
    h = raw.headers
    cost = float(h["x-tiersel-cost-usd"])
    return Seen(
        tight, h["x-tiersel-call-id"], h["x-tiersel-tier"], cost, h["x-tiersel-cost-basis"], text
    )


def _check(
    server: RunningServer, seen: list[Seen], recorder: Recorder, ledger: MemoryLedger
) -> None:
    by_id = {r.call_id: r for r in recorder.records}
    assert len(seen) == CALLS and len(by_id) == CALLS
    # Tight calls each asked for 0.99: more than 2 failures of 12 is a 0.02% event; loose ones
    # have ten minutes, and none may fail. A failed call is not billed (sheds are free).
    failed = [s for s in seen if s.failed]
    assert len(failed) <= 2 and all(s.tight for s in failed), failed
    assert all(not by_id[s.call_id].ok and by_id[s.call_id].cost_usd == 0 for s in failed)
    for s in seen:
        if s.failed:
            continue
        record = by_id[s.call_id]
        assert record.ok and s.text, record
        assert s.tier == str(record.tier)  # x-tiersel-tier follows
        if s.basis == "actual":
            assert s.cost_usd == pytest.approx(record.cost_usd, abs=1e-9)
        else:  # a stream's headers leave before its usage: they carry an estimate
            assert s.basis in ("estimate", "worst_case") and s.cost_usd > 0
        assert record.usage is not None and record.usage.completion_tokens > 0
        # The usage the shape reports was read; the cost is an estimate only where the call
        # also paid for an attempt given up on (a race's loser, on a loaded machine).
        basis = record.cost_basis.value
        assert basis == "actual" or (basis == "estimate" and record.attempts > 1), record
    tight = [by_id[s.call_id] for s in seen if s.tight]
    loose = [by_id[s.call_id] for s in seen if not s.tight]
    assert all(r.requirements.reliability == 0.99 for r in tight)
    assert all(r.requirements.deadline_s == LOOSE["deadline_s"] for r in loose)
    assert len({t for r in tight for t in r.tried}) > 1, [r.tried for r in tight]
    assert all(set(r.tried) == {"standard"} for r in loose), [r.tried for r in loose]
    state = ledger.state(0.0)
    assert state.spent_usd == pytest.approx(sum(r.cost_usd for r in recorder.records))
    assert state.reserved_usd == 0.0
    stats = server.stats()
    assert stats["by_status"].get("503", 0) > 0, "the spell should have shed something"
    assert stats["hinted"] == 0 and stats["priority_with_router"] == 0


def _warm_up(server: RunningServer) -> None:
    """One plain and one streamed call, straight to the server, so that the SDK's one-off costs
    of a first call (building its response and event models, about a second) fall outside the
    timed calls: at 20x simulated speed they would eat 20 s of a 10 s deadline."""
    client = openai.OpenAI(api_key="sk-test", base_url=server.openai_base_url, max_retries=9)
    client.responses.create(model=MODEL, input="hi", max_output_tokens=5)
    list(client.responses.create(model=MODEL, input="hi", max_output_tokens=5, stream=True))
    client.completions.create(model=MODEL, prompt="hi", max_tokens=5)
    list(client.completions.create(model=MODEL, prompt="hi", max_tokens=5, stream=True))


def _setup(
    server: RunningServer, clock: ScaledClock
) -> tuple[Recorder, MemoryLedger, tiersel.Selector]:
    # Calm first: the warm-up's calls go to standard with the SDK's own retries, which wait
    # between tries; in the busy spell (where another test may have left the server) its four
    # calls took 13 s.
    server.reset(time_s=0.0)
    _warm_up(server)
    server.reset(time_s=START_S)
    recorder = Recorder()
    ledger = MemoryLedger(10.0)
    return recorder, ledger, tiersel.Selector(clock=clock, api_key="", ledger=ledger)


def _streamed(i: int) -> bool:
    """Calls 0 and 1 plain, 2 and 3 streamed, and so on: tight and loose calls of both kinds."""
    return (i // 2) % 2 == 1


def _sync_calls(
    server: RunningServer, clock: ScaledClock, http: Any, call: Callable[[Any, bool], Any]
) -> list[Seen]:
    """`CALLS` calls from threads, one a simulated second; ``call(client, stream)`` makes one
    and returns its raw response and the text read from it."""
    client = openai.OpenAI(api_key="sk-test", base_url=server.openai_base_url, http_client=http)
    start = clock.now()

    def one(i: int) -> Seen:
        clock.sleep(start + i - clock.now())
        tight, stream = i % 2 == 0, _streamed(i)
        with requirements(**(TIGHT if tight else LOOSE)):
            try:
                raw, text = call(client, stream)
            except openai.APIStatusError as exc:
                return Seen(tight, exc.response.headers["x-tiersel-call-id"], failed=True)
            return _seen(tight, raw, text)

    with ThreadPoolExecutor(CALLS) as pool:
        return list(pool.map(one, range(CALLS)))


def _responses_call(client: openai.OpenAI, stream: bool) -> tuple[Any, str]:
    raw = client.responses.with_raw_response.create(**_responses_kwargs(stream))
    return raw, _read(raw.parse(), stream)


def _completions_call(client: openai.OpenAI, stream: bool) -> tuple[Any, str]:
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt=PROMPT, max_tokens=60, stream=stream
    )
    parsed = raw.parse()
    if stream:
        return raw, "".join(c.choices[0].text for c in parsed if c.choices)
    return raw, parsed.choices[0].text


@pytest.mark.slow
def test_sync_responses_get_a_tier_per_call(server: RunningServer, clock: ScaledClock) -> None:
    recorder, ledger, selector = _setup(server, clock)
    with httpx.Client(transport=TierTransport(selector, on_call=recorder)) as http:
        seen = _sync_calls(server, clock, http, _responses_call)
    _check(server, seen, recorder, ledger)


@pytest.mark.slow
def test_async_responses_get_a_tier_per_call(server: RunningServer, clock: ScaledClock) -> None:
    recorder, ledger, selector = _setup(server, clock)

    async def main() -> list[Seen]:
        transport = AsyncTierTransport(selector, on_call=recorder)
        async with httpx2.AsyncClient(transport=transport) as http:
            client = openai.AsyncOpenAI(
                api_key="sk-test", base_url=server.openai_base_url, http_client=http
            )
            start = clock.now()

            async def one(i: int) -> Seen:
                await clock.asleep(start + i - clock.now())
                tight, stream = i % 2 == 0, _streamed(i)
                with requirements(**(TIGHT if tight else LOOSE)):
                    try:
                        raw = await client.responses.with_raw_response.create(
                            **_responses_kwargs(stream)
                        )
                    except openai.APIStatusError as exc:
                        return Seen(tight, exc.response.headers["x-tiersel-call-id"], failed=True)
                    return _seen(tight, raw, await _aread(raw.parse(), stream))

            return list(await asyncio.gather(*(one(i) for i in range(CALLS))))

    _check(server, asyncio.run(main()), recorder, ledger)


@pytest.mark.slow
def test_text_completions_get_a_tier_per_call(server: RunningServer, clock: ScaledClock) -> None:
    recorder, ledger, selector = _setup(server, clock)
    with httpx2.Client(transport=TierTransport(selector, on_call=recorder)) as http:
        seen = _sync_calls(server, clock, http, _completions_call)
    _check(server, seen, recorder, ledger)
