"""One routed call's exchange: the request as tiersel reads it, the request sent upstream for
each attempt, and the response and record handed back. Shared by `TierTransport` and
`AsyncTierTransport` (`tiersel.wrap.transport`), which only carry out the I/O.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tiersel.call import Requirements
from tiersel.decision import Step
from tiersel.dialects import (
    HINT_PREFIX,
    Dialect,
    dialect_for_path,
    estimate_input_tokens,
    parse_json,
)
from tiersel.engine.effects import Send
from tiersel.engine.results import CallResult, Reply, StreamEnd
from tiersel.errors import (
    BudgetExhausted,
    NoFeasibleTier,
    RequestNotUnderstood,
    RetiredTier,
    TierselError,
    TierselWarning,
    UnknownModel,
    UnpricedModel,
    shown,
)
from tiersel.selector import Selector
from tiersel.tiers import moved
from tiersel.wrap.context import current_scope
from tiersel.wrap.flavours import BytesStream, Flavour, TimeoutErrors, as_flavour
from tiersel.wrap.hints import InvalidHint, merge_requirements, read_hints, strip_hints
from tiersel.wrap.record import CallRecord, CostBasis, response_headers
from tiersel.wrap.streaming import Abandoned, AsyncMeteredStream, MeteredStream, StreamMeter

__all__ = [
    "REFUSALS",
    "Answer",
    "CallHook",
    "Exchange",
    "ReplyHeaders",
    "Route",
    "aread_answer",
    "longest_timeout",
    "no_reply",
    "read_answer",
    "reply",
    "without_hints",
]

log = logging.getLogger("tiersel.wrap")

CallHook = Callable[[CallRecord], None]
"""A function handed each call's `CallRecord` when the call ends (for a stream: when it ends)."""

_DROPPED_REQUEST_HEADERS = frozenset({b"content-length", b"transfer-encoding"})
_MOVED_DROPPED = _DROPPED_REQUEST_HEADERS | {b"host"}  # a tier served from its own host
_RECODED_RESPONSE_HEADERS = frozenset({b"content-encoding", b"content-length"})
_STREAM_RESPONSE_HEADERS = frozenset({b"content-encoding", b"content-length", b"x-should-retry"})
_NO_RETRY = (b"x-should-retry", b"false")
_HINT_PREFIX = HINT_PREFIX.encode()


REFUSALS = ("auto", "raise", "respond")
"""How a transport hands back a call tiersel refuses (a bad hint, an unknown model, no feasible
tier, an exhausted budget): ``raise`` the `TierselError` from the transport; ``respond`` with an
HTTP error response the SDK raises as its own error, never retried; ``auto``: respond to the
anthropic SDK (known by its User-Agent; it turns any exception a transport raises into a retried
"Connection error"), raise to everyone else."""

_REFUSAL_STATUS: tuple[tuple[type[TierselError], int, str], ...] = (
    (BudgetExhausted, 402, "budget_exhausted"),
    (NoFeasibleTier, 422, "no_feasible_tier"),
    (TierselError, 400, "invalid_request_error"),
)


@dataclass(slots=True)
class Route:
    """A generation request as tiersel read it."""

    flavour: Flavour
    url: Any
    path: str
    dialect: Dialect
    headers: Any  # the request's headers (its library's Headers), without hints
    extensions: Mapping[str, Any]
    body: dict[str, Any]
    content: bytes | None  # the body as sent by the caller, while ``body`` is unchanged
    requirements: Requirements
    stream: bool
    drop_usage_only: bool
    request: Any = None  # the caller's request, when it may go upstream as it is (see `upstream`)
    sent_at: float = 0.0


