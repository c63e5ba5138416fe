"""Property: whatever the prompts, output caps, tools, images and concurrency, a provider that
bills the most tokens a prompt could be never makes spent pass the cap, and nothing stays
reserved. Over the in-memory ledger and the Redis one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tiersel
from tiersel.clock import FakeClock
from tiersel.dialects import input_token_bound
from tiersel.stores import open_async_ledger

ALPHABETS = {
    "digits": st.sampled_from("0123456789 "),
    "emoji": st.sampled_from("😀🎉👍🏽🚀❤️‍🔥 "),
    "cjk": st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
    "code": st.sampled_from("{}()[];:=<>!&|+-*/\\\"'`\n\t abcxyz_0123"),
    "whitespace": st.sampled_from(" \n\t\r\u00a0\u2003"),
    "mixed": st.characters(blacklist_categories=("Cs",)),
}

prompts = st.sampled_from(sorted(ALPHABETS)).flatmap(
    lambda kind: st.text(ALPHABETS[kind], min_size=1, max_size=2000)
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": 'Find a "thing"\nby name.',
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}


@st.composite
def workloads(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "prompts": draw(st.lists(prompts, min_size=1, max_size=4)),
        "max_tokens": draw(st.one_of(st.none(), st.integers(1, 4000), st.just(1_000_000))),
        "tools": draw(st.booleans()),
        "image": draw(st.booleans()),
        "calls": draw(st.integers(1, 160)),  # up to 160 in flight at once; more only takes longer
        "budget": draw(st.floats(0.001, 0.5)),
    }


def body(work: dict[str, Any], i: int) -> dict[str, Any]:
    text = work["prompts"][i % len(work["prompts"])]
    content: Any = [{"type": "text", "text": text}, IMAGE] if work["image"] else text
    doc: dict[str, Any] = {"model": "kimi-k3", "messages": [{"role": "user", "content": content}]}
    if work["max_tokens"] is not None:
        doc["max_tokens"] = work["max_tokens"]
    if work["tools"]:
        doc["tools"] = TOOLS
    return doc


async def provider(request: httpx.Request) -> httpx.Response:
    """Bills the prompt at the most tokens it could be, and every output token it may make (all
    of max_tokens; 16,000 when none is asked)."""
    sent = json.loads(request.content)
    await asyncio.sleep(0)
    usage = {
        "prompt_tokens": input_token_bound(sent),
        "completion_tokens": sent.get("max_tokens", 16_000),
    }
    choice = {"index": 0, "message": {"role": "assistant", "content": "."}}
    return httpx.Response(
        200, json={"id": "x", "model": sent["model"], "choices": [choice], "usage": usage}
    )


async def run(work: dict[str, Any], ledger: Any) -> None:
    sel = tiersel.Selector(
        clock=FakeClock(),
        ledger=ledger,
        async_transport=httpx.MockTransport(provider),
        api_key="",
    )

    async def one(i: int) -> None:
        with contextlib.suppress(tiersel.BudgetExhausted):
            await sel.asend(body(work, i))

    await asyncio.gather(*(one(i) for i in range(work["calls"])))
    state = await ledger.state(0.0)
    assert state.spent_usd <= state.limit_usd + 1e-12, (state, work)
    assert state.reserved_usd == 0, (state, work)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(work=workloads())
def test_spent_never_passes_the_cap_in_memory(work: dict[str, Any]) -> None:
    asyncio.run(run(work, open_async_ledger("memory://", limit_usd=work["budget"])))


@pytest.fixture
def redis_budget(redis_url: str) -> Any:
    def opener(limit: float) -> Any:
        url = f"{redis_url}?prefix=cap-{uuid.uuid4().hex[:12]}"
        return open_async_ledger(url, limit_usd=limit)

    return opener


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(work=workloads())
def test_spent_never_passes_the_cap_in_redis(work: dict[str, Any], redis_budget: Any) -> None:
    async def go() -> None:
        ledger = redis_budget(work["budget"])
        try:
            await run(work, ledger)
        finally:
            await ledger.aclose()

    asyncio.run(go())
