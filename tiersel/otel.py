"""OpenTelemetry tracing for tiersel (the ``tiersel[otel]`` extra), after the
opentelemetry-instrumentation convention: ``TierselInstrumentor().instrument()`` traces every
call any `tiersel.Selector` makes, whichever door it came through (`Selector.send`, the
transports, a batch job); ``uninstrument()`` undoes it.

Each call is a span ``tiersel.call``, with one child span ``tiersel.attempt`` per attempt sent
(a hedge's two included). Attributes follow the GenAI semantic conventions where they fit
(``gen_ai.request.model``, ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``,
``openai.request.service_tier``, ``openai.response.service_tier``), and tiersel's own:
``tiersel.tier``, ``tiersel.plan``, ``tiersel.p_success``, ``tiersel.cost_usd``,
``tiersel.outcome``, ``tiersel.call_id``. No request header is read, so no credential reaches a
span, and an exception is recorded by its type only. A streamed call's span ends when its
stream opens (``tiersel.outcome`` ``streaming``). A hedge's loser cancelled in flight ends its
attempt span with ``tiersel.cancelled`` (not an error); a sync shell's loser, left to finish, ends
it when it does.

>>> from tiersel.otel import TierselInstrumentor
>>> instrumentor = TierselInstrumentor()
>>> instrumentor.instrument()
>>> instrumentor.uninstrument()
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from tiersel.engine.core import Engine, Started
from tiersel.engine.effects import Send
from tiersel.engine.results import CallResult, Reply

__all__ = ["TierselInstrumentor"]

_VERSION = "0.1.0"


class TierselInstrumentor:
    """Traces every call while instrumented, whichever door it came through: every door runs
    its calls with `Engine.run` / `Engine.arun` (see the module doc)."""

    _originals: tuple[Any, Any] | None = None

    def instrument(self, *, tracer_provider: trace.TracerProvider | None = None) -> None:
        """Start tracing, with ``tracer_provider`` (default: the global one). Idempotent."""
        if TierselInstrumentor._originals is not None:
            return
        tracer = trace.get_tracer("tiersel", _VERSION, tracer_provider=tracer_provider)
        run, arun = Engine.run, Engine.arun
        TierselInstrumentor._originals = (run, arun)

        def traced_run(sel: Engine, started: Started, send: Callable[[Send], Reply]) -> CallResult:
            span = tracer.start_span("tiersel.call", attributes=_call_attributes(started))
            try:
                with _current(span):
                    result = run(sel, started, _traced_send(tracer, span, send))
            except BaseException as exc:
                _failed(span, exc)
                raise
            _ended(span, result)
            return result

        async def traced_arun(
            sel: Engine, started: Started, send: Callable[[Send], Awaitable[Reply]]
        ) -> CallResult:
            span = tracer.start_span("tiersel.call", attributes=_call_attributes(started))
            try:
                with _current(span):
                    result = await arun(sel, started, _traced_asend(tracer, span, send))
            except BaseException as exc:
                _failed(span, exc)
                raise
            _ended(span, result)
            return result

        Engine.run = traced_run  # type: ignore[method-assign,assignment]
        Engine.arun = traced_arun  # type: ignore[method-assign,assignment]

    def uninstrument(self) -> None:
        """Stop tracing: `Engine` is as it was."""
        originals = TierselInstrumentor._originals
        if originals is None:
            return
        Engine.run, Engine.arun = originals  # type: ignore[method-assign]
        TierselInstrumentor._originals = None

    @property
    def is_instrumented(self) -> bool:
        return TierselInstrumentor._originals is not None


def _call_attributes(started: Started) -> dict[str, Any]:
    call = started.call
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": call.endpoint,
        "gen_ai.request.model": call.model,
        "gen_ai.request.max_tokens": call.max_output_tokens,
        "tiersel.call_id": started.call_id,
    }


def _attempt(tracer: Tracer, parent: Span, effect: Send) -> Span:
    step = effect.step
    attributes: dict[str, Any] = {
        "tiersel.tier": str(step.tier),
        "gen_ai.request.model": step.model,
    }
    if step.service_tier is not None:
        attributes["openai.request.service_tier"] = step.service_tier
    if step.hedge_s is not None:
        attributes["tiersel.hedge_s"] = step.hedge_s
    # An explicit parent: a hedge's attempts run in other threads or tasks.
    context = trace.set_span_in_context(parent)
    return tracer.start_span("tiersel.attempt", context=context, attributes=attributes)


def _attempt_ended(span: Span, reply: Reply) -> None:
    span.set_attribute("http.response.status_code", reply.status)
    if reply.error is not None or reply.timed_out or not 200 <= reply.status < 300:
        span.set_status(Status(StatusCode.ERROR, reply.error or f"HTTP {reply.status}"))
    span.end()


def _traced_send(
    tracer: Tracer, parent: Span, send: Callable[[Send], Reply]
) -> Callable[[Send], Reply]:
    def traced(effect: Send) -> Reply:
        span = _attempt(tracer, parent, effect)
        try:
            with _current(span):  # the HTTP client's spans nest here
                reply = send(effect)
        except BaseException as exc:
            _failed(span, exc)
            raise
        _attempt_ended(span, reply)
        return reply

    return traced


def _traced_asend(
    tracer: Tracer, parent: Span, send: Callable[[Send], Awaitable[Reply]]
) -> Callable[[Send], Awaitable[Reply]]:
    async def traced(effect: Send) -> Reply:
        span = _attempt(tracer, parent, effect)
        try:
            with _current(span):
                reply = await send(effect)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):  # a hedge's loser, cancelled: no error
                span.set_attribute("tiersel.cancelled", True)
                span.end()
            else:
                _failed(span, exc)
            raise
        _attempt_ended(span, reply)
        return reply

    return traced


def _current(span: Span) -> Any:
    """``span`` made the current span while a block runs; an exception is left to `_failed`."""
    return trace.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    )


def _failed(span: Span, exc: BaseException) -> None:
    # The exception's type only: its message may quote a request (and a credential in it).
    span.add_event("exception", {"exception.type": type(exc).__name__})
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    span.end()


def _ended(span: Span, result: CallResult) -> None:
    decision = result.decision
    step = result.step
    attributes: dict[str, Any] = {
        "tiersel.outcome": "streaming"
        if result.pending_stream
        else ("ok" if result.ok else "failed"),
        "tiersel.cost_usd": result.cost_usd,
        "tiersel.attempts": result.attempts,
    }
    if result.tier is not None:
        attributes["tiersel.tier"] = str(result.tier)
    if decision is not None:
        attributes["tiersel.plan"] = decision.label
        attributes["tiersel.p_success"] = decision.p_success
    if step is not None and step.service_tier is not None:
        attributes["openai.request.service_tier"] = step.service_tier
    usage = result.usage
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
        if usage.served_tier is not None:
            attributes["openai.response.service_tier"] = usage.served_tier
    span.set_attributes(attributes)
    if not result.ok and not result.pending_stream:
        span.set_status(Status(StatusCode.ERROR, result.detail or "failed"))
    span.end()
