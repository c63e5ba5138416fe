"""The in-process transports (httpx and httpx2, sync and async) on a virtual clock."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest

from tiersel import Requirements, Selector
from tiersel.clock import FakeClock, SystemClock
from tiersel.sim import AsyncSimTransport, SimService, SimTransport
from tiersel.sim.transport_httpx2 import AsyncSimTransport2, SimTransport2
from tiersel.virtual_time import run_virtual

KIMI = "accounts/fireworks/models/kimi-k3"
BASE = "http://sim.local/inference/v1"


def _chat(**extra: Any) -> dict[str, Any]:
    return {
        "model": KIMI,
        "messages": [
            {"role": "system", "content": "be brief " * 50},
            {"role": "user", "content": "hi"},
        ],
        "max_tokens": 40,
        **extra,
    }


def test_sync_call_advances_the_fake_clock_by_the_simulated_duration() -> None:
    clock = FakeClock(1000.0)
    transport = SimTransport(scenario="calm", clock=clock)
    with httpx.Client(transport=transport, base_url=BASE) as client:
        r = client.post("/chat/completions", json=_chat())
    assert r.status_code == 200
    doc = r.json()
    assert doc["usage"]["completion_tokens"] == 40
    assert doc["choices"][0]["finish_reason"] == "length"
    assert clock.now() - 1000.0 == pytest.approx(float(r.headers["x-sim-duration-s"]), abs=1e-6)
    assert transport.stats()["by_tier"] == {"standard": {"200": 1}}


def test_prompt_tokens_are_estimated_from_the_text_and_prefixes_are_cached() -> None:
    transport = SimTransport(scenario="calm")
    follow_up = _chat()
    follow_up["messages"] += [
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and then?"},
    ]
    other = _chat()
    other["messages"][1]["content"] = "bye"
    with httpx.Client(transport=transport, base_url=BASE) as client:
        first = client.post("/chat/completions", json=_chat()).json()["usage"]
        again = client.post("/chat/completions", json=_chat()).json()["usage"]
        longer = client.post("/chat/completions", json=follow_up).json()["usage"]
        shorter = client.post("/chat/completions", json=other).json()["usage"]
    # 450 bytes of system text + 2 of user text at 4 bytes a token, plus 8 per message + 8.
    assert first["prompt_tokens"] == 113 + 24
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    # The same prompt again: all of it is in the cache.
    assert again["prompt_tokens_details"]["cached_tokens"] == 137
    # A conversation that goes on from it: the first prompt's share of it is (its JSON bytes'
    # share: `tiersel.prompts.prompt_prefixes`), the rest is not.
    assert 0.85 * 137 < longer["prompt_tokens_details"]["cached_tokens"] < longer["prompt_tokens"]
    # One that shares only the system message: that message is.
    cached = shorter["prompt_tokens_details"]["cached_tokens"]
    assert 0.85 * 137 < cached < shorter["prompt_tokens"]


def _events(lines: list[tuple[float, str]]) -> list[tuple[float, Any]]:
    out = []
    for at, line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append((at, json.loads(line[6:])))
    return out


def test_sync_stream_chunks_arrive_at_their_times_with_usage_last() -> None:
    clock = FakeClock()
    transport = SimTransport(scenario="calm", clock=clock)
    body = _chat(stream=True, stream_options={"include_usage": True})
    with (
        httpx.Client(transport=transport, base_url=BASE) as client,
        client.stream("POST", "/chat/completions", json=body) as r,
    ):
        assert clock.now() == 0.0  # headers come at once; the body is timed
        ttft = float(r.headers["x-sim-ttft-s"])
        duration = float(r.headers["x-sim-duration-s"])
        lines = [(clock.now(), line) for line in r.iter_lines() if line]
    events = _events(lines)
    assert events[0][0] == pytest.approx(ttft)
    assert events[0][1]["choices"][0]["delta"]["role"] == "assistant"
    times = [at for at, _ in events]
    assert times == sorted(times) and len(set(times)) > 5
    assert events[-1][0] == pytest.approx(duration)
    assert events[-1][1]["choices"] == []
    assert events[-1][1]["usage"]["completion_tokens"] == 40
    assert lines[-1][1] == "data: [DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for _, e in events[:-1])
    assert len(text.split()) == 40


async def test_async_anthropic_stream() -> None:
    clock = FakeClock()
    transport = AsyncSimTransport(scenario="calm", clock=clock)
    body = _chat(stream=True, service_tier="priority")
    async with (
        httpx.AsyncClient(transport=transport, base_url=BASE) as client,
        client.stream("POST", "/messages", json=body) as r,
    ):
        lines = [(clock.now(), line) async for line in r.aiter_lines() if line]
    kinds = [e["type"] for _, e in _events(lines)]
    assert kinds[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    delta = next(e for _, e in _events(lines) if e["type"] == "message_delta")
    assert delta["usage"]["output_tokens"] == 40
    assert delta["usage"]["service_tier"] == "priority"
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert transport.stats()["by_tier"] == {"priority": {"200": 1}}


def test_httpx2_sync_transport() -> None:
    clock = FakeClock()
    transport = SimTransport2(scenario="calm", clock=clock)
    with httpx2.Client(transport=transport, base_url=BASE) as client:
        r = client.post("/messages", json=_chat())
        with client.stream("POST", "/chat/completions", json=_chat(stream=True)) as s:
            chunks = [line for line in s.iter_lines() if line]
    assert r.status_code == 200
    assert r.json()["usage"]["output_tokens"] == 40
    assert chunks[-1] == "data: [DONE]"
    assert clock.now() > 0
    assert transport.stats()["streamed"] == 1


async def test_httpx2_async_transport() -> None:
    transport = AsyncSimTransport2(scenario="calm")
    async with httpx2.AsyncClient(transport=transport, base_url=BASE) as client:
        r = await client.post("/chat/completions", json=_chat())
        async with client.stream("POST", "/messages", json=_chat(stream=True)) as s:
            lines = [line async for line in s.aiter_lines() if line]
    assert r.json()["usage"]["completion_tokens"] == 40
    assert lines[-1] == 'data: {"type": "message_stop"}'


def test_wait_false_reports_latency_without_moving_the_clock() -> None:
    clock = FakeClock()
    transport = SimTransport(scenario="calm", clock=clock, wait=False)
    with httpx.Client(transport=transport, base_url=BASE) as client:
        r = client.post("/chat/completions", json=_chat())
    assert clock.now() == 0.0
    assert float(r.headers["x-sim-duration-s"]) > float(r.headers["x-sim-ttft-s"]) > 0


def test_a_broken_stream_ends_with_a_protocol_error(scenario_file: Callable[[str], Path]) -> None:
    path = scenario_file("errors: {stream_break_rate: 1.0}\n")
    with (
        httpx.Client(transport=SimTransport(scenario=path), base_url=BASE) as client,
        client.stream("POST", "/chat/completions", json=_chat(stream=True)) as r,
    ):
        got = []
        with pytest.raises(httpx.RemoteProtocolError):
            got.extend(r.iter_lines())
    assert got and "[DONE]" not in "".join(got)
    with (
        httpx2.Client(transport=SimTransport2(scenario=path), base_url=BASE) as client2,
        client2.stream("POST", "/messages", json=_chat(stream=True)) as r2,
        pytest.raises(httpx2.RemoteProtocolError),
    ):
        list(r2.iter_lines())


def test_routes_and_bad_requests() -> None:
    transport = SimTransport(scenario="calm")
    with httpx.Client(transport=transport, base_url="http://sim.local") as client:
        assert client.post("/inference/v1/chat/completions", content=b"{nope").status_code == 400
        bad = client.post("/inference/v1/messages", json={"model": KIMI})
        assert bad.status_code == 400
        assert bad.json()["error"]["object"] == "error"
        assert "messages" in bad.json()["error"]["message"]
        assert client.get("/inference/v1/chat/completions").status_code == 405
        assert client.get("/v1/elsewhere").status_code == 404
        ids = [m["id"] for m in client.get("/inference/v1/models").json()["data"]]
        assert KIMI in ids and "accounts/fireworks/routers/kimi-k3-fast" in ids
        assert client.post("/sim/reset", json={"colour": 1}).status_code == 400
        reset = client.post("/sim/reset", json={"seed": 9, "time_s": 100})
    assert reset.status_code == 200
    assert reset.json()["seed"] == 9
    assert reset.json()["sim_time_s"] == pytest.approx(100.0)
    assert reset.json()["requests"] == 0


def test_selector_escalates_to_priority_during_an_outage() -> None:
    clock = FakeClock()
    service = SimService("outage", clock=clock, start_s=100.0)  # inside the 60..240 s outage
    transport = SimTransport(service)
    selector = Selector(clock=clock, transport=transport, api_key="sk-sim-test")
    body = {"model": "kimi-k3", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    result = selector.send(body, requirements=Requirements(deadline_s=20, reliability=0.9))
    assert result.ok and result.tier == "priority"
    stats = transport.stats()
    # Standard until its sheds make a try on it not worth even its free, fast refusal (the
    # last attempt is left to priority), then priority.
    assert set(stats["by_tier"]) == {"priority", "standard"}
    assert stats["by_tier"]["priority"] == {"200": 1}
    assert 1 <= stats["by_tier"]["standard"]["503"] <= 3
    assert (stats["hinted"], stats["priority_with_router"]) == (0, 0)


def test_a_service_and_a_separate_clock_are_refused() -> None:
    with pytest.raises(ValueError, match="pass the clock to the SimService"):
        SimTransport(SimService("calm", clock=FakeClock()), clock=FakeClock())


@pytest.mark.parametrize("scale", [float("inf"), float("nan"), 0.0, -1.0])
def test_a_time_scale_that_is_not_a_finite_positive_number_is_refused(scale: float) -> None:
    with pytest.raises(ValueError, match="time_scale must be a finite number > 0"):
        SimService("calm", clock=FakeClock(), time_scale=scale)


def test_a_routers_priority_tier_is_echoed_as_priority() -> None:
    # The US-only router with service_tier priority is billed us_priority: it answered
    # "default", which reads as a downgrade to a client that bills by the echoed tier.
    transport = SimTransport(scenario="calm", clock=FakeClock())
    body = _chat(model="accounts/fireworks/routers/kimi-k3-us", service_tier="priority")
    with httpx.Client(transport=transport, base_url=BASE) as client:
        r = client.post("/chat/completions", json=body)
    assert r.status_code == 200 and r.headers["x-sim-tier"] == "us_priority"
    assert r.json()["service_tier"] == "priority"
    assert transport.stats()["by_tier"] == {"us_priority": {"200": 1}}


def test_a_scenario_given_where_the_service_goes_is_named() -> None:
    # SimTransport("calm") was accepted, then failed with "'str' object has no attribute 'clock'".
    with pytest.raises(TypeError, match="service must be a SimService, got 'calm'; for a scen"):
        SimTransport("calm")  # type: ignore[arg-type]


# -- a client that gives up: its read timeout, or a stream it closes ----------------------------
# The in-process transports do what the simulator's server does over a socket: a client whose
# read timeout passes before its next bytes are due gets its library's ReadTimeout, at that
# timeout on the clock, and a request given up on (so, a stream closed early) is billed its
# prompt and the output generated until then. Before, the answer came whatever the client's
# timeout (a 3 s deadline's call answered after 80 s, recorded ok), and was billed whole.

LONG = _chat(max_tokens=3000)


def _whole_bill(stream: bool = False) -> float:
    transport = SimTransport(scenario="calm")
    with httpx.Client(transport=transport, base_url=BASE, timeout=None) as client:
        client.post("/chat/completions", json={**LONG, "stream": stream}).raise_for_status()
    billed: float = transport.stats()["billed_usd"]
    return billed


@pytest.mark.parametrize("lib", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_a_clients_read_timeout_ends_the_call_there_and_it_is_billed_until_then(lib: Any) -> None:
    clock = FakeClock()
    transport = (SimTransport if lib is httpx else SimTransport2)(scenario="calm", clock=clock)
    client = lib.Client(transport=transport, base_url=BASE, timeout=5.0)
    with client, pytest.raises(lib.ReadTimeout, match="simulated: the client's read timeout"):
        client.post("/chat/completions", json=LONG)
    assert clock.now() == pytest.approx(5.0)
    stats = transport.stats()
    assert stats["cancelled"] == 1
    assert 0 < stats["billed_usd"] < _whole_bill() / 5, stats["billed_usd"]


async def test_an_async_stream_whose_next_chunk_is_late_times_out_and_a_closed_one_is_billed() -> (
    None
):
    clock = FakeClock()
    transport = AsyncSimTransport(scenario="calm", clock=clock)
    body = {**LONG, "stream": True}
    # Its first token is due after a 0.01 s read timeout.
    client = httpx.AsyncClient(transport=transport, base_url=BASE, timeout=0.01)
    async with client, client.stream("POST", "/chat/completions", json=body) as r:
        with pytest.raises(httpx.ReadTimeout):
            await r.aread()
    assert transport.stats()["cancelled"] == 1
    transport.reset(time_s=0)
    client = httpx.AsyncClient(transport=transport, base_url=BASE, timeout=60)
    async with client, client.stream("POST", "/chat/completions", json=body) as r:
        async for _ in r.aiter_lines():
            break  # closed after its first chunk
    stats = transport.stats()
    assert stats["cancelled"] == 1
    assert 0 < stats["billed_usd"] < _whole_bill(stream=True) / 10, stats["billed_usd"]


def test_a_call_whose_deadline_passes_on_the_simulator_is_a_timeout_charged_its_estimate() -> None:
    from tiersel.budget import MemoryLedger

    clock = FakeClock()
    sim = SimTransport(scenario="calm", clock=clock)
    ledger = MemoryLedger(1.0)
    sel = Selector(clock=clock, transport=sim, ledger=ledger, api_key="", max_attempts=1)
    need = Requirements(deadline_s=3.0, tiers=["standard"], best_effort=True)
    result = sel.send(LONG, requirements=need)
    assert not result.ok and result.detail == "timed out" and clock.now() == pytest.approx(3.0)
    # tiersel's estimate of the bill covers what the provider billed for it.
    billed = sim.stats()["billed_usd"]
    assert 0 < billed <= ledger.state(clock.now()).spent_usd == pytest.approx(result.cost_usd)


def test_a_stream_closed_unread_is_billed_until_then_and_one_read_whole_is_not_cancelled() -> None:
    # Closed before its first chunk was read, its generator never ran: it was billed whole.
    body = {**LONG, "stream": True}
    whole = _whole_bill(stream=True)
    clock = FakeClock()
    transport = SimTransport(scenario="calm", clock=clock)
    with httpx.Client(transport=transport, base_url=BASE, timeout=600) as client:
        with client.stream("POST", "/chat/completions", json=body):
            pass  # headers only
        assert transport.stats()["cancelled"] == 1
        assert transport.stats()["billed_usd"] < whole / 100
        transport.reset(time_s=0)
        with client.stream("POST", "/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    break  # the usual end of a reader: everything arrived
    assert transport.stats()["cancelled"] == 0
    assert transport.stats()["billed_usd"] == pytest.approx(whole)


def test_a_transport_that_does_not_wait_bills_a_stream_whole() -> None:
    # wait=False moves no clock: a stream closed at its last event was 'cancelled' at 0 s and
    # billed its prompt only.
    transport = SimTransport(scenario="calm", wait=False)
    client = httpx.Client(transport=transport, base_url=BASE, timeout=600)
    with client, client.stream("POST", "/chat/completions", json={**LONG, "stream": True}) as r:
        next(r.iter_lines())
    assert transport.stats()["billed_usd"] == pytest.approx(_whole_bill(stream=True))


def test_a_stream_closed_by_another_task_ends_its_reader_and_is_billed_until_then() -> None:
    # helper-30: aclose() from another task raised 'asynchronous generator is already
    # running', and the reader read on to the end, billed whole.
    clock = FakeClock()
    transport = AsyncSimTransport(scenario="calm", clock=clock)
    body = {**LONG, "stream": True}

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url=BASE, timeout=600) as client:
            request = client.build_request("POST", "/chat/completions", json=body)
            response = await client.send(request, stream=True)

            async def read() -> None:
                async for _ in response.aiter_raw():
                    pass

            reader = asyncio.create_task(read())
            await clock.asleep(5.0)
            await response.aclose()
            with pytest.raises(httpx.ReadError, match="closed while it was read"):
                await reader

    run_virtual(main(), clock)
    stats = transport.stats()
    assert stats["cancelled"] == 1
    assert 0 < stats["billed_usd"] < _whole_bill(stream=True) / 5, stats["billed_usd"]


def test_a_stream_closed_by_another_thread_ends_its_reader_too() -> None:
    transport = SimTransport(scenario="calm", clock=SystemClock(), time_scale=0.01)
    failed: list[BaseException] = []
    with httpx.Client(transport=transport, base_url=BASE, timeout=600) as client:
        request = client.build_request("POST", "/chat/completions", json={**LONG, "stream": True})
        response = client.send(request, stream=True)

        def read() -> None:
            try:
                for _ in response.iter_raw():
                    pass
            except httpx.ReadError as exc:
                failed.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.05)  # 5 simulated seconds
        response.close()
        reader.join(10)
    assert not reader.is_alive() and len(failed) == 1
    stats = transport.stats()
    assert stats["cancelled"] == 1
    assert 0 < stats["billed_usd"] < _whole_bill(stream=True) / 5, stats["billed_usd"]
