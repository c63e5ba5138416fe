"""Streamed replies: passed on as they come, measured on the way, charged when they end.

The end-to-end tests here use the simulator's in-process transport on a `FakeClock` shared with
the selector, so simulated latencies are measured exactly and nothing waits.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import httpx2
import numpy as np
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tiersel
import tiersel.wrap.watchdog
from tests.transport.conftest import ANTHROPIC, MODEL, Recorder
from tiersel.budget import MemoryLedger
from tiersel.clock import FakeClock
from tiersel.dialects import Dialect, Usage
from tiersel.signals import Outcome, SignalKey
from tiersel.sim import AsyncSimTransport, SimTransport
from tiersel.wrap import AsyncTierTransport, CostBasis, TierTransport
from tiersel.wrap.streaming import StreamMeter

# -- the meter, on its own ----------------------------------------------------------------------


def _sse(doc: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(doc)}\n\n".encode()


def _chunk(content: str | None, usage: dict[str, int] | None = None) -> dict[str, Any]:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    return {"object": "chat.completion.chunk", "choices": choices, "usage": usage}


USAGE = {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
OPENAI_EVENTS = [
    _sse(_chunk("")),
    *(_sse(_chunk(w)) for w in ("a", " b", " c", " d")),
    _sse(_chunk(None, USAGE)),
    b"data: [DONE]\n\n",
]
OPENAI_STREAM = b"".join(OPENAI_EVENTS)
ANTHROPIC_STREAM = b"".join(
    [
        _sse(
            {
                "type": "message_start",
                "message": {"usage": {"input_tokens": 30, "output_tokens": 1}},
            },
            "message_start",
        ),
        _sse({"type": "content_block_start", "index": 0}, "content_block_start"),
        *(
            _sse({"type": "content_block_delta", "delta": {"text": w}}, "content_block_delta")
            for w in ("a", " b", " c")
        ),
        _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        _sse({"type": "message_delta", "usage": {"output_tokens": 3}}, "message_delta"),
        _sse({"type": "message_stop"}, "message_stop"),
    ]
)


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _run(meter: StreamMeter, pieces: list[bytes]) -> bytes:
    return b"".join(meter.feed(p) for p in pieces) + meter.flush()


@given(st.lists(st.integers(min_value=0), max_size=40), st.booleans())
def test_openai_stream_is_read_whatever_the_chunking(cuts: list[int], crlf: bool) -> None:
    data = OPENAI_STREAM.replace(b"\n", b"\r\n") if crlf else OPENAI_STREAM
    clock = FakeClock()
    passed = StreamMeter(Dialect.openai, clock, 0.0)
    assert _run(passed, _pieces(data, cuts)) == data  # handed on byte for byte
    dropped = StreamMeter(Dialect.openai, clock, 0.0, drop_usage_only=True)
    usage_event = OPENAI_EVENTS[-2].replace(b"\n", b"\r\n") if crlf else OPENAI_EVENTS[-2]
    assert _run(dropped, _pieces(data, cuts)) == data.replace(usage_event, b"")
    for meter in (passed, dropped):
        assert meter.finished
        usage = meter.usage()
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (12, 4)
        end = meter.end(exhausted=True)
        assert end.outcome is Outcome.ok and not end.usage_estimated


@given(st.lists(st.integers(min_value=0), max_size=40))
def test_anthropic_usage_is_merged_from_start_and_delta(cuts: list[int]) -> None:
    meter = StreamMeter(Dialect.anthropic, FakeClock(), 0.0)
    assert _run(meter, _pieces(ANTHROPIC_STREAM, cuts)) == ANTHROPIC_STREAM
    assert meter.finished and meter.content_events == 3
    usage = meter.usage()
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (30, 3)


def test_timings_come_from_the_stream() -> None:
    clock = FakeClock(100.0)
    meter = StreamMeter(Dialect.openai, clock, sent_at=100.0)
    clock.advance(0.5)
    meter.feed(OPENAI_EVENTS[0])  # role only: no token yet
    clock.advance(0.25)
    meter.feed(OPENAI_EVENTS[1])  # first token, at 0.75 s
    for event in OPENAI_EVENTS[2:]:
        clock.advance(0.1)
        meter.feed(event)
    end = meter.end(exhausted=True)
    assert end.ttft_s == pytest.approx(0.75)
    # 4 tokens: 3 after the first, in the 0.3 s between the first and the last content chunk.
    assert end.output_tps == pytest.approx(3 / 0.3)
    assert end.elapsed_s == pytest.approx(0.75 + 0.5)


def test_a_stream_cut_short_is_a_failure_and_its_tokens_are_estimated() -> None:
    meter = StreamMeter(Dialect.openai, FakeClock(), 0.0, input_tokens=lambda: 99)
    for event in OPENAI_EVENTS[:3]:
        meter.feed(event)
    end = meter.end(broke=httpx.RemoteProtocolError("peer closed"))
    assert end.outcome is Outcome.error
    assert end.detail.startswith("the stream broke: RemoteProtocolError")
    assert end.usage_estimated and end.usage is not None
    assert (end.usage.prompt_tokens, end.usage.completion_tokens) == (99, 2)


def test_a_stream_cut_short_counts_the_tokens_of_events_that_carry_several() -> None:
    # Anthropic's text deltas often carry several tokens: counting events undercounted what a
    # stream closed early had been billed (a simulator's 64-token chunks: 4 counted of ~200).
    sentence = "The quick brown fox jumps over the lazy dog, then it naps in the warm sun. "
    meter = StreamMeter(Dialect.anthropic, FakeClock(), 0.0, input_tokens=lambda: 10)
    for _ in range(3):
        delta = {"type": "content_block_delta", "delta": {"type": "text_delta", "text": sentence}}
        meter.feed(_sse({"index": 0, **delta}, "content_block_delta"))
    end = meter.end()
    assert end.usage_estimated and end.usage is not None
    # 3 x 74 bytes of text at 4 bytes a token, less what the smallest event's share hides.
    assert 3 * 15 <= end.usage.completion_tokens <= 3 * 19, end.usage
    # One token an event stays one token an event.
    single = StreamMeter(Dialect.openai, FakeClock(), 0.0, input_tokens=lambda: 10)
    for word in ("a", " bb", " c", " dddd", " e"):
        single.feed(_sse(_chunk(word)))
    assert single.end().usage == Usage(10, 0, 5)


def test_an_error_event_in_the_stream_is_a_failure() -> None:
    meter = StreamMeter(Dialect.anthropic, FakeClock(), 0.0)
    meter.feed(_sse({"type": "error", "error": {"type": "overloaded_error"}}, "error"))
    end = meter.end(exhausted=True)
    assert end.outcome is Outcome.shed
    assert "overloaded_error" in end.detail


# -- end to end, on the simulator in process ----------------------------------------------------


@pytest.fixture
def breaking(tmp_path: Path) -> Path:
    path = tmp_path / "breaking.yaml"
    path.write_text("name: breaking\nerrors: {stream_break_rate: 1.0}\n", encoding="utf-8")
    return path


def _setup(
    scenario: str | Path, recorder: Recorder
) -> tuple[tiersel.Selector, MemoryLedger, openai.OpenAI, SimTransport]:
    clock = FakeClock()
    ledger = MemoryLedger(1.0)
    selector = tiersel.Selector(clock=clock, ledger=ledger, api_key="", max_attempts=1)
    sim = SimTransport(scenario=scenario, clock=clock)
    http = httpx.Client(transport=TierTransport(selector, sim, on_call=recorder))
    client = openai.OpenAI(
        api_key="sk-test", base_url="http://sim.test/inference/v1", http_client=http
    )
    return selector, ledger, client, sim


def _stream(client: openai.OpenAI, tokens: int = 40) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=tokens, stream=True
    )


def test_a_complete_stream_is_measured_and_charged(recorder: Recorder) -> None:
    _, ledger, client, _ = _setup("calm", recorder)
    raw = _stream(client)
    assert recorder.records == []  # nothing is recorded before the stream ends
    assert ledger.state(0).reserved_usd > 0  # its worst case is held meanwhile
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse())
    assert len(text.split()) == 40
    record = recorder.last
    assert record.ok and record.cost_basis is CostBasis.actual
    # On the shared fake clock, the measured time to first token is the simulated one.
    assert record.ttft_s == pytest.approx(float(raw.headers["x-sim-ttft-s"]))
    state = ledger.state(0)
    assert state.reserved_usd == 0 and state.spent_usd == pytest.approx(record.cost_usd)


def test_a_broken_stream_is_a_failure_and_what_arrived_is_charged(
    breaking: Path, recorder: Recorder
) -> None:
    selector, ledger, client, _ = _setup(breaking, recorder)
    raw = _stream(client)
    got = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in raw.parse():
            got.append(chunk.choices[0].delta.content)
    assert got  # part of the answer came through before the break
    record = recorder.last
    assert not record.ok and record.detail.startswith("the stream broke: RemoteProtocolError")
    assert record.cost_basis is CostBasis.estimate and record.cost_usd > 0
    assert record.usage is not None and 0 < record.usage.completion_tokens < 40
    state = ledger.state(0)
    assert state.reserved_usd == 0 and state.spent_usd == pytest.approx(record.cost_usd)
    stats = selector.signals.stats(SignalKey("fireworks", "kimi-k3", "standard"), 0)
    assert stats.error == 1 and stats.ok == 0


def test_a_stream_closed_early_is_charged_for_what_came(recorder: Recorder) -> None:
    _, ledger, client, _ = _setup("calm", recorder)
    stream = _stream(client, tokens=200).parse()
    next(iter(stream))
    stream.close()
    record = recorder.last
    assert record.ok and record.detail.startswith("closed by the caller")
    assert record.cost_basis is CostBasis.estimate
    assert ledger.state(0).spent_usd == pytest.approx(record.cost_usd)


URL = "http://sim.test/inference/v1/chat/completions"
STREAM_BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 200,
    "stream": True,
}


def _plain(
    recorder: Recorder,
) -> tuple[MemoryLedger, httpx.Client]:
    clock = FakeClock()
    ledger = MemoryLedger(1.0)
    selector = tiersel.Selector(clock=clock, ledger=ledger, api_key="", max_attempts=1)
    sim = SimTransport(scenario="calm", clock=clock)
    return ledger, httpx.Client(transport=TierTransport(selector, sim, on_call=recorder))


def test_a_stream_dropped_unclosed_is_settled_at_the_next_call(recorder: Recorder) -> None:
    # A plain httpx caller reads one chunk of a streamed reply, then drops the response without
    # closing it (an SDK's stream closes itself when dropped: generators are closed on collection).
    ledger, http = _plain(recorder)
    response = http.send(http.build_request("POST", URL, json=STREAM_BODY), stream=True)
    assert next(response.iter_bytes())
    del response
    gc.collect()
    # Nothing is reported from the garbage collector itself; the worst case is still held.
    held = ledger.state(0).reserved_usd
    assert recorder.records == [] and held > 0
    http.post(URL, json={**STREAM_BODY, "max_tokens": 5})
    dropped, complete = recorder.records
    assert dropped.ok and dropped.streamed
    assert dropped.detail.startswith("dropped by the caller, unclosed")
    # Its connection was never closed, so the provider generated (and bills) the whole answer:
    # the call is charged its worst case, what was held for it, not the one chunk it read.
    assert dropped.cost_basis is CostBasis.worst_case
    assert dropped.cost_usd == pytest.approx(held)
    assert complete.ok and complete.cost_basis is CostBasis.actual
    state = ledger.state(0)
    assert state.reserved_usd == 0
    assert state.spent_usd == pytest.approx(dropped.cost_usd + complete.cost_usd)
    # A stream that ended is never reported again, however it is dropped and whenever drained.
    ended = http.send(http.build_request("POST", URL, json=STREAM_BODY), stream=True)
    ended.read()
    del ended
    gc.collect()
    http.close()
    assert len(recorder.records) == 3 and ledger.state(0).reserved_usd == 0


def test_a_stream_dropped_unread_is_settled_when_the_transport_closes(
    recorder: Recorder,
) -> None:
    ledger, http = _plain(recorder)
    response = http.send(http.build_request("POST", URL, json=STREAM_BODY), stream=True)
    del response
    gc.collect()  # httpx's response and its bound stream refer to each other: a cycle
    held = ledger.state(0).reserved_usd
    assert recorder.records == [] and held > 0
    http.close()
    assert recorder.last.detail.startswith("dropped by the caller")
    # Nothing was read, but the request was sent and never cancelled: its worst case is charged.
    assert recorder.last.cost_basis is CostBasis.worst_case
    assert ledger.state(0).reserved_usd == 0
    assert ledger.state(0).spent_usd == pytest.approx(recorder.last.cost_usd) == pytest.approx(held)


def test_a_stream_open_when_its_transport_closes_is_settled_by_the_close(
    recorder: Recorder,
) -> None:
    # Closing the client closes the transport and the stream's connection: no later call would
    # report the stream, so the close does, charging what it read (found by a new user's probe:
    # the reservation stayed held for good, and nothing was reported, when the stream was
    # dropped after the close).
    ledger, http = _plain(recorder)
    response = http.send(http.build_request("POST", URL, json=STREAM_BODY), stream=True)
    chunks = response.iter_bytes()
    assert next(chunks)
    held = ledger.state(0).reserved_usd
    assert recorder.records == [] and held > 0
    http.close()
    (closed,) = recorder.records
    assert closed.ok and closed.streamed
    assert closed.detail.startswith("its transport was closed before the end of the stream")
    assert closed.cost_basis is CostBasis.estimate and 0 < closed.cost_usd < held
    state = ledger.state(0)
    assert state.reserved_usd == 0 and state.spent_usd == pytest.approx(closed.cost_usd)
    # Read on, dropped and collected afterwards, it is not reported or charged again.
    for _ in chunks:
        pass
    del response, chunks
    gc.collect()
    assert len(recorder.records) == 1 and ledger.state(0).spent_usd == state.spent_usd


def test_an_async_stream_open_when_its_transport_closes_is_settled_by_the_close(
    recorder: Recorder,
) -> None:
    async def main() -> MemoryLedger:
        clock = FakeClock()
        ledger = MemoryLedger(1.0)
        selector = tiersel.Selector(clock=clock, ledger=ledger, api_key="", max_attempts=1)
        sim = AsyncSimTransport(scenario="calm", clock=clock)
        http = httpx.AsyncClient(transport=AsyncTierTransport(selector, sim, on_call=recorder))
        response = await http.send(http.build_request("POST", URL, json=STREAM_BODY), stream=True)
        async for _ in response.aiter_bytes():
            break
        assert recorder.records == [] and ledger.state(0).reserved_usd > 0
        await http.aclose()
        assert len(recorder.records) == 1
        del response
        gc.collect()
        return ledger

    ledger = asyncio.run(main())
    (closed,) = recorder.records
    assert closed.detail.startswith("its transport was closed before the end of the stream")
    assert closed.cost_basis is CostBasis.estimate
    state = ledger.state(0)
    assert state.reserved_usd == 0 and state.spent_usd == pytest.approx(closed.cost_usd)


def test_an_sdk_stream_closed_by_the_garbage_collector_is_reported_after_it(
    recorder: Recorder,
) -> None:
    # The openai SDK's stream closes its response when it is collected. Dropped in a reference
    # cycle, that happens inside a collection, which may run while this thread holds the
    # ledger's lock: the end is queued (as a dropped stream) and reported at the next call.
    _, ledger, client, _ = _setup("calm", recorder)
    stream = _stream(client, tokens=200).parse()
    next(iter(stream))
    cycle: dict[str, Any] = {"stream": stream}
    cycle["self"] = cycle
    del stream, cycle
    gc.collect()
    assert recorder.records == [] and ledger.state(0).reserved_usd > 0
    for _ in _stream(client, tokens=5).parse():
        pass
    dropped, complete = recorder.records  # reported once, after the collection
    assert dropped.detail.startswith("dropped by the caller") and complete.detail == "ok"
    assert ledger.state(0).reserved_usd == 0


def test_an_async_stream_dropped_unclosed_is_settled_at_the_next_call(recorder: Recorder) -> None:
    async def main() -> MemoryLedger:
        clock = FakeClock()
        ledger = MemoryLedger(1.0)
        selector = tiersel.Selector(clock=clock, ledger=ledger, api_key="", max_attempts=1)
        sim = AsyncSimTransport(scenario="calm", clock=clock)
        transport = AsyncTierTransport(selector, sim, on_call=recorder)
        async with httpx.AsyncClient(transport=transport) as http:
            request = http.build_request("POST", URL, json=STREAM_BODY)
            response = await http.send(request, stream=True)
            del response
            gc.collect()
            assert recorder.records == [] and ledger.state(0).reserved_usd > 0
            await http.post(URL, json={**STREAM_BODY, "max_tokens": 5})
            assert len(recorder.records) == 2  # settled on the way in, not at the close
        return ledger

    ledger = asyncio.run(main())
    dropped, complete = recorder.records
    assert dropped.detail.startswith("dropped by the caller") and dropped.streamed
    assert dropped.cost_basis is CostBasis.worst_case
    assert complete.ok and complete.streamed
    state = ledger.state(0)
    assert state.reserved_usd == 0
    assert state.spent_usd == pytest.approx(dropped.cost_usd + complete.cost_usd)


@ANTHROPIC
def test_an_async_broken_anthropic_stream(breaking: Path, recorder: Recorder) -> None:
    import anthropic

    async def main() -> None:
        clock = FakeClock()
        selector = tiersel.Selector(clock=clock, api_key="", max_attempts=1)
        sim = AsyncSimTransport(scenario=breaking, clock=clock)
        transport = AsyncTierTransport(selector, sim, on_call=recorder)
        # An httpx2 client (the anthropic SDK takes no other) over an httpx transport.
        async with httpx2.AsyncClient(transport=transport) as http:
            client = anthropic.AsyncAnthropic(
                api_key="sk-test", base_url="http://sim.test/inference", http_client=http
            )
            stream = await client.messages.create(
                model=MODEL,
                max_tokens=40,
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
            )
            # anthropic 2.16 passes a broken stream's error on as it is (the httpx2 error, though
            # the transport underneath is httpx's, since the client is httpx2); 2.17 wraps it in
            # its own APIConnectionError.
            with pytest.raises((httpx2.RemoteProtocolError, anthropic.APIConnectionError)):
                async for _ in stream:
                    pass

    asyncio.run(main())
    record = recorder.last
    assert not record.ok and record.streamed
    # The input tokens came in message_start; the output is counted from the chunks that came.
    assert record.usage is not None and record.usage.prompt_tokens > 0
    assert record.cost_basis is CostBasis.estimate


# -- a stream that outlives its reservation's expiry ---------------------------------------------

LONG_STREAM = {**STREAM_BODY, "max_tokens": 300}
STEP_S = 20.0  # of the test's clock between two chunks read: a stream of many minutes


def _held_after(clock: FakeClock, ledger: MemoryLedger) -> float:
    """What the ledger holds `STEP_S` after a chunk was read (before the next is)."""
    clock.advance(STEP_S)
    return ledger.state(clock.now()).reserved_usd


def _check_long_stream(
    recorder: Recorder, ledger: MemoryLedger, clock: FakeClock, held: list[float]
) -> None:
    # The stream ran well past the 30 s expiry, and its reservation never lapsed: no other call
    # could have reserved that money while it was still being generated.
    assert clock.now() > 10 * 30.0, clock.now()
    assert held[0] > 0 and all(h == pytest.approx(held[0]) for h in held), held
    (done,) = recorder.records
    assert done.ok and done.streamed and done.cost_basis is CostBasis.actual
    state = ledger.state(clock.now())
    assert state.reserved_usd == 0 and state.overrun_usd == 0
    assert state.spent_usd == pytest.approx(done.cost_usd)


@pytest.mark.parametrize(
    "ttl", [30.0, Fraction(30), np.float32(30.0)], ids=["float", "fraction", "numpy"]
)
def test_a_stream_longer_than_the_ledgers_expiry_keeps_its_reservation(
    recorder: Recorder, ttl: Any
) -> None:
    # (An expiry of any real number type: a numpy float once failed an assertion in the door,
    # after the request was sent, with its worst case left reserved.)
    clock = FakeClock()
    ledger = MemoryLedger(1.0, reservation_ttl_s=ttl)
    selector = tiersel.Selector(clock=clock, ledger=ledger, api_key="", max_attempts=1)
    sim = SimTransport(scenario="calm", clock=clock)
    held: list[float] = []
    http = httpx.Client(transport=TierTransport(selector, sim, on_call=recorder))
    with http, http.stream("POST", URL, json=LONG_STREAM) as response:
        for _ in response.iter_bytes():
            held.append(_held_after(clock, ledger))
    _check_long_stream(recorder, ledger, clock, held)


@pytest.mark.parametrize("awaited", [False, True], ids=["sync-ledger", "async-ledger"])
def test_an_async_stream_longer_than_the_ledgers_expiry_keeps_its_reservation(
    recorder: Recorder, awaited: bool
) -> None:
    from tiersel.stores.memory import AsyncMemoryLedger

    clock = FakeClock()
    ledger = MemoryLedger(1.0, reservation_ttl_s=30.0)
    used = AsyncMemoryLedger(ledger) if awaited else ledger
    selector = tiersel.Selector(clock=clock, ledger=used, api_key="", max_attempts=1)
    sim = AsyncSimTransport(scenario="calm", clock=clock)
    held: list[float] = []

    async def main() -> None:
        transport = AsyncTierTransport(selector, sim, on_call=recorder)
        http = httpx.AsyncClient(transport=transport)
        async with http, http.stream("POST", URL, json=LONG_STREAM) as response:
            async for _ in response.aiter_bytes():
                held.append(_held_after(clock, ledger))

    asyncio.run(main())
    _check_long_stream(recorder, ledger, clock, held)


class RenewalsFail(MemoryLedger):
    """A ledger (of a caller's own, say) whose renewals fail: every reserve after the first."""

    def reserve(
        self, call_id: str, amount_usd: float, now: float, ttl_s: float | None = None
    ) -> Any:
        if getattr(self, "reserved", False):
            raise ConnectionError("the budget service went away")
        self.reserved = True
        return super().reserve(call_id, amount_usd, now, ttl_s)


def test_a_failing_renewal_is_logged_once_and_the_stream_goes_on(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    # A renewal is upkeep: an error from it (here not tiersel's own StoreUnavailable) broke the
    # caller's stream, which was recorded as broken while upstream was healthy.
    clock = FakeClock()
    ledger = RenewalsFail(1.0, reservation_ttl_s=30.0)
    selector = tiersel.Selector(clock=clock, ledger=ledger, api_key="", max_attempts=1)
    sim = SimTransport(scenario="calm", clock=clock)
    http = httpx.Client(transport=TierTransport(selector, sim, on_call=recorder))
    watching = caplog.at_level("WARNING", logger="tiersel.engine")
    with watching, http, http.stream("POST", URL, json=LONG_STREAM) as response:
        for _ in response.iter_bytes():
            clock.advance(STEP_S)
    (done,) = recorder.records
    assert done.ok and done.detail == "ok" and done.cost_basis is CostBasis.actual
    warned = [r.getMessage() for r in caplog.records if "renew" in r.getMessage()]
    assert len(warned) == 1 and "ConnectionError: the budget service went away" in warned[0]
    assert ledger.state(clock.now()).reserved_usd == 0


def test_a_stream_read_on_after_its_transport_closed_renews_nothing(recorder: Recorder) -> None:
    # Closing the transport settled the call: a renewal after that would hold its money again,
    # with no settle to come, until the reservation's expiry.
    clock = FakeClock()
    ledger = MemoryLedger(1.0, reservation_ttl_s=30.0)
    selector = tiersel.Selector(clock=clock, ledger=ledger, api_key="", max_attempts=1)
    sim = SimTransport(scenario="calm", clock=clock)
    transport = TierTransport(selector, sim, on_call=recorder)
    http = httpx.Client(transport=transport)
    with http.stream("POST", URL, json=LONG_STREAM) as response:
        chunks = response.iter_raw()
        next(chunks)
        transport.close()
        assert len(recorder.records) == 1
        for _ in chunks:
            clock.advance(STEP_S)
            assert ledger.state(clock.now()).reserved_usd == 0


@pytest.mark.parametrize(
    ("pause_s", "read_first"),
    [(0.0, 3), (400.0, 3), (400.0, 0)],
    ids=["at-once", "after", "before"],
)
def test_a_stream_closed_after_a_pause_is_charged_what_was_generated_by_the_close(
    recorder: Recorder, pause_s: float, read_first: int
) -> None:
    # An agent reads a few chunks of a long answer, does other work while the provider goes on
    # generating, then closes the stream: the provider bills all it generated by the close
    # (helper-29: charged \$0.0204 for a stream the simulator billed \$0.1201; five such calls
    # went 2.4 times past a \$0.25 cap). Closed at once, it is charged about what it read.
    clock = FakeClock()
    ledger = MemoryLedger(1.0)
    selector = tiersel.Selector(clock=clock, ledger=ledger, api_key="", max_attempts=1)
    sim = SimTransport(scenario="calm", clock=clock)
    http = httpx.Client(transport=TierTransport(selector, sim, on_call=recorder), timeout=600)
    body = {**STREAM_BODY, "max_tokens": 3000}
    with http, http.stream("POST", URL, json=body) as response:
        chunks = response.iter_raw()
        for _ in range(read_first):
            next(chunks)
        clock.advance(pause_s)  # (a reader that begins late sees its first token late)
        for _ in range(3 - read_first):
            next(chunks)
    (closed,) = recorder.records
    billed = sim.stats()["billed_usd"]
    assert closed.cost_basis is CostBasis.estimate and closed.usage is not None
    assert ledger.state(clock.now()).spent_usd == pytest.approx(closed.cost_usd)
    assert closed.cost_usd >= billed  # never less than the provider's bill
    if pause_s:
        assert closed.usage.completion_tokens == 3000  # all of it was generated by the close
    else:
        assert closed.usage.completion_tokens < 500 and closed.cost_usd < 2 * billed


class CountedLedger(MemoryLedger):
    """A ledger that counts its reservations (so a test can wait for a renewal)."""

    reserves = 0

    def reserve(
        self, call_id: str, amount_usd: float, now: float, ttl_s: float | None = None
    ) -> Any:
        self.reserves += 1
        return super().reserve(call_id, amount_usd, now, ttl_s)


def _renewed(ledger: CountedLedger, seen: int) -> None:
    """Wait (real time, at most 10 s) for the watchdog's next renewal after ``seen``."""
    deadline = time.monotonic() + 10
    while ledger.reserves <= seen and time.monotonic() < deadline:
        time.sleep(0.005)
    assert ledger.reserves > seen, "no renewal came"


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_stream_its_reader_leaves_unread_keeps_its_reservation(
    recorder: Recorder, asynchronous: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An agent reads one chunk, then works for minutes before reading on: with renewals only
    # as chunks pass, the reservation lapsed at its 30 s expiry while the provider generated
    # the answer (helper-29: another call's stream was granted the money, overrun $0.08).
    monkeypatch.setattr(tiersel.wrap.watchdog, "TICK_S", 0.005)
    clock = FakeClock()
    ledger = CountedLedger(1.0, reservation_ttl_s=30.0)
    selector = tiersel.Selector(clock=clock, ledger=ledger, api_key="", max_attempts=1)
    held: list[float] = []

    def pause() -> None:  # eight steps of 20 s: 160 s unread, past five expiries' worth
        for _ in range(8):
            seen = ledger.reserves
            clock.advance(STEP_S)
            _renewed(ledger, seen)
            held.append(ledger.state(clock.now()).reserved_usd)

    if asynchronous:

        async def main() -> None:
            sim = AsyncSimTransport(scenario="calm", clock=clock)
            http = httpx.AsyncClient(transport=AsyncTierTransport(selector, sim, on_call=recorder))
            async with http, http.stream("POST", URL, json=LONG_STREAM) as response:
                chunks = response.aiter_raw()
                await anext(chunks)
                await asyncio.to_thread(pause)  # the loop stays free to run the renewals
                async for _ in chunks:
                    pass

        asyncio.run(main())
    else:
        sim = SimTransport(scenario="calm", clock=clock)
        http = httpx.Client(transport=TierTransport(selector, sim, on_call=recorder))
        with http, http.stream("POST", URL, json=LONG_STREAM) as response:
            chunks = response.iter_raw()
            next(chunks)
            pause()
            for _ in chunks:
                pass
    assert held[0] > 0 and all(h == pytest.approx(held[0]) for h in held), held
    (done,) = recorder.records
    state = ledger.state(clock.now())
    assert done.ok and state.reserved_usd == 0 and state.overrun_usd == 0


def test_a_stream_that_stalls_and_times_out_is_charged_what_came(recorder: Recorder) -> None:
    # The provider generated nothing while it stalled: a broken stream is charged the tokens
    # it showed, not its pace over the time its client waited (that charged its whole cap).
    clock = FakeClock()
    token = b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": "w "}}]}).encode()

    class Stalling(httpx.SyncByteStream):
        def __iter__(self) -> Any:
            for _ in range(50):
                clock.advance(0.01)
                yield token + b"\n\n"
            clock.advance(60.0)
            raise httpx.ReadTimeout("stalled")

    def upstream(request: httpx.Request) -> httpx.Response:
        clock.advance(0.5)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Stalling())

    selector = tiersel.Selector(clock=clock, ledger=MemoryLedger(1.0), api_key="", max_attempts=1)
    http = httpx.Client(
        transport=TierTransport(selector, httpx.MockTransport(upstream), on_call=recorder)
    )
    body = {**STREAM_BODY, "max_tokens": 3000}
    with http, http.stream("POST", URL, json=body) as response, pytest.raises(httpx.ReadTimeout):
        for _ in response.iter_raw():
            pass
    (broke,) = recorder.records
    assert not broke.ok and broke.usage is not None and broke.usage.completion_tokens == 50
