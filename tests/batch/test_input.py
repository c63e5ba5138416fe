"""Reading batch input: line formats, per-line requirements, and bad lines with their reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiersel.batch.input import BatchRequest, InvalidLine, LineParser, iter_lines, scan_input
from tiersel.call import Requirements
from tiersel.dialects import TOKEN_LIMIT, Dialect, estimate_input_tokens
from tiersel.pricing import load_pricing
from tiersel.selector import Selector

from .conftest import batch_line, body, write_jsonl

PRICING = load_pricing()


@pytest.fixture
def parser() -> LineParser:
    return LineParser(PRICING, Requirements(deadline_s=30), default_max_tokens=None)


def parse(parser: LineParser, doc: object, line: int = 7) -> BatchRequest | InvalidLine:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return parser.parse(line, raw)


def test_openai_batch_line(parser: LineParser) -> None:
    req = parse(
        parser,
        batch_line("req-1", body(1), tiersel={"reliability": 0.99, "tiers": "standard,priority"}),
    )
    assert isinstance(req, BatchRequest)
    assert (req.custom_id, req.line, req.path) == ("req-1", 7, "/chat/completions")
    assert req.requirements.deadline_s == 30  # the job's default
    assert req.requirements.reliability == 0.99  # the line's own
    assert req.requirements.tiers == ("standard", "priority")
    assert req.body == body(1)


def test_bare_body_is_identified_by_its_line_number_and_loses_its_hints(parser: LineParser) -> None:
    req = parse(parser, {**body(3), "tiersel": {"max_cost_usd": 0.5}}, line=12)
    assert isinstance(req, BatchRequest)
    assert req.custom_id == "12"
    assert "tiersel" not in req.body  # never sent upstream
    assert req.requirements.max_cost_usd == 0.5


def test_anthropic_messages_url(parser: LineParser) -> None:
    doc = {"model": "kimi-k3", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    req = parse(parser, batch_line("a", doc, url="/v1/messages"))
    assert isinstance(req, BatchRequest) and req.path == "/messages"


def test_default_max_tokens_is_written_into_the_body() -> None:
    p = LineParser(PRICING, Requirements(), default_max_tokens=321)
    req = p.parse(1, json.dumps(body(1, max_tokens=None)).encode())
    assert isinstance(req, BatchRequest)
    assert req.body["max_tokens"] == 321
    # The selector then reads the cap it will reserve for from the body.
    call, _ = Selector(api_key="", bytes_per_token=1.0).engine.call_for(req.body, Dialect.openai)
    assert call.max_output_tokens == 321 and call.input_tokens >= len(b"hello there #1")


@pytest.mark.parametrize(
    ("doc", "custom_id", "reason"),
    [
        (
            b'{"custom_id": "x", "body": {',
            "7",
            "invalid JSON: the line ends at column 28 before its JSON value does (cut off?)",
        ),
        (
            b'{"custom_id": "x", "body": {]}',
            "7",
            "Expecting property name enclosed in double quotes (column 29)",
        ),
        (b"\xff\xfe{}", "7", "not UTF-8"),
        # Read by Python's json, then refused when the request was written to be sent.
        (
            b'{"model": "kimi-k3", "max_tokens": 5, "temperature": NaN, "messages": []}',
            "7",
            "invalid JSON: NaN is not a JSON value (JSON numbers are finite)",
        ),
        (b'{"model": "kimi-k3", "top_p": -Infinity}', "7", "invalid JSON: -Infinity is not a"),
        ([1, 2], "7", "expected a JSON object, got an array"),
        (
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
            "7",
            "model must be a non-empty string",
        ),
        (body(1, model="gpt-9-turbo"), "7", "unknown model 'gpt-9-turbo'"),
        (body(1, model=42), "7", "model must be a non-empty string, got a number"),
        (body(1, messages="hi"), "7", "messages must be a non-empty array, got a string"),
        (body(1, messages=[]), "7", "messages must be a non-empty array, got an empty array"),
        (body(1, max_tokens="100"), "7", "max_tokens must be a positive integer, got '100'"),
        (body(1, max_tokens=0), "7", "max_tokens must be a positive integer, got 0"),
        (
            body(1, max_tokens=None),
            "7",
            "no max_tokens: a hard budget never sends a call unbounded",
        ),
        (
            body(1, max_tokens=10, max_completion_tokens=20),
            "7",
            "max_tokens and max_completion_tokens disagree",
        ),
        (body(1, n=3), "7", "n: only one choice per line"),
        (body(1, stream=True), "7", "stream: a batch collects whole responses"),
        (
            {**body(1), "tiersel": {"reliability": 2}},
            "7",
            "tiersel.reliability: Input should be less than or equal to 1",
        ),
        (
            {**body(1), "tiersel": {"tiers": ["priorty"]}},
            "7",
            "tiersel.tiers: unknown tier 'priorty'",
        ),
        (
            {**body(1), "tiersel": {"deadline": 3}},
            "7",
            "tiersel.deadline: Extra inputs are not permitted",
        ),
        ({**body(1), "tiersel": "fast"}, "7", "tiersel must be a JSON object, got a string"),
        (batch_line("c-1", body(1), method="GET"), "c-1", "method must be POST, got 'GET'"),
        (
            batch_line("c-2", body(1), url="/v1/embeddings"),
            "c-2",
            "url '/v1/embeddings' is not a generation endpoint a batch runs",
        ),
        (batch_line("c-3", "hello"), "c-3", "body must be a JSON object, got a string"),
        (
            batch_line("c-5", body(1, model="accounts/fireworks/routers/auto")),
            "c-5",
            "has no price in the price table fireworks.yaml; under a budget every call",
        ),
        (
            batch_line("c-6", body(1, model="kimi-k3x")),
            "c-6",
            "unknown model 'kimi-k3x': not in the price table fireworks.yaml (closest: kimi-k3",
        ),
        (batch_line(7, body(1)), "7", "custom_id must be a non-empty string, got a number"),  # type: ignore[arg-type]
        (
            {**batch_line("c-4", body(1)), "extra": 1},
            "c-4",
            "unknown field 'extra' in a batch line",
        ),
        # Past the model's output limit: it was reserved at that cap (budget_exhausted, "the
        # cheapest needed $15000000"), or sent, where the provider refuses it.
        (
            body(1, max_tokens=200_000),
            "7",
            "max_tokens 200,000 is above the model's limit: kimi-k3 writes at most 131,072"
            " tokens (the price table's max_output_tokens)",
        ),
        # A batch line with no body was read as a bare body: its id lost, 'model' blamed.
        (
            {"custom_id": "nobody", "method": "POST", "url": "/v1/chat/completions"},
            "nobody",
            "a batch line needs 'body', the request's JSON object",
        ),
        (
            {"custom_id": "typo", "url": "/v1/chat/completions", "bdy": body(1)},
            "typo",
            "a batch line needs 'body', the request's JSON object (unknown field 'bdy')",
        ),
    ],
)
def test_bad_lines_say_what_is_wrong(
    parser: LineParser, doc: object, custom_id: str, reason: str
) -> None:
    got = parse(parser, doc)
    assert isinstance(got, InvalidLine), got
    assert got.line == 7 and got.custom_id == custom_id
    assert reason in got.reason, got.reason


def test_scan_and_iterate_stream_non_blank_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [body(1), "", "   ", body(2)])
    with open(path, "ab") as f:
        f.write(json.dumps(body(3)).encode())  # a last line without a newline
    scan = scan_input(path)
    assert scan.lines == 3 and scan.size == path.stat().st_size
    assert [n for n, _ in iter_lines(path)] == [1, 4, 5]
    assert scan_input(tmp_path / "in.jsonl").sha256 == scan.sha256


def test_the_prompt_bound_counts_tool_schemas_whole() -> None:
    # Schema keys and type names reach the prompt too, not only the descriptions' text.
    tools = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "parameters": {
                    "type": "object",
                    "properties": {f"field_{i}": {"type": "string"} for i in range(20)},
                },
            },
        }
    ]
    doc = body(1, tools=tools)
    rendered = len(json.dumps(tools, separators=(",", ":")))
    assert estimate_input_tokens(doc, bytes_per_token=1.0) >= rendered + len(b"hello there #1")


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/v1/chat/completions", "max_tokens"),
        ("/v1/chat/completions", "max_completion_tokens"),
        ("/v1/messages", "max_tokens"),
    ],
)
def test_an_output_cap_too_large_for_a_float_makes_an_invalid_line(
    parser: LineParser, url: str, field: str
) -> None:
    doc = {"model": "kimi-k3", "messages": [{"role": "user", "content": "hi"}], field: 10**400}
    got = parse(parser, batch_line("big", doc, url=url))
    assert isinstance(got, InvalidLine), got
    assert (got.line, got.custom_id) == (7, "big")
    assert got.reason == f"{field} must be at most {TOKEN_LIMIT} (2**53), got a 401-digit number"


def test_a_messages_line_capped_only_by_max_completion_tokens_is_invalid(
    parser: LineParser,
) -> None:
    """/v1/messages has no max_completion_tokens: such a line states no cap its API honours, so
    it must not be sent as if it were capped."""
    for value in (10, 10**400):
        doc = {"model": "kimi-k3", "messages": [{"role": "user", "content": "hi"}]}
        got = parse(
            parser, batch_line("m", {**doc, "max_completion_tokens": value}, url="/v1/messages")
        )
        assert isinstance(got, InvalidLine), got
        assert got.reason == (
            "max_completion_tokens is not a /v1/messages field: set max_tokens instead"
        )


def test_a_number_with_more_digits_than_python_reads_makes_an_invalid_line(
    parser: LineParser,
) -> None:
    raw = (
        json.dumps(body(1)).encode().replace(b'"max_tokens": 50', b'"max_tokens": 1' + b"0" * 5000)
    )
    got = parser.parse(7, raw)
    assert isinstance(got, InvalidLine), got
    assert got.reason.startswith("invalid JSON: a number with more than 4300 digits"), got.reason


def test_a_default_output_cap_too_large_for_a_float_is_refused() -> None:
    with pytest.raises(ValueError, match=r"default_max_tokens must be at most 9007199254740992 "):
        LineParser(PRICING, Requirements(), default_max_tokens=10**400)


def test_unknown_job_wide_tiers_are_refused_up_front() -> None:
    with pytest.raises(ValueError) as info:
        LineParser(PRICING, Requirements(tiers="standrd,priority"), default_max_tokens=None)
    assert str(info.value) == (
        "tiers: unknown tier 'standrd' (known: standard, priority, fast, fast_us, flex,"
        " spot, ultrafast, us, us_priority)"
    )
