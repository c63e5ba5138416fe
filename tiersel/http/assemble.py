"""A streamed answer turned back into the one body the caller asked for, no I/O.

A door watches an attempt's pace on its stream (`tiersel.wrap.pace`), so for a call that wants
its answer whole it asks upstream for a stream (`as_stream`) and, once the stream has ended,
builds the body a non-streamed request would have got (`whole_answer`), in the call's dialect:

- chat completions: the deltas of each choice joined into its ``message`` (``content``,
  ``reasoning_content``, ``refusal``, and ``tool_calls`` by index, their ``arguments`` joined),
  its ``finish_reason`` and ``logprobs``; the chunks' ``id``, ``created``, ``model``,
  ``service_tier`` and ``system_fingerprint``; the ``usage`` of the final chunk;
- text completions: each choice's ``text`` joined, as ``text_completion``;
- the Responses API: the response of its ``response.completed`` (or ``.incomplete``) event,
  which is the whole response;
- Anthropic messages: ``message_start``'s message, its content blocks built from their start and
  deltas (text, thinking and its signature, a tool call's JSON input, citations), and
  ``message_delta``'s stop reason and usage.

None when the stream did not reach its end (it broke, or carried an error): the attempt failed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from tiersel.dialects import Dialect
from tiersel.http.sse import CHAT_TEXT, DONE, EVENT_END, event_data

__all__ = ["as_stream", "whole_answer"]

_CHUNK_FIELDS = ("id", "created", "model", "service_tier", "system_fingerprint")


def as_stream(body: Mapping[str, Any], dialect: Dialect) -> dict[str, Any]:
    """``body`` asking for a stream, with its usage where a stream reports it only when asked."""
    out = {**body, "stream": True}
    if dialect.chunked_usage:
        options = body.get("stream_options")
        extra = options if isinstance(options, dict) else {}
        out["stream_options"] = {**extra, "include_usage": True}
    return out


def whole_answer(data: bytes, dialect: Dialect) -> dict[str, Any] | None:
    """The body a non-streamed request would have got, from the whole stream ``data``; None
    when the stream did not reach its end."""
    events = list(_events(data))
    if dialect is Dialect.responses:
        return _responses(events)
    if dialect is Dialect.anthropic:
        return _anthropic(events)
    return _chunks(events, chat=dialect is Dialect.openai)


def _events(data: bytes) -> Iterator[Any]:
    """Each event's data, parsed (`DONE` as the string)."""
    for block in EVENT_END.split(data):
        event = event_data(block)
        if event is not None:
            yield event


def _chunks(events: list[Any], *, chat: bool) -> dict[str, Any] | None:
    doc: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    done = False
    for event in events:
        if event == DONE:
            done = True
            continue
        if not isinstance(event, dict) or event.get("error"):
            return None
        for key in _CHUNK_FIELDS:
            if key in event and key not in doc:
                doc[key] = event[key]
        if isinstance(event.get("usage"), dict):
            doc["usage"] = event["usage"]
        for choice in event.get("choices") or ():
            if isinstance(choice, dict):
                _choice(choices, choice, chat)
    if not done:
        return None
    doc["object"] = "chat.completion" if chat else "text_completion"
    doc["choices"] = [_finished(choices[i]) for i in sorted(choices)]
    return doc


def _choice(choices: dict[int, dict[str, Any]], chunk: dict[str, Any], chat: bool) -> None:
    """Fold one chunk's choice into the choice it continues."""
    index = chunk.get("index", 0)
    into = choices.get(index)
    if into is None:
        into = choices[index] = {"index": index, "finish_reason": None, "logprobs": None}
        if chat:
            into["message"] = {"role": "assistant", "content": None}
            into["_tools"] = {}
        else:
            into["text"] = ""
    if chunk.get("finish_reason") is not None:
        into["finish_reason"] = chunk["finish_reason"]
    logprobs = chunk.get("logprobs")
    if isinstance(logprobs, dict):
        merged = into["logprobs"] = into["logprobs"] or {}
        for key, value in logprobs.items():
            if isinstance(value, list):
                merged[key] = [*merged.get(key, []), *value]
    if not chat:
        into["text"] += chunk.get("text") or ""
        return
    delta = chunk.get("delta")
    if not isinstance(delta, dict):
        return
    message = into["message"]
    if isinstance(delta.get("role"), str):
        message["role"] = delta["role"]
    for key in CHAT_TEXT:
        if isinstance(delta.get(key), str):
            message[key] = (message.get(key) or "") + delta[key]
    for call in delta.get("tool_calls") or ():
        if isinstance(call, dict):
            _tool_call(into["_tools"], call)


def _tool_call(tools: dict[int, dict[str, Any]], chunk: dict[str, Any]) -> None:
    index = chunk.get("index", len(tools))
    into = tools.setdefault(
        index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
    )
    if chunk.get("id"):
        into["id"] = chunk["id"]
    if chunk.get("type"):
        into["type"] = chunk["type"]
    fn = chunk.get("function")
    if isinstance(fn, dict):
        for key in ("name", "arguments"):
            if isinstance(fn.get(key), str):
                into["function"][key] += fn[key]


def _finished(choice: dict[str, Any]) -> dict[str, Any]:
    tools = choice.pop("_tools", None)
    if tools:
        choice["message"]["tool_calls"] = [tools[i] for i in sorted(tools)]
    return choice


def _responses(events: list[Any]) -> dict[str, Any] | None:
    for event in events:
        if not isinstance(event, dict):
            continue
        kind = event.get("type")
        if kind in ("response.completed", "response.incomplete"):
            response = event.get("response")
            return response if isinstance(response, dict) else None
        if kind in ("response.failed", "error"):
            return None
    return None


def _anthropic(events: list[Any]) -> dict[str, Any] | None:
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    inputs: dict[int, str] = {}
    for event in events:
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "message_start":
            message = dict(event.get("message") or {})
        elif kind == "content_block_start":
            blocks[event.get("index", len(blocks))] = dict(event.get("content_block") or {})
        elif kind == "content_block_delta":
            _block_delta(blocks, inputs, event.get("index", 0), event.get("delta") or {})
        elif kind == "message_delta" and message is not None:
            message.update({k: v for k, v in (event.get("delta") or {}).items()})
            message["usage"] = {**(message.get("usage") or {}), **(event.get("usage") or {})}
        elif kind == "error":
            return None
        elif kind == "message_stop" and message is not None:
            for index, partial in inputs.items():
                blocks[index]["input"] = json.loads(partial) if partial.strip() else {}
            message["content"] = [blocks[i] for i in sorted(blocks)]
            return message
    return None


def _block_delta(
    blocks: dict[int, dict[str, Any]], inputs: dict[int, str], index: int, delta: dict[str, Any]
) -> None:
    block = blocks.setdefault(index, {"type": "text", "text": ""})
    kind = delta.get("type")
    if kind == "input_json_delta":
        inputs[index] = inputs.get(index, "") + str(delta.get("partial_json", ""))
    elif kind == "citations_delta":
        block.setdefault("citations", []).append(delta.get("citation"))
    elif kind == "signature_delta":
        block["signature"] = delta.get("signature", "")
    else:  # text_delta, thinking_delta: the text is the field beside the type
        for key, value in delta.items():
            if key != "type" and isinstance(value, str):
                block[key] = (block.get(key) or "") + value
