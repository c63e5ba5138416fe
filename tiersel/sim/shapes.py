"""The simulator's response bodies and event streams, one pair per API shape.

One provider model answers every shape (`tiersel.sim.provider`); this module only writes its
answer the way each endpoint does:

- chat completions: ``chat.completion`` bodies, ``chat.completion.chunk`` streams ending in
  ``[DONE]``, usage in a chunk of its own when ``stream_options.include_usage`` asks for it;
- text completions: ``text_completion`` bodies and chunks, the same framing;
- the Responses API: ``response`` objects with one ``message`` output item, and typed event
  streams (``response.created`` ... ``response.output_text.delta`` ... ``response.completed``,
  or ``response.incomplete`` when the output cap cut the answer), usage in the final event, as
  platform.openai.com/docs/api-reference/responses-streaming describes them;
- Anthropic messages: ``message`` bodies and ``message_start`` ... ``message_stop`` streams.

Generated text is a fixed cycle of words, one word a token. Pure functions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tiersel.dialects import Dialect
from tiersel.sim.provider import SimRequest, SimResult

__all__ = ["Chunks", "Served", "Spans", "body", "stream", "text", "usage_doc"]

Spans = list[tuple[int, int, float]]
"""Token ranges ``[start, stop)`` of a stream's content chunks, each with its due time."""
Chunks = list[tuple[float, bytes]]
"""A stream's parts, each with the time it is due."""

_WORDS = ("sim", "lorem", "ipsum", "dolor", "sit", "amet", "tier", "token")


def text(start: int, stop: int) -> str:
    """The generated text of tokens ``start`` to ``stop``."""
    return "".join(f" {_WORDS[i % len(_WORDS)]}" for i in range(start, stop))


