"""The simulator over real HTTP: a `tiersel sim serve` subprocess on loopback, called with httpx."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tiersel.sim.server import RunningServer, serve_in_subprocess

KIMI = "accounts/fireworks/models/kimi-k3"
KIMI_FAST = "accounts/fireworks/routers/kimi-k3-fast"
LIMITED = "accounts/fireworks/models/gpt-oss-120b"
SCALE = 0.01

SCENARIO = f"""
name: http-test
description: calm, with a standard outage from 5000 s to 6000 s and a tight limit on one model
pools: {{shared: {{background: 0.3}}, router: {{background: 0.3}}}}
outages: [{{start_s: 5000, end_s: 6000, tiers: [standard]}}]
rate_limit: {{models: {{{LIMITED}: {{prompt_tokens_per_s: 1, burst_s: 100}}}}}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    path = tmp_path_factory.mktemp("sim") / "http-test.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    with serve_in_subprocess(path, seed=4, time_scale=SCALE) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    server.reset(time_s=0)
    with httpx.Client(base_url=server.openai_base_url, timeout=10) as c:
        yield c


def _body(model: str = KIMI, max_tokens: int = 30, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "Say something."}]
    return {"model": model, "messages": messages, "max_tokens": max_tokens, **extra}


def test_openai_non_streaming(client: httpx.Client) -> None:
    r = client.post("/chat/completions", json=_body(service_tier="priority"))
    assert r.status_code == 200
    doc = r.json()
    assert doc["object"] == "chat.completion"
    assert doc["service_tier"] == "priority"
    usage = doc["usage"]
    assert usage["completion_tokens"] == 30
    assert usage["prompt_tokens"] > 0
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


def test_openai_streaming_really_streams(client: httpx.Client) -> None:
    body = _body(max_tokens=300, stream=True, stream_options={"include_usage": True})
    # Chunks are spread over the generation time, not buffered into one burst. A stall of this
    # shared machine delays the first chunk and lets the rest, already due, arrive together:
    # the spread is checked on the best of three streams.
    spreads = []
    for _ in range(3):
        start = time.monotonic()
        with client.stream("POST", "/chat/completions", json=body) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            ttft, duration = float(r.headers["x-sim-ttft-s"]), float(r.headers["x-sim-duration-s"])
            arrivals = [(time.monotonic() - start, line) for line in r.iter_lines() if line]
        events = [json.loads(line[6:]) for _, line in arrivals if line != "data: [DONE]"]
        assert arrivals[-1][1] == "data: [DONE]"
        assert events[-1]["usage"]["completion_tokens"] == 300
        assert sum(len(e["choices"]) for e in events) >= 30
        assert arrivals[0][0] >= 0.8 * ttft * SCALE  # never before its time to first token
        spreads.append((arrivals[-1][0] - arrivals[0][0]) / ((duration - ttft) * SCALE))
        if spreads[-1] >= 0.6:
            break
    assert max(spreads) >= 0.6, spreads


def test_anthropic_both_ways(server: RunningServer, client: httpx.Client) -> None:
    with httpx.Client(base_url=server.anthropic_base_url, timeout=10) as anthropic:
        r = anthropic.post("/v1/messages", json=_body(max_tokens=12))
        assert r.status_code == 200
        assert r.json()["usage"]["output_tokens"] == 12
        assert r.json()["content"][0]["type"] == "text"
        with anthropic.stream("POST", "/v1/messages", json=_body(stream=True)) as s:
            lines = [line for line in s.iter_lines() if line.startswith("event: ")]
    assert lines[0] == "event: message_start"
    assert "event: content_block_delta" in lines
    assert lines[-2:] == ["event: message_delta", "event: message_stop"]


def test_refusals_carry_the_fireworks_error_body(
    server: RunningServer, client: httpx.Client
) -> None:
    both = client.post("/chat/completions", json=_body(KIMI_FAST, service_tier="priority"))
    assert both.status_code == 400
    assert set(both.json()["error"]) == {"object", "type", "code", "message"}
    assert client.post("/chat/completions", json=_body("accounts/x/models/y")).status_code == 404

    server.reset(time_s=5100)  # inside the standard outage
    shed = client.post("/chat/completions", json=_body())
    assert shed.status_code == 503
    assert shed.json()["error"]["code"] == "server_overloaded"
    assert client.post("/chat/completions", json=_body(service_tier="priority")).status_code == 200


