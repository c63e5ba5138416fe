"""One routed call's exchange for `TierTransport` and `AsyncTierTransport`
(`tiersel.wrap.transport`): which requests are routed or refused, the response and the
`CallRecord` handed back, and the metered stream of a streamed reply. The request and reply
themselves are `tiersel.http`'s, which `tiersel.Selector` shares.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

from tiersel.dialects import (
    Dialect,
    estimate_input_tokens,
    parse_json,
)
from tiersel.engine.core import Engine
from tiersel.engine.lease import renewal_for
from tiersel.engine.results import CallResult, StreamEnd
from tiersel.errors import (
    RequestNotUnderstood,
    RetiredTier,
    TierselError,
    TierselWarning,
    UnknownModel,
    UnpricedModel,
    shown,
)
from tiersel.http.flavours import Flavour, as_flavour
from tiersel.http.reply import already_read, encoded
from tiersel.http.response import (
    STREAM_RESPONSE_HEADERS,
    refusal,
    response_extensions,
    whole_response,
)
from tiersel.http.route import Route
from tiersel.wrap.record import CallRecord, CostBasis, response_headers
from tiersel.wrap.streaming import Abandoned, AsyncMeteredStream, MeteredStream, StreamMeter

log = logging.getLogger("tiersel.wrap")

CallHook = Callable[[CallRecord], None]
"""A function handed each call's `CallRecord` when the call ends (for a stream: when it ends)."""


REFUSALS = ("auto", "raise", "respond")
"""How a transport hands back a call tiersel refuses (a bad hint, an unknown model, no feasible
tier, an exhausted budget): ``raise`` the `TierselError` from the transport; ``respond`` with an
HTTP error response the SDK raises as its own error, never retried; ``auto``: respond to the
anthropic SDK (known by its User-Agent; it turns any exception a transport raises into a retried
"Connection error"), raise to everyone else."""


