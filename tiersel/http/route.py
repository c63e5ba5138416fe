"""A generation request as tiersel reads it (`Route`): its path and dialect, its body, and its
requirements (the door's defaults, a `tiersel.requirements` block and hint headers, merged
once), with tiersel's hint headers taken out."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from tiersel.call import Requirements
from tiersel.dialects import (
    HINT_PREFIX,
    Dialect,
    dialect_for_path,
    parse_json,
)
from tiersel.errors import (
    RequestNotUnderstood,
)
from tiersel.http.context import current_scope
from tiersel.http.flavours import Flavour
from tiersel.http.hints import InvalidHint, merge_requirements, read_hints, strip_hints

HINT_PREFIX_BYTES = HINT_PREFIX.encode()


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


def scan_headers(raw: list[tuple[bytes, bytes]]) -> tuple[bool, bool, int | None]:
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
        elif low.startswith(HINT_PREFIX_BYTES):
            hints = True
    return hints, chunked, length


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


def generation(request: Any) -> tuple[str, Dialect] | None:
    """The path and dialect of a generation call to route; None to pass it through."""
    if request.method != "POST":
        return None
    path: str = request.url.path
    dialect = dialect_for_path(path)
    return (path, dialect) if dialect is not None else None


def read_route(
    request: Any,
    flavour: Flavour,
    path: str,
    dialect: Dialect,
    defaults: Requirements,
    tiers: Collection[str],
) -> Route:
    """Read a generation request (its body already read) into a `Route`.

    Its requirements are ``defaults`` (the door's), then a `tiersel.requirements` block,
    then its hint headers, merged once; a hint naming a tier not in ``tiers`` is an
    `InvalidHint`. Raises `RequestNotUnderstood` for a body that is not a JSON object.
    """
    raw = request.headers.raw
    hints, chunked, length = scan_headers(raw)
    hinted, source, kept = read_hints(raw) if hints else ({}, {}, None)
    req = merge_requirements(defaults, current_scope(), hinted, source)
    if "tiers" in hinted:
        _check_tiers(source["tiers"], hinted["tiers"], tiers)
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
        headers = flavour.headers([(k, v) for k, v in base if k.lower() != b"transfer-encoding"])
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


def _check_tiers(header: str, names: tuple[str, ...], known: Collection[str]) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidHint(
            header,
            ",".join(names),
            f"names unknown tier(s) {', '.join(unknown)} (known: {', '.join(known)})",
        )
