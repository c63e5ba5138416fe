"""OpenTelemetry (`tiersel.otel`): the SDK's in-memory exporter sees one ``tiersel.call`` span per
call, with a child per attempt, over real HTTP (the openai SDK through the transports, against
the simulator), and no credential anywhere."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import httpx2
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tiersel
from tests.transport.conftest import CANARY_KEY, MODEL
from tiersel.clock import ScaledClock
from tiersel.otel import TierselInstrumentor
from tiersel.sim.server import RunningServer
from tiersel.wrap import AsyncTierTransport, TierTransport, requirements

CALL_ATTRIBUTES = (
    "gen_ai.request.model",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "tiersel.tier",
    "tiersel.plan",
    "tiersel.p_success",
    "tiersel.cost_usd",
    "tiersel.outcome",
)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = TierselInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield exporter
    finally:
        instrumentor.uninstrument()


def _ask(client: openai.OpenAI, i: int) -> None:
    tight = i % 2 == 0
    with requirements(deadline_s=10 if tight else 600, reliability=0.99 if tight else None):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=30
        )


def _calls(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == "tiersel.call"]


async def test_ten_calls_are_ten_call_spans_with_their_attempts(
    exporter: InMemorySpanExporter, server: RunningServer, clock: ScaledClock
) -> None:
    server.reset(time_s=100.0)  # the peak: some calls climb, some attempts are shed
    ledger = tiersel.MemoryLedger(5.0)
    selector = tiersel.Selector(clock=clock, api_key=CANARY_KEY, ledger=ledger)
    with httpx.Client(transport=TierTransport(selector)) as http:
        client = openai.OpenAI(
            api_key=CANARY_KEY, base_url=server.openai_base_url, http_client=http
        )
        for i in range(5):
            _ask(client, i)
    async with httpx2.AsyncClient(transport=AsyncTierTransport(selector)) as http2:
        aclient = openai.AsyncOpenAI(
            api_key=CANARY_KEY, base_url=server.openai_base_url, http_client=http2
        )
        for i in range(5, 10):
            await aclient.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=30
            )
    spans = exporter.get_finished_spans()
    calls = _calls(exporter)
    assert len(calls) == 10
    for span in calls:
        attrs = span.attributes or {}
        assert all(a in attrs for a in CALL_ATTRIBUTES), sorted(attrs)
        assert attrs["gen_ai.request.model"] == "kimi-k3"
        assert attrs["tiersel.outcome"] == "ok"
        attempts = [
            s for s in spans if s.parent is not None and s.parent.span_id == span.context.span_id
        ]
        assert len(attempts) == attrs["tiersel.attempts"] >= 1
        assert attempts[-1].attributes["tiersel.tier"] == attrs["tiersel.tier"]  # type: ignore[index]
    assert sum(float(s.attributes["tiersel.cost_usd"]) for s in calls) == pytest.approx(  # type: ignore[index]
        ledger.state(clock.now()).spent_usd
    )
    # No credential in any span: names, attributes, events.
    text = repr([(s.name, dict(s.attributes or {}), s.events) for s in spans])
    assert CANARY_KEY not in text and "sk-canary" not in text


def test_uninstrument_stops_the_spans(exporter: InMemorySpanExporter, calm: RunningServer) -> None:
    selector = tiersel.Selector(api_key="sk-sim", clock=ScaledClock(0.05))
    with httpx.Client(transport=TierTransport(selector)) as http:
        client = openai.OpenAI(api_key="sk-sim", base_url=calm.openai_base_url, http_client=http)
        _ask(client, 1)
        assert len(_calls(exporter)) == 1
        TierselInstrumentor().uninstrument()
        _ask(client, 2)
    assert len(_calls(exporter)) == 1
    assert tiersel.Selector.run.__name__ == "run"