@dataclass(frozen=True, slots=True)
class Served:
    """A served request, ready to be written: ``usage`` in its shape (`usage_doc`), and the
    tier to echo as ``service_tier`` (None: no echo)."""

    req: SimRequest
    result: SimResult
    response_id: str
    created: int
    usage: dict[str, Any]
    echo: str | None


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def usage_doc(req: SimRequest, result: SimResult, echo: str | None) -> dict[str, Any]:
    """The ``usage`` object of ``req``'s shape."""
    prompt, cached, out = result.prompt_tokens, result.cached_tokens, result.completion_tokens
    if req.dialect is Dialect.anthropic:
        usage: dict[str, Any] = {
            "input_tokens": prompt - cached,
            "output_tokens": out,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
        }
        if echo is not None:
            usage["service_tier"] = echo
        return usage
    if req.dialect is Dialect.responses:
        return {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + out,
        }
    return {
        "prompt_tokens": prompt,
        "completion_tokens": out,
        "total_tokens": prompt + out,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def body(served: Served) -> dict[str, Any]:
    """A served request's whole response body."""
    req, result, echo = served.req, served.result, served.echo
    if req.dialect is Dialect.anthropic:
        return {
            "id": served.response_id,
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": [{"type": "text", "text": text(0, result.completion_tokens)}],
            "stop_reason": _stop_reason(result),
            "stop_sequence": None,
            "usage": served.usage,
        }
    if req.dialect is Dialect.responses:
        doc = _response(served, done=True)
        doc["usage"] = served.usage
        return doc
    if req.dialect is Dialect.completions:
        choice: dict[str, Any] = {"index": 0, "text": text(0, result.completion_tokens)}
        choice.update(logprobs=None, finish_reason=result.finish_reason)
        kind = "text_completion"
    else:
        message = {"role": "assistant", "content": text(0, result.completion_tokens)}
        choice = {"index": 0, "message": message, "finish_reason": result.finish_reason}
        kind = "chat.completion"
    doc = {
        "id": served.response_id,
        "object": kind,
        "created": served.created,
        "model": req.model,
        "choices": [choice],
        "usage": served.usage,
    }
    if echo is not None:
        doc["service_tier"] = echo
    return doc


def stream(served: Served, spans: Spans) -> Chunks:
    """A served request's stream: its first token alone, then the rest by ``spans``."""
    if served.req.dialect is Dialect.anthropic:
        return _anthropic_stream(served, spans)
    if served.req.dialect is Dialect.responses:
        return _responses_stream(served, spans)
    return _chunked_stream(served, spans)


def _stop_reason(result: SimResult) -> str:
    return "max_tokens" if result.finish_reason == "length" else "end_turn"


def _chunked_stream(served: Served, spans: Spans) -> Chunks:
    """Chat or text completion chunks, then the usage chunk if asked for, then ``[DONE]``."""
    req, result, echo = served.req, served.result, served.echo
    chat = req.dialect is Dialect.openai

    def chunk(piece: str | None, first: bool, finish: str | None) -> dict[str, Any]:
        if piece is None:
            choices: list[dict[str, Any]] = []
        elif chat:
            delta = {"role": "assistant", "content": piece} if first else {"content": piece}
            choices = [{"index": 0, "delta": delta, "finish_reason": finish}]
        else:
            choices = [{"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}]
        doc: dict[str, Any] = {
            "id": served.response_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": served.created,
            "model": req.model,
            "choices": choices,
        }
        if echo is not None:
            doc["service_tier"] = echo
        if req.include_usage:
            doc["usage"] = served.usage if piece is None else None
        return doc

    out: Chunks = []
    last = len(spans) - 1
    for i, (start, stop, due) in enumerate(spans):
        finish = result.finish_reason if i == last else None
        out.append((due, _sse(chunk(text(start, stop), i == 0, finish))))
    end = result.duration_s
    if req.include_usage:
        out.append((end, _sse(chunk(None, False, None))))
    out.append((end, b"data: [DONE]\n\n"))
    return out


def _response(served: Served, *, done: bool) -> dict[str, Any]:
    """A Responses API ``response`` object: finished (its output item whole), or just begun."""
    req, result, response_id = served.req, served.result, served.response_id
    status = "in_progress"
    if done:
        status = "incomplete" if result.finish_reason == "length" else "completed"
    doc: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": served.created,
        "status": status,
        "model": req.model,
        "output": [_message(response_id, result, done=True)] if done else [],
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": None,
        "max_output_tokens": req.max_tokens,
        "metadata": {},
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "usage": None,
    }
    if served.echo is not None:
        doc["service_tier"] = served.echo
    return doc


def _message(response_id: str, result: SimResult, *, done: bool) -> dict[str, Any]:
    content = [_part(text(0, result.completion_tokens))] if done else []
    return {
        "id": f"msg_{response_id}",
        "type": "message",
        "status": "completed" if done else "in_progress",
        "role": "assistant",
        "content": content,
    }


def _part(value: str) -> dict[str, Any]:
    return {"type": "output_text", "text": value, "annotations": []}


def _responses_stream(served: Served, spans: Spans) -> Chunks:
    """The Responses API's typed events, each with its ``sequence_number``."""
    result, response_id = served.result, served.response_id
    counter = iter(range(1 << 62))
    item_id = f"msg_{response_id}"
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}

    def event(kind: str, **fields: Any) -> bytes:
        return _sse({"type": kind, "sequence_number": next(counter), **fields}, kind)

    begun = _response(served, done=False)
    head = (
        event("response.created", response=begun)
        + event("response.in_progress", response=begun)
        + event(
            "response.output_item.added",
            output_index=0,
            item=_message(response_id, result, done=False),
        )
        + event("response.content_part.added", **where, part=_part(""))
    )
    out: Chunks = []
    for i, (start, stop, due) in enumerate(spans):
        delta = event("response.output_text.delta", **where, delta=text(start, stop), logprobs=[])
        out.append((due, head + delta if i == 0 else delta))
    whole = text(0, result.completion_tokens)
    done = _response(served, done=True)
    done["usage"] = served.usage
    final = "response.incomplete" if done["status"] == "incomplete" else "response.completed"
    tail = _tail(event, where, whole, _message(response_id, result, done=True))
    out.append((max(result.duration_s, spans[0][2]), tail + event(final, response=done)))
    return out


def _tail(
    event: Callable[..., bytes], where: dict[str, Any], whole: str, item: dict[str, Any]
) -> bytes:
    return (
        event("response.output_text.done", **where, text=whole, logprobs=[])
        + event("response.content_part.done", **where, part=_part(whole))
        + event("response.output_item.done", output_index=0, item=item)
    )


def _anthropic_stream(served: Served, spans: Spans) -> Chunks:
    req, result, response_id, usage = served.req, served.result, served.response_id, served.usage
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
    out: Chunks = []
    for i, (start, stop, due) in enumerate(spans):
        delta = _sse(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text(start, stop)},
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
