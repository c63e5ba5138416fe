"""Watched attempts through the doors (`tiersel.watch`, `tiersel.wrap.pace`): a streamed call's
first attempt held until its pace check, cut for a quicker tier when it would end too late, and
handed on whole when it keeps its pace; the real SDKs, over real HTTP and in process."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import httpx
import httpx2
import openai
import pytest

import tiersel
from tests.transport.conftest import ANTHROPIC, MODEL, Recorder, sync_http
from tiersel.budget import MemoryLedger
from tiersel.clock import Clock, FakeClock
from tiersel.dialects import Dialect
from tiersel.engine.effects import Watch
from tiersel.pricing import load_pricing
from tiersel.sim import AsyncSimTransport, SimTransport
from tiersel.sim.server import RunningServer
from tiersel.wrap import AsyncTierTransport, TierTransport
from tiersel.wrap.pace import PaceCheck

KIMI = load_pricing().model("kimi-k3")
_ASKED = itertools.count()


def _prompt() -> list[dict[str, str]]:
    """About 2,000 tokens, never sent before: a prompt the provider's cache cannot serve (these
    tests time an uncached prompt's prefill; the servers are shared)."""
    return [{"role": "user", "content": f"{next(_ASKED)} " + "x" * 6000}]


STRICT = {"deadline_s": 20, "reliability": 0.999}


def _words(chunks: Any) -> int:
    return len("".join(c.choices[0].delta.content or "" for c in chunks if c.choices).split())


@pytest.mark.parametrize("library", ["httpx", "httpx2"])
def test_a_stream_too_slow_for_its_deadline_is_cut_for_fast_over_real_http(
    calm: RunningServer, clock: Clock, recorder: Recorder, library: str
) -> None:
    # The simulator's standard generates 20-34 tokens/s as its pool is busy or idle: 700 would
    # end after 21 s, past the 20 s deadline; the watched first attempt is cut at its check,
    # and fast serves the call. (With 500, an idle pool's standard served it in 16 s: CI once.)
    ledger = MemoryLedger(limit_usd=1.0)
    selector = tiersel.Selector(api_key="", clock=clock, ledger=ledger)
    http = sync_http(library, selector, recorder)
    client = openai.OpenAI(api_key="sk-test", base_url=calm.openai_base_url, http_client=http)
    with tiersel.requirements(**STRICT):
        stream = client.chat.completions.create(
            model=MODEL, messages=_prompt(), max_tokens=700, stream=True
        )
        words = _words(stream)
    record = recorder.last
    assert record.ok and record.tier == "fast" and record.attempts == 2
    assert record.decision is not None and record.decision.label.startswith("standard^>fast")
    # The caller got the fast answer alone: none of the cut attempt's tokens.
    assert words == 700
    # The cut attempt is billed its prompt and the tokens it generated, with the fast answer.
    fast = KIMI.tiers["fast"]
    served = record.usage
    assert served is not None and served.completion_tokens == 700
    # (the prompt the cut attempt sent is in the provider's cache now: fast reads it there)
    alone = (
        served.uncached_tokens * fast.input_per_token
        + served.cached_tokens * fast.cached_input_per_token
        + 700 * fast.output_per_token
    )
    cut = record.cost_usd - alone
    std = KIMI.tiers["standard"]
    assert (
        2000 * std.input_per_token < cut < 2000 * std.input_per_token + 200 * std.output_per_token
    )
    state = ledger.state(clock.now())
    assert state.spent_usd == pytest.approx(record.cost_usd) and state.reserved_usd == 0.0
    assert calm.stats()["by_tier"]["standard"] == {"200": 1}  # (the cut one)


def _in_process(clock: FakeClock, recorder: Recorder, **kw: Any) -> openai.OpenAI:
    selector = tiersel.Selector(api_key="", clock=clock, **kw)
    transport = TierTransport(
        selector, SimTransport(scenario="calm", clock=clock), on_call=recorder
    )
    base = "https://api.fireworks.ai/inference/v1"
    return openai.OpenAI(api_key="x", base_url=base, http_client=httpx.Client(transport=transport))


def test_a_stream_that_keeps_its_pace_is_handed_on_whole(recorder: Recorder) -> None:
    # 400 tokens at about 25 tokens/s end near 17 s: the watched attempt is kept, and the caller
    # reads every token of it, the ones held for the check first.
    clock = FakeClock()
    client = _in_process(clock, recorder)
    with tiersel.requirements(**STRICT):
        stream = client.chat.completions.create(
            model=MODEL, messages=_prompt(), max_tokens=450, stream=True
        )
        words = _words(stream)
    record = recorder.last
    assert record.decision is not None and record.decision.plan[0].watch_s is not None
    assert record.ok and record.tier == "standard" and record.attempts == 1 and words == 450
    # Its first token's time is the one seen before the hold, not the hold's end.
    assert record.ttft_s is not None and record.ttft_s < record.decision.plan[0].watch_s