class Exchange:
    """What the sync and async transports share: reading a request, building the upstream
    request, and the response and record for the caller. No I/O here."""

    __slots__ = ("abandoned", "on_call", "refusals", "selector", "unpriced_warned")

    def __init__(
        self, selector: Selector, on_call: CallHook | None, refusals: str = "auto"
    ) -> None:
        if refusals not in REFUSALS:
            raise ValueError(f"refusals must be one of {', '.join(REFUSALS)}; got {refusals!r}")
        self.selector = selector
        self.on_call = on_call
        self.refusals = refusals
        self.abandoned = Abandoned()
        self.unpriced_warned: set[str] = set()

    # -- requests -------------------------------------------------------------------------------

    @staticmethod
    def generation(request: Any) -> tuple[str, Dialect] | None:
        """The path and dialect of a generation call to route; None to pass it through."""
        if request.method != "POST":
            return None
        path: str = request.url.path
        dialect = dialect_for_path(path)
        return (path, dialect) if dialect is not None else None

    def refuse_passthrough(self, request: Any, flavour: Flavour) -> Any:
        """None for a request to pass through (not routed); for one that must not go upstream,
        its refusal response, or the refusal raised (see `REFUSALS`)."""
        refused = _passthrough_refusal(request, budgeted=self.selector.engine.ledger_enabled)
        if refused is None:
            return None
        return self.refuse(request, flavour, Dialect.openai, refused)

    def refuse(self, request: Any, flavour: Flavour, dialect: Dialect, exc: TierselError) -> Any:
        """The refusal response for ``request``, or ``exc`` raised (see `REFUSALS`)."""
        if self.responds_to_refusals(request):
            return self.refusal(flavour, dialect, exc)
        raise exc

    def unrouted(self, route: Route) -> bool:
        """Whether ``route``'s model is one the price table cannot price (unknown, or known with
        no price), so the call goes as written: with no budget, yes (warned once per model);
        under a budget it is refused (`UnpricedModel`), since it cannot be reserved for."""
        model = route.body.get("model")
        if not isinstance(model, str) or not model:
            return False  # the selector refuses it, saying why
        pricing = self.selector.pricing
        try:
            if pricing.model(model).priced:
                return False
            closest: tuple[str, ...] = ()
            known = True
        except RetiredTier:
            raise  # a retired US-only or spot router: refused, never sent in another's stead
        except UnknownModel as exc:
            closest, known = exc.closest, False
        if self.selector.engine.ledger_enabled:
            raise UnpricedModel(model, pricing.origin, closest, known=known)
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

    def route(self, request: Any, flavour: Flavour, path: str, dialect: Dialect) -> Route:
        """Read a generation request (its body already read)."""
        raw = request.headers.raw
        hints, chunked, length = _scan(raw)
        hinted, source, kept = read_hints(raw) if hints else ({}, {}, None)
        sel = self.selector
        req = merge_requirements(sel.requirements, current_scope(), hinted, source)
        if "tiers" in hinted:
            self._check_tiers(source["tiers"], hinted["tiers"])
        sent: bytes = request.content
        body = parse_json(sent)
        content: bytes | None = sent
        if not isinstance(body, dict):
            raise RequestNotUnderstood(f"POST {path}: the request body is not a JSON object")
        stream = body.get("stream") is True
        drop = False
        if stream and dialect.chunked_usage:
            options = body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                # Usage comes only when asked for; the chunk that brings it is then not passed on.
                extra = options if isinstance(options, dict) else {}
                body = {**body, "stream_options": {**extra, "include_usage": True}}
                content = None
                drop = True
        headers = request.headers
        if kept is not None or chunked:
            base = kept if kept is not None else raw
            headers = flavour.headers(
                [(k, v) for k, v in base if k.lower() != b"transfer-encoding"]
            )
        # Without hints, with its own body and a length that frames it, the caller's request
        # can go upstream as it is for an attempt that changes nothing: no copy to build.
        pristine = headers is request.headers and content is not None and length == len(sent)
        return Route(
            flavour,
            request.url,
            path,
            dialect,
            headers,
            request.extensions,
            body,
            content,
            req,
            stream,
            drop,
            request if pristine else None,
        )

    def _check_tiers(self, header: str, names: tuple[str, ...]) -> None:
        known = self.selector.pricing.tiers
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InvalidHint(
                header,
                ",".join(names),
                f"names unknown tier(s) {', '.join(unknown)} (known: {', '.join(known)})",
            )

    def upstream(self, route: Route, effect: Send, to: Flavour) -> Any:
        """The request for one attempt, in the inner transport's library."""
        timeout_s = effect.timeout_s
        content = route.content
        origin = effect.step.base_url
        if content is not None and effect.body == route.body:
            # The tier asks for no change: the caller's bytes, or its very request.
            if (
                route.request is not None
                and to is route.flavour
                and not effect.headers
                and origin is None
                and (timeout_s is None or not math.isfinite(timeout_s))
            ):
                return route.request
        else:
            content = _dump(effect.body)
        length = str(len(content))
        if to is route.flavour:
            url = route.url if origin is None else moved(str(route.url), origin)
            headers = route.headers.copy()
            headers["content-length"] = length
            if effect.headers:
                headers.update(effect.headers)
            if origin is not None:
                headers["host"] = _netloc(origin)
        else:
            url = str(route.url) if origin is None else moved(str(route.url), origin)
            dropped = _DROPPED_REQUEST_HEADERS if origin is None else _MOVED_DROPPED
            headers = [(k, v) for k, v in route.headers.raw if k.lower() not in dropped]
            if origin is not None:
                headers.append((b"host", _netloc(origin).encode("ascii")))
            headers.append((b"content-length", length.encode()))
            headers += [
                (k.encode("latin-1"), v.encode("latin-1")) for k, v in effect.headers.items()
            ]
        # A stream= body skips the client-side re-encoding of a Request(content=...).
        return to.request(
            "POST",
            url,
            headers=headers,
            stream=BytesStream(content),
            extensions=_with_timeout(route.extensions, timeout_s),
        )

    @staticmethod
    def is_stream(route: Route, response: Any) -> bool:
        return (
            route.stream
            and 200 <= response.status_code < 300
            and "text/event-stream" in response.headers.get("content-type", "")
        )

    # -- responses ------------------------------------------------------------------------------

    def respond(self, route: Route, result: CallResult, *, asynchronous: bool) -> Any:
        """The response for the caller once the attempt flow has ended."""
        if result.pending_stream:
            return self._stream_response(route, result, asynchronous=asynchronous)
        step = result.step
        answer: Answer | None = result.response
        upstream = answer.response if answer is not None else None
        if result.ok:
            basis = CostBasis.actual if result.usage is not None else CostBasis.worst_case
        else:
            basis = CostBasis.none
        extra = response_headers(
            call_id=result.call_id,
            tier=result.tier,
            model_id=step.model if step is not None else None,
            tried=result.tried,
            cost_usd=result.cost_usd,
            basis=basis,
            max_tokens_set=result.max_tokens_set,
        )
        if answer is None or answer.content is None or result.budget_stopped:
            response = self._stand_in(route, result, extra)
        else:
            content = answer.content
            headers = answer.response.headers.raw
            if answer.encoded:
                # The body was decoded on the way: say so in its framing headers.
                headers = [(k, v) for k, v in headers if k.lower() not in _RECODED_RESPONSE_HEADERS]
                headers.append((b"content-length", str(len(content)).encode()))
            headers = [*headers, *extra]
            if not result.ok:
                headers = [(k, v) for k, v in headers if k.lower() != b"x-should-retry"]
                headers.append(_NO_RETRY)
            response = route.flavour.response(
                answer.response.status_code,
                headers=headers,
                stream=BytesStream(content),
                extensions=_extensions(answer.response),
            )
        status = upstream.status_code if upstream is not None else response.status_code
        self.notify(route, result, basis, status)
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

    @staticmethod
    def refusal(flavour: Flavour, dialect: Dialect, exc: TierselError) -> Any:
        """The error response for a call tiersel refused before sending it: 402 for an
        exhausted budget, 422 when no tier meets the requirements, 400 for the rest (a bad hint,
        an unknown model, a body that is not a generation request). It says
        ``x-should-retry: false`` and names the error class in ``x-tiersel-error``."""
        status, kind = next((s, k) for t, s, k in _REFUSAL_STATUS if isinstance(exc, t))
        content = _error_body(dialect, kind, f"tiersel: {exc}")
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
            (b"x-tiersel-error", type(exc).__name__.encode()),
            _NO_RETRY,
        ]
        return flavour.response(status, headers=headers, stream=BytesStream(content))

    def _stand_in(self, route: Route, result: CallResult, extra: list[tuple[bytes, bytes]]) -> Any:
        """An error response for a call tiersel ended without an answer to hand back: none came,
        no tier could be tried, or the budget could not cover a retry. Its status is never one a
        provider sends for overload (503), so a caller cannot take tiersel's refusal for a shed."""
        reply = result.reply
        if result.budget_stopped:
            last = f"HTTP {reply.status}" if reply is not None and reply.status else "no response"
            status, kind = 402, "budget_exhausted"
            message = (
                f"tiersel: the budget cannot cover another attempt after {result.attempts}"
                f" failed attempt(s) (the last: {last})"
            )
        elif result.attempts == 0:
            status, kind = 422, "no_tier_available"
            message = f"tiersel: no tier could be tried: {result.detail}"
        elif reply is not None and reply.timed_out:
            status, kind = 504, "upstream_timeout"
            message = f"tiersel: no response after {result.attempts} attempt(s): {result.detail}"
        else:
            status, kind = 502, "upstream_unreachable"
            message = f"tiersel: no response after {result.attempts} attempt(s): {result.detail}"
        content = _error_body(route.dialect, kind, message)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
            *extra,
            _NO_RETRY,
        ]
        return route.flavour.response(status, headers=headers, stream=BytesStream(content))

    def _stream_response(self, route: Route, result: CallResult, *, asynchronous: bool) -> Any:
        upstream = result.response.response
        step = result.step
        assert step is not None  # a stream is only pending after a send
        sel = self.selector
        body = route.body
        meter = StreamMeter(
            route.dialect,
            sel.clock,
            route.sent_at,
            drop_usage_only=route.drop_usage_only,
            input_tokens=lambda: estimate_input_tokens(
                body, bytes_per_token=sel.engine.bytes_per_token, dialect=route.dialect
            ),
        )

        # A body read already is served from memory (decoded, if it was encoded on the wire).
        decode = _encoded(upstream) or _already_read(upstream)

        def errors(exc: Exception) -> Exception:
            return as_flavour(exc, route.flavour)

        def report(final: CallResult, end: StreamEnd) -> None:
            basis = CostBasis.actual
            if final.usage is None:
                basis = CostBasis.worst_case if final.ok else CostBasis.none
            elif end.usage_estimated:
                basis = CostBasis.estimate
            self.notify(route, final, basis, upstream.status_code, end=end)

        def ended(end: StreamEnd) -> None:
            report(sel.engine.finish_stream(result, end), end)

        async def aended(end: StreamEnd) -> None:
            report(await sel.engine.afinish_stream(result, end), end)

        headers = [
            (k, v) for k, v in upstream.headers.raw if k.lower() not in _STREAM_RESPONSE_HEADERS
        ]
        headers += response_headers(
            call_id=result.call_id,
            tier=result.tier,
            model_id=step.model,
            tried=result.tried,
            # The real cost is known only when the stream ends (see the on_call record).
            cost_usd=step.expected_cost_usd,
            basis=CostBasis.estimate,
            max_tokens_set=result.max_tokens_set,
        )
        return route.flavour.response(
            upstream.status_code,
            headers=headers,
            stream=(
                AsyncMeteredStream(
                    upstream, meter, aended, errors, decode=decode, abandoned=self.abandoned
                )
                if asynchronous
                else MeteredStream(
                    upstream, meter, ended, errors, decode=decode, abandoned=self.abandoned
                )
            ),
            extensions=_extensions(upstream),
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
        sel = self.selector
        elapsed = max(0.0, sel.clock.now() - result.started_at)
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
            model=_model_name(sel, step),
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


def _error_body(dialect: Dialect, kind: str, message: str) -> bytes:
    """An error body in the dialect's own shape, so that the SDK shows ``message``."""
    if dialect is Dialect.anthropic:
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"object": "error", "type": kind, "code": kind, "message": message}}
    return json.dumps(body).encode()


