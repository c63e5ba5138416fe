"""HTTP bodies in and out of the simulator: reading requests, writing responses and SSE streams.

Pure functions, shared by the HTTP server and the in-process transports.

Prompt tokens are estimated from the request text with `tiersel.dialects.estimate_input_tokens`
at 4 bytes a token (what BPE tokenizers average on English text; tiersel's own client-side
estimate uses 3, so it errs high), counting message contents, ``system`` and ``tools`` plus 8
tokens of framing per message. The cacheable prefixes are taken at message boundaries (the
system prompt and tools, then each message in turn), as tiersel names them
(`tiersel.prompts.prompt_prefixes`).

Streams send the first token alone at the time to first token, then the rest in up to 31 chunks,
each when its last token is due; the bodies and events of each API shape are `tiersel.sim.shapes`'.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tiersel.dialects import (
    HINT_PREFIX,
    Dialect,
    estimate_input_tokens,
    max_output_tokens,
)
from tiersel.errors import RequestNotUnderstood
from tiersel.prompts import prompt_prefixes
from tiersel.sim import shapes
from tiersel.sim.provider import SimRequest, SimResult

__all__ = [
    "BYTES_PER_TOKEN",
    "BadRequest",
    "Rendered",
    "error_body",
    "json_response",
    "parse_request",
    "render",
]

BYTES_PER_TOKEN = 4.0
_MAX_CHUNKS = 32


class BadRequest(ValueError):
    """A request body the simulator cannot read (answered with HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Rendered:
    """A response ready to send. Times are scenario seconds from the request's arrival.

    The status and headers (and ``body``, for a non-streamed response) are due at ``at_s``;
    each of ``chunks`` is a ``(due_s, bytes)`` part of a streamed body. ``broken`` means the
    stream must end abruptly after the last chunk (a connection lost mid-way).
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    at_s: float = 0.0
    chunks: tuple[tuple[float, bytes], ...] = ()
    broken: bool = False
    result: SimResult | None = None  # what the provider did, for a generation request

    @property
    def streamed(self) -> bool:
        return bool(self.chunks)


def parse_request(dialect: Dialect, content: bytes, headers: Mapping[str, str]) -> SimRequest:
    """The `SimRequest` a generation body describes. Raises `BadRequest` saying what is wrong."""
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("the request body has no 'model' string")
    tier = body.get("service_tier")
    if tier is not None and not isinstance(tier, str):
        raise BadRequest(f"service_tier must be a string, got {tier!r}")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be a boolean, got {stream!r}")
    options = body.get("stream_options")
    include_usage = (
        dialect.chunked_usage
        and isinstance(options, Mapping)
        and options.get("include_usage") is True
    )
    try:
        prompt = estimate_input_tokens(body, bytes_per_token=BYTES_PER_TOKEN, dialect=dialect)
        max_tokens = max_output_tokens(body, dialect)
    except RequestNotUnderstood as exc:
        raise BadRequest(str(exc)) from None
    prefixes: tuple[tuple[str | bytes, int], ...] = prompt_prefixes(body, dialect, prompt)
    return SimRequest(
        model=model,
        prompt_tokens=prompt,
        max_tokens=max_tokens,
        service_tier=tier,
        dialect=dialect,
        stream=stream,
        include_usage=include_usage,
        hinted=any(k.lower().startswith(HINT_PREFIX) for k in headers),
        prefixes=prefixes,
    )


def error_body(error_type: str, code: str, message: str) -> bytes:
    """The Fireworks error body: ``{"error": {"object": "error", "type", "code", "message"}}``."""
    doc = {"error": {"object": "error", "type": error_type, "code": code, "message": message}}
    return json.dumps(doc).encode()


def json_response(status: int, doc: Any, *, at_s: float = 0.0) -> Rendered:
    return Rendered(status, (("content-type", "application/json"),), json.dumps(doc).encode(), at_s)


def _headers(result: SimResult, *, stream: bool) -> list[tuple[str, str]]:
    out = [("content-type", "text/event-stream" if stream else "application/json")]
    if stream:
        out.append(("cache-control", "no-cache"))
    limit = result.rate_limit
    if limit is not None:
        if limit.prompt_tokens_per_s is not None:
            out.append(("x-ratelimit-limit-tokens-prompt", f"{limit.prompt_tokens_per_s:g}"))
        if limit.generated_tokens_per_s is not None:
            out.append(("x-ratelimit-limit-tokens-generated", f"{limit.generated_tokens_per_s:g}"))
    if result.retry_after_s is not None:
        out.append(("retry-after", f"{result.retry_after_s:g}"))
    if result.tier is not None:
        out.append(("x-sim-tier", result.tier))
    out.append(("x-sim-ttft-s", f"{result.ttft_s:.6f}"))
    out.append(("x-sim-duration-s", f"{result.duration_s:.6f}"))
    return out


def _echo(req: SimRequest, result: SimResult, dialect: Dialect) -> str | None:
    if req.service_tier is None:
        return None
    if result.tier is not None and (result.tier == "priority" or result.tier.endswith("_priority")):
        return "priority"  # a router's priority tier (us_priority) is priority on the wire too
    return "standard" if dialect is Dialect.anthropic else "default"


def render(
    req: SimRequest, result: SimResult, *, response_id: str, created: int, echo_tier: bool = True
) -> Rendered:
    """The HTTP response for ``result``, in ``req``'s dialect, streamed if it asked for a stream."""
    if not result.ok:
        body = error_body(
            result.error_type or "error", result.error_code or "error", result.message or ""
        )
        return Rendered(
            result.status, tuple(_headers(result, stream=False)), body, at_s=result.duration_s
        )
    echo = _echo(req, result, req.dialect) if echo_tier else None
    served = shapes.Served(
        req, result, response_id, created, shapes.usage_doc(req, result, echo), echo
    )
    if not req.stream:
        doc = shapes.body(served)
        return Rendered(
            200,
            tuple(_headers(result, stream=False)),
            json.dumps(doc).encode(),
            at_s=result.duration_s,
        )
    spans = _spans(result)
    chunks = shapes.stream(served, spans)
    broken = result.stream_breaks
    if broken:
        chunks = chunks[: max(1, len(spans) // 2)]
    return Rendered(200, tuple(_headers(result, stream=True)), chunks=tuple(chunks), broken=broken)


def _spans(result: SimResult) -> list[tuple[int, int, float]]:
    """Token ranges of the stream's content chunks, each with the time its last token is due."""
    n = result.completion_tokens
    spans = [(0, 1, result.ttft_s)]
    rest = n - 1
    parts = min(rest, _MAX_CHUNKS - 1)
    start = 1
    for i in range(parts):
        stop = 1 + rest * (i + 1) // parts
        spans.append((start, stop, result.ttft_s + (stop - 1) * result.token_s))
        start = stop
    return spans
