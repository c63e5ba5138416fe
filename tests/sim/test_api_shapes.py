"""The four API shapes, end to end without a network: what the simulator writes for each is what
the openai SDK's own types accept (validated strictly), and what tiersel reads back from it (the
output cap, the prompt, the usage, a stream's events) is what was served."""

from __future__ import annotations

import itertools
import json
from typing import Any

import openai.types
import openai.types.responses
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tiersel
from tiersel.budget import MemoryLedger
from tiersel.clock import FakeClock
from tiersel.dialects import (
    Dialect,
    dialect_for_path,
    input_tokens,
    max_output_tokens,
    prompt_of,
    read_usage,
)
from tiersel.errors import RequestNotUnderstood
from tiersel.signals import Outcome
from tiersel.sim.provider import ResultKind, SimRequest, SimResult
from tiersel.sim.wire import Rendered, parse_request, render
from tiersel.wrap.streaming import StreamMeter

MODEL = "accounts/fireworks/models/kimi-k3"
EVENTS = pydantic.TypeAdapter(openai.types.responses.ResponseStreamEvent)


def _served(req: SimRequest, completion: int = 7, *, finish: str = "stop") -> Rendered:
    result = SimResult(
        status=200,
        kind=ResultKind.served,
        model_id=req.model,
        model="kimi-k3",
        tier="priority",
        ttft_s=0.5,
        duration_s=0.5 + 0.05 * (completion - 1),
        token_s=0.05,
        prompt_tokens=req.prompt_tokens,
        cached_tokens=3,
        completion_tokens=completion,
        finish_reason=finish,
    )
    return render(req, result, response_id="resp_sim00000001", created=1_700_000_000)


def _request(dialect: Dialect, body: dict[str, Any]) -> SimRequest:
    return parse_request(dialect, json.dumps(body).encode(), {})


def _stream_bytes(rendered: Rendered) -> bytes:
    return b"".join(chunk for _, chunk in rendered.chunks)


def _data(stream: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(line[6:])
        for line in stream.splitlines()
        if line.startswith(b"data: ") and line != b"data: [DONE]"
    ]


@pytest.mark.parametrize(
    ("path", "dialect"),
    [
        ("/inference/v1/chat/completions", Dialect.openai),
        ("/inference/v1/responses", Dialect.responses),
        ("/inference/v1/completions", Dialect.completions),
        ("/inference/v1/messages", Dialect.anthropic),
        ("/inference/v1/responses/resp_1", None),  # retrieving a stored response: passed through
        ("/inference/v1/embeddings", None),
    ],
)
def test_each_generation_path_has_its_dialect(path: str, dialect: Dialect | None) -> None:
    assert dialect_for_path(path) is dialect


def test_each_shape_names_its_own_output_cap() -> None:
    assert max_output_tokens({"max_output_tokens": 60}, Dialect.responses) == 60
    assert max_output_tokens({"max_tokens": 60}, Dialect.responses) is None  # not its field
    assert max_output_tokens({"max_tokens": 40}, Dialect.completions) == 40
    with pytest.raises(RequestNotUnderstood, match="max_output_tokens must be a positive"):
        max_output_tokens({"max_output_tokens": 0}, Dialect.responses)


def test_one_prompt_in_every_shape_is_counted_alike() -> None:
    text = "Summarise the quarterly report in three bullet points. " * 20
    chat = {"messages": [{"role": "user", "content": text}]}
    shapes = [
        (chat, Dialect.openai),
        ({"input": text}, Dialect.responses),
        ({"input": [{"role": "user", "content": text}]}, Dialect.responses),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": text}]}]},
            Dialect.responses,
        ),
        ({"prompt": text}, Dialect.completions),
    ]
    counted = [input_tokens(body, dialect=dialect) for body, dialect in shapes]
    assert len({estimate for estimate, _ in counted}) == 1, counted
    assert all(bound >= estimate for estimate, bound in counted)
    # Instructions count like a system prompt.
    with_system = input_tokens({**chat, "system": "Be terse."})
    with_instructions = input_tokens(
        {"input": text, "instructions": "Be terse."}, dialect=Dialect.responses
    )
    assert with_system[0] == with_instructions[0] > counted[0][0]