def _model_name(sel: Selector, step: Step | None) -> str | None:
    if step is None:
        return None
    return sel.pricing.model(step.model).name


def _extensions(response: Any) -> dict[str, Any]:
    ext = response.extensions
    return {k: ext[k] for k in ("http_version", "reason_phrase") if k in ext}


def longest_timeout(extensions: Mapping[str, Any]) -> float | None:
    """The longest of a request's finite timeouts (connect, read, write, pool), if any: a call
    with no deadline never waits longer than this between attempts, as its client would not
    wait that long for an answer either."""
    current = extensions.get("timeout")
    if not isinstance(current, Mapping):
        return None
    finite = [float(v) for v in current.values() if v is not None and math.isfinite(float(v))]
    return max(finite) if finite else None


def _with_timeout(extensions: Mapping[str, Any], timeout_s: float | None) -> Mapping[str, Any]:
    """The request's extensions, its timeouts capped at the time left before the deadline."""
    if timeout_s is None or not math.isfinite(timeout_s):
        return extensions
    current = extensions.get("timeout")
    if isinstance(current, Mapping):
        capped = {
            k: timeout_s if v is None else min(float(v), timeout_s) for k, v in current.items()
        }
    else:
        capped = dict.fromkeys(("connect", "read", "write", "pool"), timeout_s)
    return {**extensions, "timeout": capped}


