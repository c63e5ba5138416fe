"""Reading traces: both formats, the shipped slices, and errors that name the input and the line."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiersel.replay.sources import load_trace
from tiersel.replay.traces import (
    SHIPPED_TRACES,
    TraceError,
    TraceRequest,
    parse_trace,
    shipped_trace,
)

# The sha256 of each shipped slice, as stated in tiersel/replay/data/README.md.
SHIPPED_SHA256 = {
    "azure-code": "dc3112fc3c56b09f6ab7b78a7bfb8801d7924def14fe2a728f3ea9dffbd34e99",
    "azure-conv": "bc722df3051a1373a275cc40aeb55c6ff4c81475901b688e23aac794f225dfd0",
}


def test_shipped_traces_are_the_documented_bytes_and_parse_whole() -> None:
    data = resources.files("tiersel.replay").joinpath("data")
    readme = data.joinpath("README.md").read_text(encoding="utf-8")
    assert "CC-BY 4.0" in readme and "Splitwise" in readme and "ISCA 2024" in readme
    for name, file in SHIPPED_TRACES.items():
        raw = data.joinpath(file).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == SHIPPED_SHA256[name]
        assert SHIPPED_SHA256[name] in readme
        trace = shipped_trace(name)
        assert len(trace) == raw.count(b"\n") - 1  # every data row, CRLF endings
        arrivals = [r.arrival_s for r in trace]
        assert arrivals[0] == 0.0 and arrivals == sorted(arrivals)
    code = load_trace("azure-code")
    assert len(code) == 7000
    assert (code.requests[0].input_tokens, code.requests[0].output_tokens) == (4808, 10)
    # 18:17:03.9799600 -> 18:17:04.0319600 (seven fractional digits)
    assert code.requests[1].arrival_s == pytest.approx(0.052, abs=1e-6)
    assert code.duration_s == pytest.approx(2275.87, abs=0.01)


def test_plain_csv_with_optional_requirements(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text(
        "timestamp_s,input_tokens,output_tokens,deadline_s,reliability\n"
        "100.5,1200,300,10,0.99\n"
        "101.0,800,50,,\n"
        "100.0,10,5,60,\n"
    )
    trace = load_trace(path)
    assert trace.name == "mine"
    got = [
        (r.arrival_s, r.input_tokens, r.output_tokens, r.deadline_s, r.reliability) for r in trace
    ]
    assert got == [
        (0.0, 10, 5, 60.0, None),
        (0.5, 1200, 300, 10.0, 0.99),
        (1.0, 800, 50, None, None),
    ]


def test_plain_csv_may_name_each_requests_cacheable_prefix() -> None:
    trace = parse_trace(
        "timestamp_s,input_tokens,output_tokens,deadline_s,prefix,prefix_tokens\n"
        "0,5000,10,,chat/1,4000\n1,900,10,8,,\n"
    )
    first, second = trace.requests
    assert (first.prefix, first.prefix_tokens, first.deadline_s) == ("chat/1", 4000, None)
    assert (second.prefix, second.prefix_tokens, second.deadline_s) == (None, 0, 8.0)


def test_plain_csv_may_give_only_reliability() -> None:
    trace = parse_trace("timestamp_s,input_tokens,output_tokens,reliability\n0,1,1,0.9\n")
    assert trace.requests[0].reliability == 0.9 and trace.requests[0].deadline_s is None


def test_rows_out_of_time_order_are_replayed_in_time_order_ties_as_they_came() -> None:
    # Traces merged from several files come out of order: replayed by arrival, from the earliest
    # (arrivals count from it), rows of one time in the file's order; each keeps its line.
    trace = parse_trace("timestamp_s,input_tokens,output_tokens\n5,1,1\n2,2,2\n5,3,3\n2,4,4\n")
    got = [(r.arrival_s, r.input_tokens, r.line) for r in trace.requests]
    assert got == [(0.0, 2, 3), (0.0, 4, 5), (3.0, 1, 2), (3.0, 3, 4)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "trace.csv: empty: expected a header line"),
        ("a,b,c\n1,2,3\n", "trace.csv: line 1: unrecognised header 'a,b,c'"),
        ("timestamp_s,input_tokens,output_tokens\n", "trace.csv: no requests after the header"),
        (
            "timestamp_s,input_tokens,output_tokens\n1,2,3\n2,x,3\n",
            "trace.csv: line 3: input_tokens 'x' is not a whole number",
        ),
        (
            "timestamp_s,input_tokens,output_tokens\n1,2\n",
            "trace.csv: line 2: expected 3 fields, found 2",
        ),
        (
            "timestamp_s,input_tokens,output_tokens\nnan,2,3\n",
            "trace.csv: line 2: timestamp_s 'nan' is not a finite number",
        ),
        (
            "timestamp_s,input_tokens,output_tokens\n1,-2,3\n",
            "trace.csv: line 2: input_tokens '-2' must be >= 0",
        ),
        (
            "timestamp_s,input_tokens,output_tokens,deadline_s\n1,2,3,0\n",
            "trace.csv: line 2: deadline_s '0' must be > 0",
        ),
        (
            "timestamp_s,input_tokens,output_tokens,reliability\n1,2,3,1.5\n",
            "trace.csv: line 2: reliability '1.5' must be in (0, 1]",
        ),
        (
            "timestamp_s,input_tokens,output_tokens,deadline_s,deadline_s\n",
            "trace.csv: line 1: unrecognised header",
        ),
        (
            "timestamp_s,input_tokens,output_tokens,prefix\n1,2,3,p\n",
            "trace.csv: line 1: unrecognised header",
        ),
        (
            "timestamp_s,input_tokens,output_tokens,prefix,prefix_tokens\n1,20,3,p,21\n",
            "trace.csv: line 2: prefix_tokens 21 is more than input_tokens 20",
        ),
        (
            "timestamp_s,input_tokens,output_tokens,prefix,prefix_tokens\n1,20,3,p,\n",
            "trace.csv: line 2: prefix_tokens '' is not a whole number",
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,10,2\n"
            "16/11/2023 18:17,10,2\n",
            "trace.csv: line 3: TIMESTAMP '16/11/2023 18:17' is not of the form",
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-02-30 18:17:03.97,10,2\n",
            "trace.csv: line 2: TIMESTAMP '2023-02-30 18:17:03.97': day is out of range",
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,10,two\n",
            "trace.csv: line 2: GeneratedTokens 'two' is not a whole number",
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00.1+25:00,10,2\n",
            "trace.csv: line 2: TIMESTAMP '2024-05-10 00:00:00.1+25:00': UTC offset out of range",
        ),
        (
            "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
            "5,ChatGPT,472,-1,471,Conversation log\n",
            "trace.csv: line 2: Response tokens '-1' must be >= 0",
        ),
        (
            "Timestamp,Model,Request tokens,Response tokens\n-5,ChatGPT,472,18\n",
            "trace.csv: line 2: Timestamp '-5' must be >= 0",
        ),
        (
            "Timestamp,Model,Request tokens,Colour\n5,ChatGPT,472,red\n",
            "trace.csv: line 1: unrecognised header",
        ),
    ],
)
def test_bad_input_names_the_file_line_and_problem(text: str, message: str) -> None:
    with pytest.raises(TraceError) as info:
        parse_trace(text, name="trace.csv")
    assert str(info.value).startswith(message)


def test_missing_file_and_unknown_shipped_name(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"nope\.csv: no such file"):
        load_trace(tmp_path / "nope.csv")
    with pytest.raises(TraceError, match="is a directory"):
        load_trace(tmp_path)
    with pytest.raises(TraceError, match="no shipped trace of that name"):
        shipped_trace("azure-chat")


@given(
    st.lists(
        st.tuples(
            st.floats(0, 1e6, allow_nan=False),
            st.integers(0, 10**6),
            st.integers(0, 10**5),
        ),
        min_size=1,
        max_size=40,
    ),
    st.floats(0.1, 100),
)
def test_plain_round_trip_and_compression(
    rows: list[tuple[float, int, int]], speedup: float
) -> None:
    text = "timestamp_s,input_tokens,output_tokens\n" + "".join(
        f"{t!r},{i},{o}\n" for t, i, o in rows
    )
    trace = parse_trace(text)
    t0 = min(t for t, _, _ in rows)
    expected = sorted(((t - t0, i, o) for t, i, o in rows), key=lambda r: r[0])
    assert [(r.arrival_s, r.input_tokens, r.output_tokens) for r in trace] == expected
    fast = trace.compressed(speedup)
    assert len(fast) == len(trace)
    for a, b in zip(trace, fast, strict=True):
        assert b.arrival_s == pytest.approx(a.arrival_s / speedup)
        assert (a.input_tokens, a.output_tokens) == (b.input_tokens, b.output_tokens)


def test_the_generated_multiturn_trace_is_long_bursty_and_repeatable() -> None:
    from tiersel.replay.synth import multiturn

    t = load_trace("synth-multiturn")
    assert t.name == "synth-multiturn" and t == multiturn(seed=0) != multiturn(seed=1)
    times = [r.arrival_s for r in t]
    assert times == sorted(times) and times[0] == 0.0
    prompts = sorted(r.input_tokens for r in t)
    assert prompts[len(prompts) // 2] > 3_000 and prompts[-1] > 20_000  # long, and growing
    # Bursty: arrivals per 10 s vary far more than a steady (Poisson) stream's would.
    counts = [0] * (int(t.duration_s // 10) + 1)
    for x in times:
        counts[int(x // 10)] += 1
    mean = sum(counts) / len(counts)
    variance = sum((c - mean) ** 2 for c in counts) / len(counts)
    assert variance > 3 * mean
    # Each session's turns share its prefix: all of a turn's prompt but its new message.
    sessions: dict[str | None, list[TraceRequest]] = {}
    for r in t:
        sessions.setdefault(r.prefix, []).append(r)
    assert None not in sessions and 0.1 * len(t) < len(sessions) < 0.4 * len(t)
    assert all(0 < r.prefix_tokens < r.input_tokens for r in t)
    with pytest.raises(ValueError, match="duration_s"):
        multiturn(duration_s=0)


def test_the_generated_rag_trace_mixes_short_prompts_with_long_context() -> None:
    from tiersel.replay.synth import rag

    t = load_trace("synth-rag")
    assert t.name == "synth-rag" and t == rag(seed=0) != rag(seed=1)
    times = [r.arrival_s for r in t]
    assert times == sorted(times) and times[0] == 0.0
    assert 3.5 < len(t) / t.duration_s < 4.5  # steady, at about 4 a second
    prompts = [r.input_tokens for r in t]
    short = sum(1 for p in prompts if p < 3_000) / len(prompts)
    assert 0.28 < short < 0.39  # a third without retrieved context
    assert max(prompts) == 120_000 and sorted(prompts)[len(prompts) // 2] > 8_000
    assert all(1 <= r.output_tokens <= 4_000 for r in t)
    # One system prompt of about 800 tokens, shared by every call (the context is not cached).
    assert {r.prefix for r in t} == {"rag/system"}
    sizes = sorted(r.prefix_tokens for r in t)
    assert 700 < sizes[len(sizes) // 2] < 900
    assert all(0 < r.prefix_tokens < r.input_tokens for r in t)
    with pytest.raises(ValueError, match="duration_s"):
        rag(duration_s=float("nan"))


def test_the_azure_2024_release_with_its_utc_offsets() -> None:
    """The 2024 week-long release writes ``2024-05-10 00:00:00.009930+00:00``: six digits and a
    UTC offset. Times in another offset are made UTC before they are ordered."""
    text = (
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:00.009930+00:00,374,44\n"
        "2024-05-10 00:00:01.561000+00:00,879,63\n"
        "2024-05-10 02:00:00.500000+02:00,10,1\n"  # 00:00:00.5 UTC
        "2024-05-09 23:59:59.999999-00:00,7,3\n"
        "2024-05-10T00:00:02Z,5,5\n"
    )
    trace = parse_trace(text, name="az24.csv")
    got = [(round(r.arrival_s, 6), r.input_tokens, r.output_tokens) for r in trace.requests]
    assert got == [
        (0.0, 7, 3),
        (0.009931, 374, 44),
        (0.500001, 10, 1),
        (1.561001, 879, 63),
        (2.000001, 5, 5),
    ]


def test_burstgpt_columns_in_any_order() -> None:
    """BurstGPT's CSV (github.com/HPMLL/BurstGPT): seconds from its start, and the request's
    and response's tokens; its model, total and log type are not read. A request that failed
    there (0 response tokens) is kept."""
    written = (
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "5,ChatGPT,472,18,490,Conversation log\n"
        "45,ChatGPT,1087,0,1087,Conversation log\n"
        "12,GPT-4,228,322,550,API log\n"
    )
    exported = "Log Type,Timestamp,Request tokens,Response tokens,Total tokens,Model\n" + "".join(
        f"{t},{s},{q},{r},{tot},{m}\n"
        for s, m, q, r, tot, t in (line.split(",") for line in written.splitlines()[1:])
    )
    for text in (written, exported):
        trace = parse_trace(text, name="burst.csv")
        got = [(r.arrival_s, r.input_tokens, r.output_tokens) for r in trace.requests]
        assert got == [(0.0, 472, 18), (7.0, 228, 322), (40.0, 1087, 0)]
