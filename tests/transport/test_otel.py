"""OpenTelemetry (`tiersel.otel`): the SDK's in-memory exporter sees one ``tiersel.call`` span per
call, with a child per attempt, over real HTTP (the openai SDK through the transports, against
the simulator), and no credential anywhere."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import httpx
import httpx2
import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import tiersel
import tiersel.engine
from tests.core.test_hedge import BODY as HEDGE_BODY
from tests.core.test_hedge import Reservations, Upstream
from tests.core.test_hedge import _selector as hedging_selector
from tests.transport.conftest import CANARY_KEY, MODEL
from tiersel.budget import MemoryLedger
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


def _span_text(spans: Sequence[ReadableSpan]) -> str:
    """Everything the spans say: names, attributes, events and their attributes, statuses."""
    return repr(
        [
            (
                s.name,
                dict(s.attributes or {}),
                [(e.name, dict(e.attributes or {})) for e in s.events],
                s.status.description,
            )
            for s in spans
        ]
    )


def _calls(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == "tiersel.call"]


async def test_ten_calls_are_ten_call_spans_with_their_attempts(
    exporter: InMemorySpanExporter, server: RunningServer, clock: ScaledClock
) -> None:
    server.reset(time_s=100.0)  # the peak: some calls climb, some attempts are shed
    ledger = MemoryLedger(5.0)
    selector = tiersel.Selector(clock=clock, api_key=CANARY_KEY, ledger=ledger)
    with httpx.Client(transport=TierTransport(selector)) as http:
        client = openai.OpenAI(
            api_key=CANARY_KEY, base_url=server.openai_base_url, http_client=http
        )
        for i in range(0, 10, 2):
            _ask(client, i)  # tight: a loose call at the peak may wait out a spell of sheds
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
    text = _span_text(spans)
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
    assert tiersel.engine.Engine.run.__name__ == "run"


def test_the_attempt_span_is_current_while_it_is_sent(exporter: InMemorySpanExporter) -> None:
    # The HTTP client's own spans (opentelemetry-instrumentation-httpx) nest under the attempt.
    seen: list[tuple[str, bool]] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        span = trace.get_current_span()
        seen.append((getattr(span, "name", ""), span.get_span_context().is_valid))
        usage = {"prompt_tokens": 5, "completion_tokens": 3}
        return httpx.Response(200, json={"choices": [], "usage": usage})

    sel = tiersel.Selector(api_key=CANARY_KEY, transport=httpx.MockTransport(upstream))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    assert sel.send(body).ok
    assert seen == [("tiersel.attempt", True)]
    (attempt,) = [s for s in exporter.get_finished_spans() if s.name == "tiersel.attempt"]
    (call,) = _calls(exporter)
    assert attempt.context.trace_id == call.context.trace_id


async def test_a_cancelled_hedge_loser_is_no_error_and_exceptions_keep_their_messages_out(
    exporter: InMemorySpanExporter,
) -> None:
    up, ledger = Upstream(), Reservations(1.0)
    sel = hedging_selector(up, ledger)
    r = await sel.asend(HEDGE_BODY, requirements=tiersel.Requirements(deadline_s=30))
    assert r.ok and r.tried == ("standard", "fast")
    attempts = {
        s.attributes["tiersel.tier"]: s  # type: ignore[index]
        for s in exporter.get_finished_spans()
        if s.name == "tiersel.attempt"
    }
    loser = attempts["standard"]
    assert loser.attributes["tiersel.cancelled"] is True  # type: ignore[index]
    assert loser.status.status_code is not StatusCode.ERROR

    # A send that raises: the span says which exception, not what it said.
    def leaky(request: httpx.Request) -> httpx.Response:
        raise RuntimeError(f"bad header {CANARY_KEY}")

    broken = tiersel.Selector(api_key=CANARY_KEY, transport=httpx.MockTransport(leaky))
    with pytest.raises(RuntimeError):
        broken.send(HEDGE_BODY)
    text = _span_text(exporter.get_finished_spans())
    assert "RuntimeError" in text and CANARY_KEY not in text