@dataclass(frozen=True, slots=True)
class Answer:
    """One attempt's upstream response, its body once read (None for a stream), and whether
    the body was content-encoded on the wire (``content`` is then decoded)."""

    response: Any
    content: bytes | None = None
    encoded: bool = False


def _netloc(origin: str) -> str:
    """The Host header for a tier's `base_url` (``https://us.api.fireworks.ai`` -> its host)."""
    return origin.split("://", 1)[1]


def _dump(body: Any) -> bytes:
    """A body as compact JSON bytes: UTF-8 as it is, or with ``\\u`` escapes when a string holds
    a lone surrogate (JSON carries it escaped; UTF-8 cannot)."""
    try:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":")).encode()


def _already_read(response: Any) -> bool:
    """Whether ``response``'s body was read before tiersel saw it (its stream is spent)."""
    return getattr(response, "is_stream_consumed", False) is True


def _encoded(response: Any) -> bool:
    return any(
        k.lower() == b"content-encoding" and v.strip().lower() != b"identity"
        for k, v in response.headers.raw
    )


def _scan(raw: list[tuple[bytes, bytes]]) -> tuple[bool, bool, int | None]:
    """In one pass over request headers ``raw``: whether there are hint headers, whether the
    body is chunked, and the content length they give."""
    hints = chunked = False
    length = None
    for key, value in raw:
        low = key.lower()
        if low == b"transfer-encoding":
            chunked = True
        elif low == b"content-length":
            length = int(value) if value.isdigit() else None
        elif low.startswith(_HINT_PREFIX):
            hints = True
    return hints, chunked, length