class Exchange:
    """What the sync and async transports share: reading a request, building the upstream
    request, and the response and record for the caller. No I/O here."""

    __slots__ = ("abandoned", "engine", "on_call", "refusals", "unpriced_warned")

    def __init__(self, engine: Engine, on_call: CallHook | None, refusals: str = "auto") -> None:
        if refusals not in REFUSALS:
            raise ValueError(f"refusals must be one of {', '.join(REFUSALS)}; got {refusals!r}")
        self.engine = engine
        self.on_call = on_call
        self.refusals = refusals
        self.abandoned = Abandoned()
        self.unpriced_warned: set[str] = set()

    # -- requests -------------------------------------------------------------------------------

    def refuse_passthrough(self, request: Any, flavour: Flavour) -> Any:
        """None for a request to pass through (not routed); for one that must not go upstream,
        its refusal response, or the refusal raised (see `REFUSALS`)."""
        refused = _passthrough_refusal(request, budgeted=self.engine.ledger_enabled)
        if refused is None:
            return None
        return self.refuse(request, flavour, Dialect.openai, refused)

    def refuse(self, request: Any, flavour: Flavour, dialect: Dialect, exc: TierselError) -> Any:
        """The refusal response for ``request``, or ``exc`` raised (see `REFUSALS`)."""
        if self.responds_to_refusals(request):
            return refusal(flavour, dialect, exc)
        raise exc

    def unrouted(self, route: Route) -> bool:
        """Whether ``route``'s model is one the price table cannot price (unknown, or known with
        no price), so the call goes as written: with no budget, yes (warned once per model);
        under a budget it is refused (`UnpricedModel`), since it cannot be reserved for."""
        model = route.body.get("model")
        if not isinstance(model, str) or not model:
            return False  # the selector refuses it, saying why
        engine = self.engine
        try:
            if engine.priced(model):
                return False
            closest: tuple[str, ...] = ()
            known = True
        except RetiredTier:
            raise  # a retired US-only or spot router: refused, never sent in another's stead
        except UnknownModel as exc:
            closest, known = exc.closest, False
        if engine.ledger_enabled:
            raise UnpricedModel(model, engine.pricing.origin, closest, known=known)
        if model not in self.unpriced_warned:
            self.unpriced_warned.add(model)
            what = "has no price in" if known else "is not in"
            warnings.warn(
                f"model {shown(model)} {what} the price table: its calls are sent as written,"
                " with no tier chosen and nothing charged",
                TierselWarning,
                stacklevel=2,
            )
        return True

    # -- responses ------------------------------------------------------------------------------

    def respond(self, route: Route, result: CallResult, *, asynchronous: bool) -> Any:
        """The response for the caller once the attempt flow has ended."""
        if result.pending_stream:
            return self._stream_response(route, result, asynchronous=asynchronous)
        basis = _served(result, estimated=False) if result.ok else _unserved(result)
        extra = response_headers(result, result.cost_usd, basis)
        response = whole_response(route, result, extra)
        self.notify(route, result, basis, response.status_code)  # what the caller gets
        return response

    def responds_to_refusals(self, request: Any) -> bool:
        """Whether a refusal of ``request`` goes back as a response rather than raised."""
        mode = self.refusals
        if mode == "auto":
            # The anthropic SDK's User-Agent is its client class's name: "Anthropic/Python 2.x",
            # "AsyncAnthropic/Python 2.x", ...
            agent: str = request.headers.get("user-agent", "")
            return "Anthropic/Python" in agent
        return mode == "respond"

    def _stream_response(self, route: Route, result: CallResult, *, asynchronous: bool) -> Any:
        upstream = result.response
        return route.flavour.response(
            upstream.status_code,
            headers=_stream_headers(result),
            stream=self._metered(route, result, asynchronous),
            extensions=response_extensions(upstream),
        )

    def _metered(self, route: Route, result: CallResult, asynchronous: bool) -> Any:
        """The upstream stream as the caller reads it: metered, its end settling the call (and
        recorded as dropped, if the caller drops it unclosed)."""
        upstream = result.response
        engine = self.engine
        body = route.body
        meter = StreamMeter(
            route.dialect,
            engine.clock,
            route.sent_at,
            drop_usage_only=route.drop_usage_only,
            input_tokens=lambda: estimate_input_tokens(
                body, bytes_per_token=engine.bytes_per_token, dialect=route.dialect
            ),
        )
        ttft = result.reply.ttft_s if result.reply is not None else None
        if ttft is not None:  # its first tokens were held for a pace check (`tiersel.wrap.pace`)
            meter.first_token_at = route.sent_at + ttft
        # A body read already is served from memory (decoded, if it was encoded on the wire).
        decode = encoded(upstream) or already_read(upstream)

        def errors(exc: Exception) -> Exception:
            return as_flavour(exc, route.flavour)

        def report(final: CallResult, end: StreamEnd) -> None:
            if final.usage is None and not final.ok:
                basis = _unserved(final)
            else:
                basis = _served(final, estimated=end.usage_estimated)
            self.notify(route, final, basis, upstream.status_code, end=end)

        async def aended(end: StreamEnd) -> None:
            report(await engine.afinish_stream(result, end), end)

        renewal = renewal_for(engine.ledger, result, engine.clock, route.sent_at)
        if asynchronous:
            return AsyncMeteredStream(
                upstream, meter, aended, errors, decode=decode, abandoned=self.abandoned,
                renewal=renewal,
            )  # fmt: skip
        return MeteredStream(
            upstream,
            meter,
            lambda end: report(engine.finish_stream(result, end), end),
            errors,
            decode=decode,
            abandoned=self.abandoned,
            renewal=renewal,
        )

    # -- records --------------------------------------------------------------------------------

    def notify(
        self,
        route: Route,
        result: CallResult,
        basis: CostBasis,
        status: int,
        *,
        end: StreamEnd | None = None,
    ) -> None:
        hook = self.on_call
        debug = log.isEnabledFor(logging.DEBUG)
        if hook is None and not debug:
            return
        step = result.step
        engine = self.engine
        elapsed = max(0.0, engine.clock.now() - result.started_at)
        if debug:
            log.debug(
                "tiersel %s %s: %s, tier %s, %d attempt(s), $%.6f (%s)%s",
                result.call_id,
                route.path,
                "ok" if result.ok else f"failed ({result.detail})",
                result.tier,
                result.attempts,
                result.cost_usd,
                basis.value,
                ", streamed" if route.stream else "",
            )
        if hook is None:
            return
        record = CallRecord(
            call_id=result.call_id,
            ok=result.ok,
            path=route.path,
            model=engine.model_name(step.model) if step is not None else None,
            model_id=step.model if step is not None else None,
            tier=result.tier,
            status=status,
            attempts=result.attempts,
            cost_usd=result.cost_usd,
            cost_basis=basis,
            estimated_cost_usd=step.expected_cost_usd if step is not None else None,
            requirements=route.requirements,
            decisions=result.decisions,
            steps=result.steps,
            usage=result.usage,
            streamed=end is not None,
            elapsed_s=elapsed,
            ttft_s=end.ttft_s if end is not None else None,
            output_tps=end.output_tps if end is not None else None,
            detail=result.detail,
        )
        self._call_hook(hook, record)

    def refused(self, route: Route, call_id: str, exc: TierselError) -> None:
        """Tell the hook about a call that no tier could take (it raised before any send)."""
        hook = self.on_call
        if hook is None:
            return
        record = CallRecord(
            call_id=call_id,
            ok=False,
            path=route.path,
            model=None,
            model_id=None,
            tier=None,
            status=0,
            attempts=0,
            cost_usd=0.0,
            cost_basis=CostBasis.none,
            estimated_cost_usd=None,
            requirements=route.requirements,
            decisions=(),
            usage=None,
            streamed=route.stream,
            elapsed_s=0.0,
            detail=f"{type(exc).__name__}: {exc}",
        )
        self._call_hook(hook, record)

    @staticmethod
    def _call_hook(hook: CallHook, record: CallRecord) -> None:
        try:
            hook(record)
        except Exception:
            # A failing metrics hook must not fail the call it reports on.
            log.exception("tiersel: the on_call hook raised on call %s", record.call_id)