def test_rate_limit_429_with_retry_after_and_limit_headers(client: httpx.Client) -> None:
    big = {"role": "user", "content": "x" * 300}  # 75 + 16 tokens: the bucket holds 100
    statuses = []
    for _ in range(3):
        r = client.post("/chat/completions", json={**_body(LIMITED), "messages": [big]})
        statuses.append(r.status_code)
    assert statuses == [200, 429, 429]
    # About 80 scenario seconds to refill at 1 token/s, said in wall seconds (time scale 0.01).
    assert 0.5 < float(r.headers["retry-after"]) <= 1.0
    assert r.headers["x-ratelimit-limit-tokens-prompt"] == "1"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"


def test_stats_count_by_tier_model_and_status(server: RunningServer, client: httpx.Client) -> None:
    client.post("/chat/completions", json=_body())
    client.post("/chat/completions", json=_body(KIMI_FAST), headers={"x-tiersel-deadline": "5"})
    client.post("/chat/completions", json=_body(KIMI_FAST, service_tier="priority"))
    client.post("/chat/completions", json=_body(LIMITED, service_tier="priority"))
    stats = server.stats()
    assert stats["requests"] == 4
    assert stats["by_status"] == {"200": 3, "400": 1}
    assert stats["by_tier"] == {"fast": {"200": 1}, "priority": {"200": 1}, "standard": {"200": 1}}
    assert stats["by_model"] == {
        KIMI: {"200": 1},
        KIMI_FAST: {"200": 1, "400": 1},
        LIMITED: {"200": 1},
    }
    assert (stats["hinted"], stats["priority_with_router"]) == (1, 1)
    assert stats["scenario"] == "http-test"


def test_a_broken_stream_drops_the_connection(tmp_path: Path) -> None:
    path = tmp_path / "breaking.yaml"
    path.write_text("errors: {stream_break_rate: 1.0}\n", encoding="utf-8")
    with (
        serve_in_subprocess(path, time_scale=SCALE) as server,
        httpx.Client(base_url=server.openai_base_url, timeout=10) as client,
        client.stream("POST", "/chat/completions", json=_body(stream=True)) as r,
    ):
        got: list[str] = []
        with pytest.raises(httpx.RemoteProtocolError):
            got.extend(r.iter_lines())
        assert got and "data: [DONE]" not in got


def test_held_answers_wait_for_release_then_each_takes_its_latency(
    server: RunningServer, client: httpx.Client
) -> None:
    assert server.hold()["held"] == 0
    answers: list[tuple[int, float]] = []

    def send() -> None:
        r = client.post("/chat/completions", json=_body())
        answers.append((r.status_code, time.monotonic()))

    senders = [threading.Thread(target=send) for _ in range(3)]
    for t in senders:
        t.start()
    deadline = time.monotonic() + 10
    while server.stats()["held"] < 3:
        assert time.monotonic() < deadline, server.stats()
        time.sleep(0.01)
    time.sleep(0.3)  # far longer than a 30-token answer takes at this time scale
    assert answers == [] and server.stats()["requests"] == 3  # admitted, not answered
    released_at = time.monotonic()
    assert server.release()["held"] == 0
    for t in senders:
        t.join(timeout=10)
    assert [status for status, _ in answers] == [200, 200, 200]
    assert all(at > released_at for _, at in answers)
    # The gate is open again: a new call is answered without a release.
    assert client.post("/chat/completions", json=_body()).status_code == 200
    assert server.stats()["held"] == 0


def test_a_stream_closed_early_is_billed_what_was_generated(
    server: RunningServer, client: httpx.Client
) -> None:
    # It was billed its whole answer when it was admitted, and a client's going away counted
    # nothing (a new user's probe: 2,000 tokens billed for a stream closed after 4 chunks).
    body = _body(max_tokens=3000, stream=True)
    with client.stream("POST", "/chat/completions", json=body) as r:
        assert r.status_code == 200
        r.read()
    whole = server.stats()["billed_usd"]
    server.reset(time_s=0)
    with client.stream("POST", "/chat/completions", json=body) as r:
        next(line for line in r.iter_lines() if line.startswith("data:"))
    # The stream is closed: the server sees the client go at its next chunk's due time.
    deadline = time.monotonic() + 10
    while (stats := server.stats())["cancelled"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stats["cancelled"] == 1
    # Its prompt and the first of 3,000 tokens, at 15 times the price of a prompt token.
    assert 0 < stats["billed_usd"] < whole / 10, (stats["billed_usd"], whole)