def read_answer(response: Any) -> Answer:
    """The response with its whole body. Unencoded, straight from the stream:
    ``Response.read()``'s decoding machinery costs tens of microseconds a call. A response an
    inner transport has read already (a logging wrapper does) is taken as it is: its stream is
    spent, and reading a spent stream again would wait on a finished connection."""
    if _encoded(response) or _already_read(response):
        return Answer(response, response.read(), _encoded(response))
    try:
        return Answer(response, b"".join(response.stream))
    finally:
        response.close()


async def aread_answer(response: Any) -> Answer:
    """The async twin of `read_answer`."""
    if _encoded(response) or _already_read(response):
        return Answer(response, await response.aread(), _encoded(response))
    try:
        return Answer(response, b"".join([chunk async for chunk in response.stream]))
    finally:
        await response.aclose()


def reply(answer: Answer, elapsed_s: float) -> Reply:
    """What one attempt got back, for the attempt flow: ``answer.content`` is the body read
    whole, or None for a stream left to be read by the caller."""
    response = answer.response
    headers = ReplyHeaders(response)
    status = response.status_code
    if answer.content is None:
        return Reply(status, headers, None, elapsed_s, True, raw=answer)
    # An error's arrival on the wall clock dates a Retry-After given as an HTTP date.
    wall = time.time() if status >= 400 else None
    return Reply(status, headers, parse_json(answer.content), elapsed_s, raw=answer, wall_s=wall)


class ReplyHeaders(Mapping[str, str]):
    """A response's headers for the attempt flow (`tiersel.dialects.classify` reads several on
    an error), lower-cased in a plain dict, far cheaper to look up than an httpx ``Headers``.
    The dict is built when first read: a successful reply's headers usually never are."""

    __slots__ = ("_lowered", "_response")

    def __init__(self, response: Any) -> None:
        self._response = response
        self._lowered: dict[str, str] | None = None

    def _dict(self) -> dict[str, str]:
        lowered = self._lowered
        if lowered is None:
            lowered = self._lowered = {
                k.lower().decode("latin-1"): v.decode("latin-1")
                for k, v in self._response.headers.raw
            }
        return lowered

    def __getitem__(self, key: str) -> str:
        return self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return f"ReplyHeaders({self._dict()!r})"


def no_reply(exc: BaseException, started: float, now: float) -> Reply:
    """An attempt that got no response: a timeout or another transport error."""
    if isinstance(exc, TimeoutErrors):
        return Reply(0, {}, None, now - started, timed_out=True, error="timed out")
    return Reply(0, {}, None, now - started, error=type(exc).__name__)


def without_hints(request: Any, flavour: Flavour) -> Any:
    """The request without tiersel's hint headers (itself when it has none)."""
    kept = strip_hints(request.headers.raw)
    if kept is None:
        return request
    return flavour.request(
        request.method,
        request.url,
        headers=kept,
        stream=request.stream,
        extensions=request.extensions,
    )
