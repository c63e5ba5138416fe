"""Odd and hostile input gets a clear answer, never a traceback or a hang: responses an inner
transport read already, paths tiersel cannot price under a budget, deep nesting, lone
surrogates, a pickled selector, and refusals that must not look like the provider's."""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from typing import Any

import httpx
import pytest

import tiersel
from tests.transport.conftest import MODEL
from tiersel.budget import MemoryLedger
from tiersel.clock import FakeClock
from tiersel.dialects import Dialect
from tiersel.sim import AsyncSimTransport, SimTransport
from tiersel.sim.server import RunningServer
from tiersel.wrap import AsyncTierTransport, CallRecord, TierTransport

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


class ReadingFirst(httpx.BaseTransport):
    """A logging wrapper's habit: read the whole response before handing it on."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        response.read()
        return response


class AsyncReadingFirst(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        await response.aread()
        return response


@pytest.mark.parametrize("stream", [False, True])
def test_a_response_read_already_over_real_http(calm: RunningServer, stream: bool) -> None:
    inner = ReadingFirst(httpx.HTTPTransport())
    sel = tiersel.Selector(api_key="")
    with httpx.Client(transport=TierTransport(sel, inner), timeout=10) as client:
        started = time.monotonic()
        response = client.post(
            calm.openai_base_url + "/chat/completions",
            json={**BODY, "stream": stream},
            headers={"x-tiersel-deadline": "30"},
        )
        took = time.monotonic() - started
    assert response.status_code == 200 and response.headers["x-tiersel-tier"]
    assert took < 10  # before the fix it spun on the spent connection until the deadline
    if stream:
        events = [line for line in response.text.splitlines() if line.startswith("data: {")]
        assert len(events) >= 2 and response.text.rstrip().endswith("data: [DONE]")
    else:
        assert response.json()["usage"]["completion_tokens"] == 5


def test_a_response_read_already_async() -> None:
    clock = FakeClock()
    inner = AsyncReadingFirst(AsyncSimTransport(scenario="calm", clock=clock))
    sel = tiersel.Selector(api_key="", clock=clock)

    async def go() -> tuple[Any, str]:
        async with httpx.AsyncClient(transport=AsyncTierTransport(sel, inner)) as client:
            url = "http://sim/inference/v1/chat/completions"
            plain = await client.post(url, json=BODY)
            streamed = await client.post(url, json={**BODY, "stream": True})
            return plain.json(), streamed.text

    plain, streamed = asyncio.run(go())
    assert plain["usage"]["completion_tokens"] == 5
    assert streamed.count("data: {") >= 2


@pytest.mark.parametrize("path", ["/embeddings", "/rerank", "/audio/transcriptions"])
def test_under_a_budget_a_post_tiersel_cannot_price_is_refused(path: str) -> None:
    seen: list[str] = []

    def provider(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={})

    budgeted = tiersel.Selector(api_key="", ledger=MemoryLedger(1.0))
    with httpx.Client(transport=TierTransport(budgeted, httpx.MockTransport(provider))) as c:
        with pytest.raises(tiersel.RequestNotUnderstood, match=f"POST /v1{path}: tiersel prices"):
            c.post(f"http://x/v1{path}", json={"model": MODEL, "input": "hi"})
        assert c.get("http://x/v1/models").status_code == 200  # reading is free
    assert seen == ["/v1/models"]
    # Without a budget the same request passes through untouched.
    free = tiersel.Selector(api_key="")
    with httpx.Client(transport=TierTransport(free, httpx.MockTransport(provider))) as c:
        assert c.post(f"http://x/v1{path}", json={"model": MODEL}).status_code == 200
    assert seen[-1] == f"/v1{path}"


def shed_once_then(after: httpx.Response) -> httpx.MockTransport:
    answers = [httpx.Response(503, json={"error": {"code": "server_overloaded"}}), after]

    def provider(request: httpx.Request) -> httpx.Response:
        return answers.pop(0) if answers else after

    return httpx.MockTransport(provider)


class OneAttemptLedger(MemoryLedger):
    """A budget whose money is gone after the first reservation (others spent it meanwhile)."""

    def reserve(
        self, call_id: str, amount_usd: float, now: float, ttl_s: float | None = None
    ) -> Any:
        if getattr(self, "reserved_once", False):
            return None
        self.reserved_once = True
        return super().reserve(call_id, amount_usd, now, ttl_s)


def test_a_budget_that_cannot_cover_a_retry_is_tiersels_402_not_the_providers_503() -> None:
    sel = tiersel.Selector(api_key="", clock=FakeClock(), ledger=OneAttemptLedger(1.0))
    shedding = shed_once_then(httpx.Response(200, json={}))
    records: list[CallRecord] = []
    with httpx.Client(transport=TierTransport(sel, shedding, on_call=records.append)) as client:
        response = client.post(
            "http://x/v1/chat/completions", json=BODY, headers={"x-tiersel-tiers": "standard"}
        )
    assert response.status_code == 402
    # The call's record says the status its caller got, not the last upstream answer's.
    (record,) = records
    assert (record.ok, record.status, record.attempts) == (False, 402, 1)
    assert response.headers["x-should-retry"] == "false"
    assert "budget cannot cover another attempt after 1 failed attempt(s)" in response.text
    assert "the last: HTTP 503" in response.text
    assert sel.ledger is not None and sel.ledger.state(0.0).reserved_usd == 0


def test_nesting_of_any_depth_is_a_clear_refusal_or_is_counted() -> None:
    deep: Any = "leaf"
    for _ in range(900):
        deep = [deep]
    sel = tiersel.Selector(api_key="", ledger=MemoryLedger(1.0))
    call, _ = sel.engine.call_for(
        {"model": MODEL, "messages": [{"role": "user", "content": deep}], "max_tokens": 5},
        Dialect.openai,
    )
    assert call.max_input_tokens is not None and call.max_input_tokens >= 900
    # 100,000 levels is past what JSON parsing reaches: a refusal naming the body, no traceback.
    content = b'{"model": "kimi-k3", "messages": [{"role": "user", "content": ' + b"[" * 100_000
    content += b"]" * 100_000 + b"}], " + b'"max_tokens": 5}'
    never = httpx.MockTransport(lambda r: httpx.Response(500))
    with (
        httpx.Client(transport=TierTransport(sel, never)) as c,
        pytest.raises(tiersel.RequestNotUnderstood),
    ):
        c.post("http://x/v1/chat/completions", content=content)


def test_a_lone_surrogate_is_counted_and_sent(calm: RunningServer) -> None:
    sel = tiersel.Selector(api_key="", ledger=MemoryLedger(1.0))
    body = {**BODY, "messages": [{"role": "user", "content": "broken \ud800 text"}]}
    with httpx.Client(transport=TierTransport(sel), timeout=10) as client:
        response = client.post(
            calm.openai_base_url + "/chat/completions",
            content=json.dumps(body).encode(),  # JSON escapes it as \\ud800
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 200, response.text
    assert sel.ledger is not None and sel.ledger.state(0.0).reserved_usd == 0


def test_a_selector_is_not_pickled_and_its_key_pickles_as_nothing() -> None:
    key = "sk-canary-pickle-1234567890"
    sel = tiersel.Selector(api_key=key)
    with pytest.raises(TypeError, match="build one in each process") as refused:
        pickle.dumps(sel)
    assert key not in str(refused.value)
    blob = pickle.dumps(sel.outgoing.api_key)
    assert key.encode() not in blob
    assert pickle.loads(blob).value is None


def test_an_unknown_model_names_the_table_not_where_it_lives() -> None:
    with pytest.raises(tiersel.UnknownModel) as caught:
        tiersel.Selector(api_key="").engine.call_for(
            {"model": "no-such-model", "messages": []}, Dialect.openai
        )
    assert "fireworks.yaml" in str(caught.value) and "/" not in str(caught.value).split("table")[1]


def test_sim_transports_answer_a_lone_surrogate() -> None:
    sim = SimTransport(scenario="calm", clock=FakeClock())
    content = json.dumps({**BODY, "messages": [{"role": "user", "content": "\ud800"}]})
    with httpx.Client(transport=sim) as client:
        response = client.post("http://sim/inference/v1/chat/completions", content=content)
    assert response.status_code == 200, response.text
