"""The real openai and anthropic SDKs through `TierTransport` / `AsyncTierTransport`, over real
HTTP to the simulator: sync and async, streamed and not, on httpx and httpx2 clients."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

import tiersel
from tests.transport.conftest import ANTHROPIC, MODEL, Recorder, async_http, sync_http
from tiersel.sim.server import RunningServer
from tiersel.wrap import CostBasis, TierTransport

PROMPT = "Name three colours."
TOKENS = 20


def _openai_sync(server: RunningServer, http: Any, stream: bool) -> tuple[Any, list[str], int]:
    client = openai.OpenAI(api_key="sk-test", base_url=server.openai_base_url, http_client=http)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=TOKENS,
        stream=stream,
    )
    if not stream:
        done = raw.parse()
        return raw.headers, [done.choices[0].message.content or ""], 1
    texts, chunks = [], 0
    for chunk in raw.parse():
        chunks += 1
        assert chunk.choices, "a usage-only chunk the caller did not ask for was passed on"
        texts.append(chunk.choices[0].delta.content or "")
    return raw.headers, texts, chunks


async def _openai_async(
    server: RunningServer, http: Any, stream: bool
) -> tuple[Any, list[str], int]:
    client = openai.AsyncOpenAI(
        api_key="sk-test", base_url=server.openai_base_url, http_client=http
    )
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=TOKENS,
        stream=stream,
    )
    if not stream:
        done = raw.parse()
        return raw.headers, [done.choices[0].message.content or ""], 1
    texts, chunks = [], 0
    async for chunk in raw.parse():
        chunks += 1
        assert chunk.choices, "a usage-only chunk the caller did not ask for was passed on"
        texts.append(chunk.choices[0].delta.content or "")
    return raw.headers, texts, chunks


def _anthropic_sync(server: RunningServer, http: Any, stream: bool) -> tuple[Any, list[str], int]:
    import anthropic

    client = anthropic.Anthropic(
        api_key="sk-test", base_url=server.anthropic_base_url, http_client=http
    )
    raw = client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=TOKENS,
        messages=[{"role": "user", "content": PROMPT}],
        stream=stream,
    )
    if not stream:
        done = raw.parse()
        return raw.headers, [b.text for b in done.content if b.type == "text"], 1
    texts, events = [], 0
    for event in raw.parse():
        events += 1
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            texts.append(event.delta.text)
    return raw.headers, texts, events


async def _anthropic_async(
    server: RunningServer, http: Any, stream: bool
) -> tuple[Any, list[str], int]:
    import anthropic

    client = anthropic.AsyncAnthropic(
        api_key="sk-test", base_url=server.anthropic_base_url, http_client=http
    )
    raw = await client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=TOKENS,
        messages=[{"role": "user", "content": PROMPT}],
        stream=stream,
    )
    if not stream:
        done = await raw.parse()
        return raw.headers, [b.text for b in done.content if b.type == "text"], 1
    texts, events = [], 0
    async for event in await raw.parse():
        events += 1
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            texts.append(event.delta.text)
    return raw.headers, texts, events


# The anthropic SDK (2.x) takes httpx2 clients only (it refuses httpx objects itself); the
# openai SDK (3.x) takes both.
COMBOS = [
    ("openai", "httpx"),
    ("openai", "httpx2"),
    pytest.param("anthropic", "httpx2", marks=ANTHROPIC),
]
COMBO_IDS = ["openai-httpx", "openai-httpx2", "anthropic-httpx2"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(
    ("sdk", "library"), COMBOS, ids=["openai-httpx", "openai-httpx2", "anthropic-httpx2"]
)
def test_sdk_call_gets_a_tier(
    calm: RunningServer, recorder: Recorder, sdk: str, library: str, mode: str, stream: bool
) -> None:
    selector = tiersel.Selector(api_key="")
    if mode == "sync":
        call = _openai_sync if sdk == "openai" else _anthropic_sync
        with sync_http(library, selector, recorder) as http:
            headers, texts, parts = call(calm, http, stream)
    else:
        acall = _openai_async if sdk == "openai" else _anthropic_async

        async def go() -> tuple[Any, list[str], int]:
            async with async_http(library, selector, recorder) as http:
                return await acall(calm, http, stream)

        headers, texts, parts = asyncio.run(go())

    # The answer arrives whole, or chunk by chunk when streamed.
    assert len("".join(texts).split()) == TOKENS
    assert parts > (2 if stream else 0)
    # The decision travels back in the response headers ...
    assert headers["x-tiersel-tier"] == "standard"
    assert headers["x-tiersel-model"] == MODEL
    assert headers["x-tiersel-attempts"] == "1"
    assert headers["x-tiersel-tried"] == "standard"
    record = recorder.last
    # ... and in the record handed to the hook once the call (or its stream) has ended.
    assert record.ok and record.streamed is stream
    assert record.tier == "standard" and record.attempts == 1
    assert record.usage is not None and record.usage.completion_tokens == TOKENS
    assert record.cost_basis is CostBasis.actual and record.cost_usd > 0
    if stream:
        # The header can only carry the estimate; the record has the real cost.
        assert headers["x-tiersel-cost-basis"] == "estimate"
        assert float(headers["x-tiersel-cost-usd"]) == pytest.approx(record.estimated_cost_usd)
        assert record.ttft_s is not None and 0 < record.ttft_s < record.elapsed_s
        assert record.output_tps is not None and record.output_tps > 0
    else:
        assert headers["x-tiersel-cost-basis"] == "actual"
        assert float(headers["x-tiersel-cost-usd"]) == pytest.approx(record.cost_usd, abs=1e-9)
    stats = calm.stats()
    assert stats["by_tier"] == {"standard": {"200": 1}}
    assert stats["hinted"] == 0


@ANTHROPIC
def test_sdk_default_clients_take_the_transport(calm: RunningServer, recorder: Recorder) -> None:
    """The SDKs' own ``DefaultHttpxClient`` (their timeouts and limits) mounts it too: the
    anthropic SDK refuses any transport with an httpx class in its MRO, and this passes."""
    import anthropic

    selector = tiersel.Selector(api_key="")
    with anthropic.DefaultHttpxClient(transport=TierTransport(selector, on_call=recorder)) as http:
        headers, texts, _ = _anthropic_sync(calm, http, False)
    with openai.DefaultHttpxClient(transport=TierTransport(selector, on_call=recorder)) as http:
        headers2, texts2, _ = _openai_sync(calm, http, False)
    assert headers["x-tiersel-tier"] == headers2["x-tiersel-tier"] == "standard"
    assert len(" ".join(texts + texts2).split()) == 2 * TOKENS
    assert [r.path for r in recorder.records] == [
        "/inference/v1/messages",
        "/inference/v1/chat/completions",
    ]
