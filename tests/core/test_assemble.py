"""A stream turned back into the body a non-streamed request gets (`tiersel.http.assemble`)."""

from __future__ import annotations

import json
from typing import Any

from tiersel.dialects import Dialect
from tiersel.http.assemble import as_stream, whole_answer


def _sse(doc: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(doc)}\n\n".encode()


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return _sse({"id": "c1", "created": 7, "model": "m", "choices": [choice], **extra})


def test_chat_chunks_join_into_one_message_with_its_tool_calls_and_usage() -> None:
    call = {"index": 0, "id": "t1", "type": "function", "function": {"name": "f", "arguments": ""}}
    more = {"index": 0, "function": {"arguments": '{"a":'}}
    last = {"index": 0, "function": {"arguments": " 1}"}}
    usage = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    data = b"".join(
        [
            _chunk({"role": "assistant", "content": "He"}),
            _chunk({"content": "llo", "reasoning_content": "hm"}),
            _chunk({"tool_calls": [call]}),
            _chunk({"tool_calls": [more]}),
            _chunk({"tool_calls": [last]}, "tool_calls"),
            _sse({"id": "c1", "choices": [], "usage": usage}),
            b"data: [DONE]\n\n",
        ]
    )
    doc = whole_answer(data, Dialect.openai)
    assert doc is not None
    assert doc["object"] == "chat.completion" and doc["id"] == "c1" and doc["usage"] == usage
    (choice,) = doc["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "Hello" and message["reasoning_content"] == "hm"
    assert message["tool_calls"] == [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]
    # A stream that broke before [DONE] is no answer.
    assert whole_answer(data[: data.index(b"data: [DONE]")], Dialect.openai) is None


def test_anthropic_events_build_the_message_and_its_blocks() -> None:
    usage = {"input_tokens": 9, "output_tokens": 1}
    message = {"id": "m1", "type": "message", "role": "assistant", "content": [], "usage": usage}
    start = {"type": "message_start", "message": message}

    def block(index: int, **content: Any) -> bytes:
        return _sse({"type": "content_block_start", "index": index, "content_block": content})

    def delta(index: int, kind: str, **fields: str) -> bytes:
        return _sse(
            {"type": "content_block_delta", "index": index, "delta": {"type": kind, **fields}}
        )

    stop = {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use"},
        "usage": {"output_tokens": 12},
    }
    events = [
        _sse(start, "message_start"),
        block(0, type="thinking", thinking=""),
        delta(0, "thinking_delta", thinking="so"),
        delta(0, "signature_delta", signature="sig"),
        block(1, type="text", text=""),
        delta(1, "text_delta", text="Hi"),
        block(2, type="tool_use", id="t", name="f", input={}),
        delta(2, "input_json_delta", partial_json='{"a": '),
        delta(2, "input_json_delta", partial_json="2}"),
        _sse(stop),
        _sse({"type": "message_stop"}),
    ]
    doc = whole_answer(b"".join(events), Dialect.anthropic)
    assert doc is not None and doc["stop_reason"] == "tool_use"
    assert doc["usage"] == {"input_tokens": 9, "output_tokens": 12}
    assert doc["content"] == [
        {"type": "thinking", "thinking": "so", "signature": "sig"},
        {"type": "text", "text": "Hi"},
        {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 2}},
    ]
    assert whole_answer(b"".join(events[:-1]), Dialect.anthropic) is None


def test_a_responses_stream_is_its_completed_response_and_a_failed_one_is_none() -> None:
    done = {"type": "response.completed", "response": {"id": "r", "output": [], "usage": {}}}
    delta = _sse({"type": "response.output_text.delta", "delta": "x"})
    assert whole_answer(delta + _sse(done), Dialect.responses) == done["response"]
    failed = {"type": "response.failed", "response": {"id": "r"}}
    assert whole_answer(delta + _sse(failed), Dialect.responses) is None


def test_asking_for_a_stream_asks_for_its_usage_where_it_must() -> None:
    assert as_stream({"model": "m"}, Dialect.openai) == {
        "model": "m",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert as_stream({"model": "m"}, Dialect.anthropic) == {"model": "m", "stream": True}