@pytest.mark.parametrize(
    ("body", "dialect", "message"),
    [
        ({"messages": "hi"}, Dialect.openai, "no 'messages' list"),
        ({"input": {"role": "user"}}, Dialect.responses, "no 'input' string or list"),
        ({"messages": []}, Dialect.responses, "no 'input' string or list"),
        ({"prompt": 3}, Dialect.completions, "no 'prompt' string or list"),
    ],
)
def test_a_missing_prompt_is_named(body: dict[str, Any], dialect: Dialect, message: str) -> None:
    with pytest.raises(RequestNotUnderstood, match=message):
        prompt_of(body, dialect)


def test_responses_usage_and_served_tier_are_read() -> None:
    payload = {
        "service_tier": "priority",
        "usage": {
            "input_tokens": 120,
            "input_tokens_details": {"cached_tokens": 100},
            "output_tokens": 30,
            "output_tokens_details": {"reasoning_tokens": 10},
        },
    }
    usage = read_usage(payload, Dialect.responses)
    assert usage == tiersel.dialects.Usage(120, 100, 30, "priority")


def test_a_budgeted_call_that_continues_a_stored_conversation_is_refused() -> None:
    body = {"model": MODEL, "input": "and then?", "previous_response_id": "resp_1"}
    free = tiersel.Selector(api_key="")
    call, _ = free.engine.call_for(body, Dialect.responses)  # counted by what the body holds
    assert call.input_tokens > 0
    budgeted = tiersel.Selector(api_key="", ledger=MemoryLedger(1.0))
    with pytest.raises(RequestNotUnderstood, match="previous_response_id: the prompt continues"):
        budgeted.engine.call_for(body, Dialect.responses)


@pytest.mark.parametrize("finish", ["stop", "length"])
def test_a_response_body_is_what_the_sdk_accepts(finish: str) -> None:
    req = _request(
        Dialect.responses,
        {"model": MODEL, "input": "hi", "max_output_tokens": 7, "service_tier": "priority"},
    )
    rendered = _served(req, finish=finish)
    doc = json.loads(rendered.body)
    response = openai.types.responses.Response.model_validate(doc, strict=False)
    assert response.output_text == " sim lorem ipsum dolor sit amet tier"
    assert response.status == ("incomplete" if finish == "length" else "completed")
    usage = read_usage(doc, Dialect.responses)
    assert usage is not None and (usage.completion_tokens, usage.cached_tokens) == (7, 3)
    assert usage.served_tier == "priority"


def test_a_completion_body_and_stream_are_what_the_sdk_accepts() -> None:
    body = {"model": MODEL, "prompt": "Once", "max_tokens": 7}
    plain = json.loads(_served(_request(Dialect.completions, body)).body)
    assert openai.types.Completion.model_validate(plain).choices[0].text.startswith(" sim")
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    chunks = _data(_stream_bytes(_served(_request(Dialect.completions, streamed))))
    # The API sends "finish_reason": null on every chunk but the last, which the SDK's type
    # (read without validation) does not spell: validate the others.
    final = [openai.types.Completion.model_validate(c) for c in chunks[-2:]]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]).count(" ") == 7
    assert final[0].choices[0].finish_reason == "stop" and not final[1].choices
    assert final[1].usage is not None and final[1].usage.completion_tokens == 7


STREAMED = {"model": MODEL, "input": "hi", "stream": True}


def _responses_stream(finish: str = "stop", *, named: bool = True) -> bytes:
    req = _request(Dialect.responses, STREAMED)
    data = _stream_bytes(_served(req, completion=40, finish=finish))
    if not named:  # a server that sends only data lines: the meter reads each event's type
        data = b"\n".join(line for line in data.split(b"\n") if not line.startswith(b"event:"))
    return data


