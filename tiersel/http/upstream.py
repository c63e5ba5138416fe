"""The request each attempt sends upstream, built from the caller's request as read (`Route`)
and the attempt's step: its body, headers, host and timeout."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from tiersel.engine.effects import Send
from tiersel.http.assemble import as_stream
from tiersel.http.flavours import Flavour
from tiersel.http.route import Route
from tiersel.tiers import moved

DROPPED_REQUEST_HEADERS = frozenset({b"content-length", b"transfer-encoding"})
MOVED_DROPPED = DROPPED_REQUEST_HEADERS | {b"host"}  # a tier served from its own host


def longest_timeout(extensions: Mapping[str, Any]) -> float | None:
    """The longest of a request's finite timeouts (connect, read, write, pool), if any: a call
    with no deadline never waits longer than this between attempts, as its client would not
    wait that long for an answer either."""
    current = extensions.get("timeout")
    if not isinstance(current, Mapping):
        return None
    finite = [float(v) for v in current.values() if v is not None and math.isfinite(float(v))]
    return max(finite) if finite else None


def with_timeout(extensions: Mapping[str, Any], timeout_s: float | None) -> Mapping[str, Any]:
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


def netloc(origin: str) -> str:
    """The Host header for a tier's `base_url` (``https://us.api.fireworks.ai`` -> its host)."""
    return origin.split("://", 1)[1]


def dump(body: Any) -> bytes:
    """A body as compact JSON bytes: UTF-8 as it is, or with ``\\u`` escapes when a string holds
    a lone surrogate (JSON carries it escaped; UTF-8 cannot)."""
    try:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":")).encode()


CALL_ID = "tiersel.call_id"
"""The request extension naming the call an upstream request is an attempt of (set by
`tiersel.Selector`; extensions never go on the wire): a transport under the selector can tell
which call it carries, as the batch job's does."""


def upstream_request(route: Route, effect: Send, to: Flavour) -> Any:
    """The request for one attempt, in the library of the transport it goes through (``to``):
    the caller's very request when the attempt changes nothing, else a copy with the step's
    body, headers and host, its timeouts capped at the time the attempt has. A watched attempt
    of a call that wants its answer whole asks for a stream (`tiersel.http.assemble`)."""
    timeout_s = effect.timeout_s
    content = route.content
    origin = effect.step.base_url
    body = effect.body
    if effect.watch is not None and not route.stream:
        body = as_stream(body, route.dialect)  # read as a stream for its pace, handed back whole
    if content is not None and body == route.body:
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
        content = dump(body)
    length = str(len(content))
    if to is route.flavour:
        url = route.url if origin is None else moved(str(route.url), origin)
        headers = route.headers.copy()
        headers["content-length"] = length
        if effect.headers:
            headers.update(effect.headers)
        if origin is not None:
            headers["host"] = netloc(origin)
    else:
        url = str(route.url) if origin is None else moved(str(route.url), origin)
        dropped = DROPPED_REQUEST_HEADERS if origin is None else MOVED_DROPPED
        headers = [(k, v) for k, v in route.headers.raw if k.lower() not in dropped]
        if origin is not None:
            headers.append((b"host", netloc(origin).encode("ascii")))
        headers.append((b"content-length", length.encode()))
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in effect.headers.items()]
    # A stream= body skips the client-side re-encoding of a Request(content=...).
    return to.request(
        "POST",
        url,
        headers=headers,
        stream=to.byte_stream(content),
        extensions=with_timeout(route.extensions, timeout_s),
    )
