"""HTTP bodies in and out of the simulator: reading requests, writing responses and SSE streams.

Pure functions, shared by the HTTP server and the in-process transports.

Prompt tokens are estimated from the request text with `tiersel.dialects.estimate_input_tokens`
at 4 bytes a token (what BPE tokenizers average on English text; tiersel's own client-side
estimate uses 3, so it errs high), counting message contents, ``system`` and ``tools`` plus 8
tokens of framing per message. The cacheable prefix is everything but the last message (with
``system`` and ``tools``); it is identified by a SHA-256 of its canonical JSON.

Generated text is a fixed cycle of words, one word a token. Streams send the first token alone
at the time to first token, then the rest in up to 31 chunks, each when its last token is due.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tiersel.dialects import HINT_PREFIX, Dialect, estimate_input_tokens, max_output_tokens
from tiersel.errors import RequestNotUnderstood
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
_WORDS = ("sim", "lorem", "ipsum", "dolor", "sit", "amet", "tier", "token")


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
    include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
    try:
        prompt = estimate_input_tokens(body, bytes_per_token=BYTES_PER_TOKEN)
        max_tokens = max_output_tokens(body, dialect)
    except RequestNotUnderstood as exc:
        raise BadRequest(str(exc)) from None
    prefix, prefix_tokens = _prefix(body)
    return SimRequest(
        model=model,
        prompt_tokens=prompt,
        max_tokens=max_tokens,
        service_tier=tier,
        dialect=dialect,
        stream=stream,
        include_usage=include_usage,
        hinted=any(k.lower().startswith(HINT_PREFIX) for k in headers),
        prefix=prefix,
        prefix_tokens=prefix_tokens,
    )


def _prefix(body: Mapping[str, Any]) -> tuple[str | None, int]:
    messages = body["messages"]
    part = {"messages": messages[:-1], "system": body.get("system"), "tools": body.get("tools")}
    if not part["messages"] and not part["system"] and not part["tools"]:
        return None, 0
    canonical = json.dumps(part, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return digest, estimate_input_tokens(part, bytes_per_token=BYTES_PER_TOKEN)


def error_body(error_type: str, code: str, message: str) -> bytes:
    """The Fireworks error body: ``{"error": {"object": "error", "type", "code", "message"}}``."""
    doc = {"error": {"object": "error", "type": error_type, "code": code, "message": message}}
    return json.dumps(doc).encode()


def json_response(status: int, doc: Any, *, at_s: float = 0.0) -> Rendered:
    return Rendered(status, (("content-type", "application/json"),), json.dumps(doc).encode(), at_s)


def _text(start: int, stop: int) -> str:
    return "".join(f" {_WORDS[i % len(_WORDS)]}" for i in range(start, stop))


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
    if result.tier == "priority":
        return "priority"
    return "default" if dialect is Dialect.openai else "standard"


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
    if req.dialect is Dialect.openai:
        usage: dict[str, Any] = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
        }
    else:
        usage = {
            "input_tokens": result.prompt_tokens - result.cached_tokens,
            "output_tokens": result.completion_tokens,
            "cache_read_input_tokens": result.cached_tokens,
            "cache_creation_input_tokens": 0,
        }
        if echo is not None:
            usage["service_tier"] = echo
    if not req.stream:
        doc = (
            _openai_body(req, result, response_id, created, usage, echo)
            if req.dialect is Dialect.openai
            else _anthropic_body(req, result, response_id, usage)
        )
        return Rendered(
            200,
            tuple(_headers(result, stream=False)),
            json.dumps(doc).encode(),
            at_s=result.duration_s,
        )
    spans = _spans(result)
    if req.dialect is Dialect.openai:
        chunks = _openai_stream(req, result, response_id, created, usage, echo, spans)
    else:
        chunks = _anthropic_stream(req, result, response_id, usage, spans)
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


def _openai_body(
    req: SimRequest,
    result: SimResult,
    response_id: str,
    created: int,
    usage: dict[str, Any],
    echo: str | None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": req.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _text(0, result.completion_tokens)},
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": usage,
    }
    if echo is not None:
        doc["service_tier"] = echo
    return doc


def _anthropic_body(
    req: SimRequest, result: SimResult, response_id: str, usage: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": response_id,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": [{"type": "text", "text": _text(0, result.completion_tokens)}],
        "stop_reason": _stop_reason(result),
        "stop_sequence": None,
        "usage": usage,
    }


def _stop_reason(result: SimResult) -> str:
    return "max_tokens" if result.finish_reason == "length" else "end_turn"


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def _openai_stream(
    req: SimRequest,
    result: SimResult,
    response_id: str,
    created: int,
    usage: dict[str, Any],
    echo: str | None,
    spans: list[tuple[int, int, float]],
) -> list[tuple[float, bytes]]:
    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": req.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if echo is not None:
            doc["service_tier"] = echo
        if req.include_usage:
            doc["usage"] = None
        return doc

    out: list[tuple[float, bytes]] = []
    for i, (start, stop, due) in enumerate(spans):
        delta: dict[str, Any] = {"content": _text(start, stop)}
        if i == 0:
            delta = {"role": "assistant", **delta}
        last = i == len(spans) - 1
        out.append((due, _sse(chunk(delta, result.finish_reason if last else None))))
    end = result.duration_s
    if req.include_usage:
        final = chunk({}, None)
        final["choices"] = []
        final["usage"] = usage
        out.append((end, _sse(final)))
    out.append((end, b"data: [DONE]\n\n"))
    return out


def _anthropic_stream(
    req: SimRequest,
    result: SimResult,
    response_id: str,
    usage: dict[str, Any],
    spans: list[tuple[int, int, float]],
) -> list[tuple[float, bytes]]:
    start_usage = {**usage, "output_tokens": 1}
    message: dict[str, Any] = {
        "id": response_id,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    first = spans[0][2]
    head = _sse({"type": "message_start", "message": message}, "message_start") + _sse(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        "content_block_start",
    )
    out: list[tuple[float, bytes]] = []
    for i, (start, stop, due) in enumerate(spans):
        delta = _sse(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": _text(start, stop)},
            },
            "content_block_delta",
        )
        out.append((due, head + delta if i == 0 else delta))
    end = result.duration_s
    tail = (
        _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        + _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": _stop_reason(result), "stop_sequence": None},
                "usage": usage,
            },
            "message_delta",
        )
        + _sse({"type": "message_stop"}, "message_stop")
    )
    out.append((max(end, first), tail))
    return out