def _passthrough_refusal(request: Any, *, budgeted: bool) -> TierselError | None:
    """Why a request passed through must not go upstream, if it must not:

    - under a budget, any POST tiersel does not route (embeddings, rerank, fine-tuning, ...):
      it cannot reserve or charge what it cannot price, so it fails closed;
    - a body in memory asking for ``service_tier`` on a fast router model: tiersel never sends
      that combination, not even as given.
    """
    if request.method != "POST":
        return None
    if budgeted:
        return RequestNotUnderstood(
            f"POST {request.url.path}: tiersel prices only generation calls (chat completions,"
            " responses, completions, messages), so"
            " under a budget it does not send a request it can neither reserve nor charge"
        )
    try:
        content: bytes = request.content
    except Exception:  # a streamed body, not read: tiersel does not buffer it to look
        return None
    if b"/routers/" not in content or b"service_tier" not in content:
        return None
    body = parse_json(content)
    model = body.get("model") if isinstance(body, dict) else None
    if isinstance(model, str) and "/routers/" in model and "service_tier" in body:
        return RequestNotUnderstood(
            f"POST {request.url.path}: the body asks for service_tier"
            f" {shown(body['service_tier'])} on the fast router model {shown(model)};"
            " the two do not combine, so tiersel does not send it"
        )
    return None


def _served(result: CallResult, *, estimated: bool) -> CostBasis:
    """How a call that was answered knows its cost: the usage reported, unless its usage was
    ``estimated`` (a stream that ended before reporting it) or it was also charged for attempts
    given up on before its answer (a timeout, a hedge's loser, a cut: ``sunk_usd``), which are
    estimates; its worst case when no usage came at all."""
    if result.usage is None:
        return CostBasis.worst_case
    return CostBasis.estimate if estimated or result.sunk_usd > 0 else CostBasis.actual


def _unserved(result: CallResult) -> CostBasis:
    """How a call that failed knows its cost: nothing billed, or attempts the provider worked on
    and was given up on (a timeout, a hedge's loser, a cut), charged as estimated."""
    return CostBasis.estimate if result.cost_usd > 0 else CostBasis.none


def _stream_headers(result: CallResult) -> list[tuple[bytes, bytes]]:
    """A streamed reply's headers: upstream's, less its framing and retry advice, and tiersel's,
    with the expected cost (the real one is known when the stream ends: see the record), and
    what the call was billed before its stream (a hedge's loser, attempts cut for their pace)."""
    step = result.step
    assert step is not None  # a stream is only pending after a send
    upstream = result.response
    headers = [(k, v) for k, v in upstream.headers.raw if k.lower() not in STREAM_RESPONSE_HEADERS]
    expected = step.expected_cost_usd + result.cost_usd
    return headers + response_headers(result, expected, CostBasis.estimate)