@pytest.mark.parametrize("out, tier, attempts", [(500, "fast", 2), (450, "standard", 1)])
def test_a_call_read_whole_is_watched_on_a_stream_and_handed_back_whole(
    recorder: Recorder, out: int, tier: str, attempts: int
) -> None:
    # The door asks upstream for a stream, watches its pace, and hands back the one body a
    # plain request would have got: the SDK parses a ChatCompletion with the whole answer.
    clock = FakeClock()
    client = _in_process(clock, recorder)
    with tiersel.requirements(**STRICT):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=_prompt(), max_tokens=out
        )
    done = raw.parse()
    assert raw.headers["content-type"] == "application/json"
    assert done.object == "chat.completion" and done.choices[0].finish_reason == "length"
    assert len((done.choices[0].message.content or "").split()) == out
    assert done.usage is not None and done.usage.completion_tokens == out
    record = recorder.last
    assert record.decision is not None and record.decision.plan[0].watch_s is not None
    assert record.ok and record.tier == tier and record.attempts == attempts
    # A cut attempt's bill is estimated from the tokens seen: the call's cost is then partly so.
    assert record.cost_basis.value == ("actual" if attempts == 1 else "estimate")


def test_every_dialect_read_whole_comes_back_whole_after_a_cut(recorder: Recorder) -> None:
    clock = FakeClock()
    client = _in_process(clock, recorder)
    with tiersel.requirements(**STRICT):
        text = client.completions.create(model=MODEL, prompt="p" * 6000, max_tokens=500)
        assert text.object == "text_completion" and len(text.choices[0].text.split()) == 500
        assert recorder.last.attempts == 2 and recorder.last.tier == "fast"
        response = client.responses.create(model=MODEL, input="r" * 6000, max_output_tokens=500)
        assert len(response.output_text.split()) == 500
        assert recorder.last.attempts == 2 and recorder.last.tier == "fast"


def test_an_async_stream_too_slow_is_cut_for_fast(recorder: Recorder) -> None:
    async def main() -> int:
        clock = FakeClock()
        selector = tiersel.Selector(api_key="", clock=clock)
        sim = AsyncSimTransport(scenario="calm", clock=clock)
        transport = AsyncTierTransport(selector, sim, on_call=recorder)
        async with httpx.AsyncClient(transport=transport) as http:
            client = openai.AsyncOpenAI(
                api_key="x", base_url="https://api.fireworks.ai/inference/v1", http_client=http
            )
            with tiersel.requirements(**STRICT):
                stream = await client.chat.completions.create(
                    model=MODEL, messages=_prompt(), max_tokens=500, stream=True
                )
                chunks = [c async for c in stream]
        return _words(chunks)

    assert asyncio.run(main()) == 500
    record = recorder.last
    assert record.ok and record.tier == "fast" and record.attempts == 2


@ANTHROPIC
def test_an_anthropic_call_too_slow_is_cut_for_fast_streamed_or_whole(recorder: Recorder) -> None:
    import anthropic

    clock = FakeClock()
    selector = tiersel.Selector(api_key="", clock=clock)
    transport = TierTransport(
        selector, SimTransport(scenario="calm", clock=clock), on_call=recorder
    )
    client = anthropic.Anthropic(
        api_key="sk-test",
        base_url="http://sim.test/inference",
        http_client=httpx2.Client(transport=transport),
    )
    with (
        tiersel.requirements(**STRICT),
        client.messages.stream(model=MODEL, max_tokens=500, messages=_prompt()) as stream,
    ):
        text = "".join(stream.text_stream)
    assert len(text.split()) == 500
    record = recorder.last
    assert record.ok and record.tier == "fast" and record.attempts == 2
    with tiersel.requirements(**STRICT):
        message = client.messages.create(model=MODEL, max_tokens=500, messages=_prompt())
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 500
    assert len(message.content[0].text.split()) == 500  # type: ignore[union-attr]
    assert recorder.last.tier == "fast" and recorder.last.attempts == 2


# -- the check, on its own ----------------------------------------------------------------------


def _event(text: str) -> bytes:
    doc = {"choices": [{"index": 0, "delta": {"content": text}}]}
    return f"data: {json.dumps(doc)}\n\n".encode()


def test_the_check_waits_for_its_time_and_two_tokens_then_projects_the_end() -> None:
    watch = Watch(at_s=2.0, finish_by_s=10.0, tokens=101, tps=50.0)
    check = PaceCheck(watch, Dialect.openai, sent_at=100.0)
    assert check.feed(_event("one"), 101.0) is None  # the first token, at 1 s
    assert check.feed(_event(" two three"), 101.5) is None  # before the check's time
    # 11 tokens by 2 s, a token each 0.1 s: 90 more end at 11 s, past 10 s: cut.
    assert check.feed(_event(" a b c d e f g h"), 102.0) is False
    assert check.tokens == 11 and check.first == 1.0 and check.last == 2.0
    quick = PaceCheck(watch, Dialect.openai, sent_at=100.0)
    quick.feed(_event("one"), 101.0)
    # 21 tokens by 2 s, a token each 0.05 s: ends at 6 s: kept.
    assert quick.feed(_event(" w" * 20), 102.0) is True
    # An event split across chunks counts once it is whole.
    split = PaceCheck(watch, Dialect.openai, sent_at=0.0)
    whole = _event("a b")
    assert split.feed(whole[:7], 0.5) is None and split.tokens == 0
    assert split.feed(whole[7:], 0.6) is None and split.tokens == 2
