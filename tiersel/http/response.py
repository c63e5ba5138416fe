"""What goes back to the caller: the upstream answer with tiersel's headers, an error response
for a call tiersel ended without one, and the refusal of a call it would not send."""

from __future__ import annotations

import json
from typing import Any

from tiersel.dialects import (
    Dialect,
)
from tiersel.engine.results import CallResult
from tiersel.errors import (
    BudgetExhausted,
    NoFeasibleTier,
    TierselError,
)
from tiersel.http.flavours import Flavour
from tiersel.http.reply import encoded
from tiersel.http.route import Route

RECODED_RESPONSE_HEADERS = frozenset({b"content-encoding", b"content-length"})
STREAM_RESPONSE_HEADERS = frozenset({b"content-encoding", b"content-length", b"x-should-retry"})
NO_RETRY = (b"x-should-retry", b"false")

REFUSAL_STATUS: tuple[tuple[type[TierselError], int, str], ...] = (
    (BudgetExhausted, 402, "budget_exhausted"),
    (NoFeasibleTier, 422, "no_feasible_tier"),
    (TierselError, 400, "invalid_request_error"),
)


def error_body(dialect: Dialect, kind: str, message: str) -> bytes:
    """An error body in the dialect's own shape, so that the SDK shows ``message``."""
    if dialect is Dialect.anthropic:
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"object": "error", "type": kind, "code": kind, "message": message}}
    return json.dumps(body).encode()


def response_extensions(response: Any) -> dict[str, Any]:
    ext = response.extensions
    return {k: ext[k] for k in ("http_version", "reason_phrase") if k in ext}


def is_stream(asked: bool, response: Any) -> bool:
    """Whether ``response`` is the event stream the request ``asked`` for (left to be read as it
    comes), not an error or a body to read whole."""
    return (
        asked
        and 200 <= response.status_code < 300
        and "text/event-stream" in response.headers.get("content-type", "")
    )


def answered_whole(response: Any, content: bytes, flavour: Flavour) -> Any:
    """``response`` as if its answer had come whole: ``content`` (JSON) in place of its event
    stream, its headers saying so."""
    framing = (b"content-type", b"content-length", b"content-encoding", b"transfer-encoding")
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in framing]
    headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
    return flavour.response(
        response.status_code,
        headers=headers,
        stream=flavour.byte_stream(content),
        extensions=response_extensions(response),
    )


def refusal(flavour: Flavour, dialect: Dialect, exc: TierselError) -> Any:
    """The error response for a call tiersel refused before sending it: 402 for an
    exhausted budget, 422 when no tier meets the requirements, 400 for the rest (a bad hint,
    an unknown model, a body that is not a generation request). It says
    ``x-should-retry: false`` and names the error class in ``x-tiersel-error``."""
    status, kind = next((s, k) for t, s, k in REFUSAL_STATUS if isinstance(exc, t))
    content = error_body(dialect, kind, f"tiersel: {exc}")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        (b"x-tiersel-error", type(exc).__name__.encode()),
        NO_RETRY,
    ]
    return flavour.response(status, headers=headers, stream=flavour.byte_stream(content))


def stand_in(route: Route, result: CallResult, extra: list[tuple[bytes, bytes]]) -> Any:
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
    content = error_body(route.dialect, kind, message)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        *extra,
        NO_RETRY,
    ]
    return route.flavour.response(
        status, headers=headers, stream=route.flavour.byte_stream(content)
    )


def whole_response(route: Route, result: CallResult, extra: list[tuple[bytes, bytes]]) -> Any:
    """The response for a call whose reply was read whole: the upstream answer's status,
    headers and bytes with tiersel's ``extra`` headers (and ``x-should-retry: false`` when the
    call failed: tiersel has made its attempts), or a `stand_in` where there is none to hand
    back."""
    reply = result.reply
    content = reply.content if reply is not None else None
    if reply is None or content is None or result.budget_stopped:
        return stand_in(route, result, extra)
    upstream = reply.raw
    headers = upstream.headers.raw
    if encoded(upstream):
        # The body was decoded on the way: say so in its framing headers.
        headers = [(k, v) for k, v in headers if k.lower() not in RECODED_RESPONSE_HEADERS]
        headers.append((b"content-length", str(len(content)).encode()))
    headers = [*headers, *extra]
    if not result.ok:
        headers = [(k, v) for k, v in headers if k.lower() != b"x-should-retry"]
        headers.append(NO_RETRY)
    return route.flavour.response(
        upstream.status_code,
        headers=headers,
        stream=route.flavour.byte_stream(content),
        extensions=response_extensions(upstream),
    )
