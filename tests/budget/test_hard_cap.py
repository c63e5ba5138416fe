"""A budget's cap holds whatever the request says: no max_tokens, prompts that tokenize densely,
many calls at once, call ids that never collide."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import tiersel
from tiersel.budget import MemoryLedger
from tiersel.clock import FakeClock
from tiersel.dialects import input_token_bound
from tiersel.engine.core import new_call_id
from tiersel.engine.money import OUTPUT_FLOOR
from tiersel.sim import AsyncSimTransport, load_scenario
from tiersel.wrap import AsyncTierTransport

MODEL = "kimi-k3"
BUDGET = 0.50


def long_output_scenario(tmp_path: Path) -> Any:
    """Calm, but a request that asks no output cap gets 16,000 tokens (a model's limit)."""
    path = tmp_path / "long.yaml"
    path.write_text("description: long default output\ndefault_max_tokens: 16000\n")
    return load_scenario(str(path))


async def sdk_calls(transport: AsyncTierTransport, n: int, content: str, **create: Any) -> int:
    """``n`` concurrent openai SDK calls through ``transport``; how many were served."""
    http = httpx.AsyncClient(transport=transport)
    client = openai.AsyncOpenAI(
        api_key="sk-test", base_url="http://sim/inference/v1", http_client=http, max_retries=0
    )

    async def one() -> bool:
        try:
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": content}], **create
            )
        except tiersel.BudgetExhausted:
            return False
        return True

    served = await asyncio.gather(*(one() for _ in range(n)))
    await http.aclose()
    return sum(served)


@pytest.mark.parametrize("unbounded_output", ["share", "cap"])
def test_calls_without_max_tokens_stay_within_the_cap(
    tmp_path: Path, unbounded_output: str
) -> None:
    clock = FakeClock()
    sim = AsyncSimTransport(scenario=long_output_scenario(tmp_path), clock=clock)
    ledger = MemoryLedger(BUDGET)
    sel = tiersel.Selector(
        clock=clock, ledger=ledger, api_key="", unbounded_output=unbounded_output
    )
    seen: list[dict[str, Any]] = []

    async def recording(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return await sim.handle_async_request(request)

    transport = AsyncTierTransport(sel, httpx.MockTransport(recording))
    served = asyncio.run(sdk_calls(transport, 200, "Write a long story."))
    state = ledger.state(clock.now())
    assert state.spent_usd <= BUDGET and state.reserved_usd == 0
    assert served > 0
    caps = {body["max_tokens"] for body in seen}
    if unbounded_output == "cap":  # every request went out with the cap its reservation assumed
        assert caps == {sel.engine.default_max_output_tokens}
    else:  # a share of the money left: smaller as it runs out, never past the default
        assert min(caps) == OUTPUT_FLOOR and max(caps) == sel.engine.default_max_output_tokens


def test_the_cap_tiersel_sets_is_reported_and_can_be_refused(tmp_path: Path) -> None:
    clock = FakeClock()
    sim = AsyncSimTransport(scenario=long_output_scenario(tmp_path), clock=clock)
    sel = tiersel.Selector(
        clock=clock, ledger=MemoryLedger(BUDGET), api_key="", default_max_output_tokens=500
    )

    async def one(transport: AsyncTierTransport, **create: Any) -> httpx.Response:
        # The openai SDK's timeout, not httpx's 5 s: 16,000 tokens take minutes to generate.
        async with httpx.AsyncClient(transport=transport, timeout=600.0) as http:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **create}
            return await http.post("http://sim/inference/v1/chat/completions", json=body)

    capped = asyncio.run(one(AsyncTierTransport(sel, sim)))
    assert capped.headers["x-tiersel-max-tokens"] == "500"
    assert capped.json()["usage"]["completion_tokens"] == 500
    stated = asyncio.run(one(AsyncTierTransport(sel, sim), max_tokens=20))
    assert "x-tiersel-max-tokens" not in stated.headers
    # Without a budget the body goes as written, and nothing is reported.
    free = tiersel.Selector(clock=clock, api_key="")
    unbudgeted = asyncio.run(one(AsyncTierTransport(free, sim)))
    assert "x-tiersel-max-tokens" not in unbudgeted.headers
    assert unbudgeted.json()["usage"]["completion_tokens"] == 16000
    strict = tiersel.Selector(
        clock=clock, ledger=MemoryLedger(BUDGET), api_key="", unbounded_output="refuse"
    )
    with pytest.raises(tiersel.RequestNotUnderstood, match="sets no max_tokens"):
        asyncio.run(one(AsyncTierTransport(strict, sim)))


def billing_provider(clock: FakeClock) -> httpx.MockTransport:
    """A provider that bills a prompt at the most tokens it could be (one a byte of everything
    rendered, as `input_token_bound` counts it) and all of max_tokens."""

    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        usage = {
            "prompt_tokens": input_token_bound(body),
            "completion_tokens": body["max_tokens"],
        }
        await asyncio.sleep(0)
        return httpx.Response(
            200,
            json={
                "id": "x",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "."}}],
                "usage": usage,
            },
        )

    return httpx.MockTransport(handler)


def test_digit_heavy_prompts_stay_within_the_cap() -> None:
    """30,000 bytes of digits are about 15,000 billed tokens where 3 bytes a token says 10,000:
    the reservation counts the prompt at its bound, so the cap holds."""
    clock = FakeClock()
    ledger = MemoryLedger(BUDGET)
    sel = tiersel.Selector(clock=clock, ledger=ledger, api_key="")
    transport = AsyncTierTransport(sel, billing_provider(clock))
    digits = " ".join(str(i % 10) for i in range(15_000))
    served = asyncio.run(sdk_calls(transport, 100, digits, max_tokens=64))
    state = ledger.state(clock.now())
    assert state.spent_usd <= BUDGET and state.reserved_usd == 0
    assert 0 < served < 100  # the budget ran out, and was not overspent


def test_call_ids_are_unique_across_selectors() -> None:
    ids = {new_call_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(i.startswith("call-") and len(i) == 29 for i in ids)


def test_a_body_with_no_cap_is_capped_at_most_at_the_models_own_output_limit(
    tmp_path: Path,
) -> None:
    """deepseek-v3 writes at most 8,192 tokens (the table's max_output_tokens): a reservation
    for more would hold money no answer can cost."""
    clock = FakeClock()
    sim = AsyncSimTransport(scenario=long_output_scenario(tmp_path), clock=clock)
    sel = tiersel.Selector(
        clock=clock,
        ledger=MemoryLedger(BUDGET),
        api_key="",
        unbounded_output="cap",
        default_max_output_tokens=100_000,
    )
    assert sel.pricing.model("deepseek-v3").max_output_tokens == 8192

    async def one(model: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=AsyncTierTransport(sel, sim)) as http:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            return await http.post("http://sim/inference/v1/chat/completions", json=body)

    assert asyncio.run(one("deepseek-v3")).headers["x-tiersel-max-tokens"] == "8192"