def test_every_event_of_a_responses_stream_is_what_the_sdk_accepts() -> None:
    events = [EVENTS.validate_python(e) for e in _data(_responses_stream())]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response  # type: ignore[union-attr]
    assert done.output_text == deltas and done.usage is not None
    assert done.usage.output_tokens == 40


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(st.integers(min_value=0), max_size=30), st.booleans(), st.booleans())
def test_a_responses_stream_is_metered_whatever_the_chunking(
    cuts: list[int], named: bool, capped: bool
) -> None:
    data = _responses_stream("length" if capped else "stop", named=named)
    meter = StreamMeter(Dialect.responses, FakeClock(), 0.0)
    passed = b"".join(meter.feed(p) for p in _pieces(data, cuts)) + meter.flush()
    assert passed == data  # handed on byte for byte
    assert meter.finished and meter.content_events == 32  # the first token, then 31 chunks
    end = meter.end(exhausted=True)
    assert end.outcome is Outcome.ok and not end.usage_estimated
    assert end.usage is not None
    prompt = _request(Dialect.responses, STREAMED).prompt_tokens
    assert (end.usage.prompt_tokens, end.usage.cached_tokens) == (prompt, 3)
    assert (end.usage.completion_tokens, end.usage.served_tier) == (40, None)


@pytest.mark.parametrize(
    ("event", "outcome"),
    [
        (
            {
                "type": "response.failed",
                "response": {"error": {"code": "server_error", "message": "x"}, "usage": None},
            },
            Outcome.error,
        ),
        ({"type": "error", "code": "overloaded", "message": "busy"}, Outcome.shed),
    ],
)
def test_a_failed_responses_stream_is_a_failure(event: dict[str, Any], outcome: Outcome) -> None:
    meter = StreamMeter(Dialect.responses, FakeClock(), 0.0)
    delta = {"type": "response.output_text.delta", "delta": " a", "sequence_number": 1}
    for doc in (delta, event):
        meter.feed(f"event: {doc['type']}\ndata: {json.dumps(doc)}\n\n".encode())
    end = meter.end(exhausted=True)
    assert end.outcome is outcome
    assert end.usage_estimated and end.usage is not None and end.usage.completion_tokens == 1


def test_a_responses_stream_cut_before_its_final_event_is_a_failure() -> None:
    data = _responses_stream()
    cut = data[: data.index(b"event: response.completed")]
    meter = StreamMeter(Dialect.responses, FakeClock(), 0.0, input_tokens=lambda: 18)
    meter.feed(cut)
    end = meter.end(exhausted=True)
    assert end.outcome is Outcome.error and "before its final event" in end.detail
    # 40 tokens in 32 events: more than one an event, from their text (`output_tokens`); the
    # simulator's words run to about 5 bytes a token, against the 4 taken for English text.
    assert end.usage_estimated and end.usage is not None and end.usage.prompt_tokens == 18
    assert 32 < end.usage.completion_tokens <= 40 * 5.5 / 4, end.usage


@pytest.mark.parametrize(
    ("body", "dialect", "field"),
    [
        ({"messages": [{"role": "user", "content": "hi"}], "n": 20}, Dialect.openai, "n"),
        ({"prompt": "hi", "best_of": 5}, Dialect.completions, "best_of"),
        ({"prompt": "hi", "n": 2}, Dialect.completions, "n"),
    ],
)
def test_a_budgeted_call_asking_for_several_choices_is_refused(
    body: dict[str, Any], dialect: Dialect, field: str
) -> None:
    body = {"model": MODEL, "max_tokens": 100, **body}
    tiersel.Selector(api_key="").engine.call_for(body, dialect)  # no budget: nothing to reserve
    budgeted = tiersel.Selector(api_key="", ledger=MemoryLedger(1.0))
    with pytest.raises(RequestNotUnderstood, match=f"^{field}: under a budget tiersel reserves"):
        budgeted.engine.call_for(body, dialect)
    budgeted.engine.call_for({**body, field: 1}, dialect)  # one choice is fine
