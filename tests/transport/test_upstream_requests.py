"""The request each attempt sends upstream. When the chosen tier changes nothing (no hint
headers, no deadline to cap the timeouts, the body as the caller sent it), the caller's own
request goes upstream as it is; otherwise a new one is built, without hints, its framing
matching its body. Upstream is a fake that keeps every request it receives."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

import tiersel
from tests.transport.conftest import MODEL, Recorder
from tiersel.clock import FakeClock
from tiersel.pricing import load_pricing
from tiersel.wrap import TierTransport

URL = "http://provider.test/inference/v1/chat/completions"
SHED = {"error": {"object": "error", "type": "overloaded", "code": "overloaded", "message": "busy"}}
COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
}


class Upstream:
    """Answers with the given statuses in turn (the last one repeats); keeps each request."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses) or [200]
        self.requests: list[httpx.Request] = []
        self.contents: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.contents.append(request.read())
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return httpx.Response(status, json=COMPLETION if status == 200 else SHED)


def _client(upstream: Upstream, recorder: Recorder | None = None) -> httpx.Client:
    selector = tiersel.Selector(clock=FakeClock(), api_key="", max_attempts=4)
    return httpx.Client(
        transport=TierTransport(selector, httpx.MockTransport(upstream), on_call=recorder)
    )


def _body(**extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
        **extra,
    }


def _framed(request: httpx.Request, content: bytes) -> None:
    assert request.headers["content-length"] == str(len(content))
    assert not any(k.lower().startswith("x-tiersel-") for k in request.headers)


def test_an_unchanged_call_sends_the_callers_request_itself(recorder: Recorder) -> None:
    upstream = Upstream(200)
    with _client(upstream, recorder) as client:
        request = client.build_request("POST", URL, json=_body())
        response = client.send(request)
    assert response.status_code == 200
    assert response.headers["x-tiersel-tier"] == "standard"
    assert upstream.requests == [request]  # no copy was built
    assert json.loads(upstream.contents[0]) == _body()
    _framed(upstream.requests[0], upstream.contents[0])
    assert recorder.last.ok and recorder.last.usage is not None


def test_the_callers_request_can_be_sent_again_after_a_shed() -> None:
    upstream = Upstream(503, 200)
    with _client(upstream) as client:
        request = client.build_request("POST", URL, json=_body())
        response = client.send(request)
    assert response.status_code == 200
    assert response.headers["x-tiersel-attempts"] == "2"
    # Whatever each attempt sent, its body is whole and its framing matches it.
    assert len(upstream.contents) == 2
    for sent, content in zip(upstream.requests, upstream.contents, strict=True):
        assert json.loads(content)["messages"] == _body()["messages"]
        _framed(sent, content)


@pytest.mark.parametrize(
    ("headers", "extra", "why"),
    [
        ({"x-tiersel-max-cost": "1"}, {}, "a hint header must not go upstream"),
        ({"x-tiersel-deadline": "30"}, {}, "a deadline caps the request's timeouts"),
        ({"x-tiersel-tiers": "priority"}, {}, "priority changes the body"),
        ({}, {"stream": True}, "a stream is asked for its usage"),
    ],
)
def test_a_request_that_changes_is_built_anew(
    headers: dict[str, str], extra: dict[str, Any], why: str
) -> None:
    upstream = Upstream(200)
    with _client(upstream) as client:
        request = client.build_request("POST", URL, json=_body(**extra), headers=headers)
        client.send(request).read()
    sent = upstream.requests[0]
    assert sent is not request, why
    _framed(sent, upstream.contents[0])
    body = json.loads(upstream.contents[0])
    if "x-tiersel-deadline" in headers:
        assert all(v <= 30 for v in sent.extensions["timeout"].values())
    if "x-tiersel-tiers" in headers:
        assert body["service_tier"] == "priority"
    if extra:
        assert body["stream_options"] == {"include_usage": True}


def test_a_chunked_request_is_sent_with_a_length() -> None:
    upstream = Upstream(200)
    content = json.dumps(_body()).encode()
    with _client(upstream) as client:
        request = client.build_request("POST", URL, content=iter([content]))
        assert request.headers["transfer-encoding"] == "chunked"
        assert client.send(request).status_code == 200
    sent = upstream.requests[0]
    assert sent is not request
    assert "transfer-encoding" not in sent.headers
    _framed(sent, upstream.contents[0])
    assert upstream.contents[0] == content


def test_a_tier_served_from_its_own_host_goes_there_with_its_path_and_host_header(
    tmp_path: Any,
) -> None:
    """A tier's request form may be a base URL (Fireworks serves its US-only fast variant from
    us.api.fireworks.ai): the wrapper and `Selector.send` send that tier's attempts to its host,
    with the caller's path and a Host header that matches; other tiers go where they were sent."""
    overlay = tmp_path / "us.yaml"
    overlay.write_text(
        "tiers:\n"
        "  fast_us: {opt_in: true, request: {model: router, base_url: 'https://us.provider.test'}}\n"
        "models:\n"
        "  kimi-k3:\n"
        "    fast_us: {router: accounts/fireworks/routers/kimi-k3-fast-us, input: 5, output: 25}\n"
    )
    pricing = load_pricing(overlay=overlay)
    upstream = Upstream(200)
    selector = tiersel.Selector(clock=FakeClock(), api_key="", pricing=pricing)
    http = httpx.Client(transport=TierTransport(selector, httpx.MockTransport(upstream)))
    with tiersel.requirements(tiers="fast_us"):
        assert http.post(URL, json=_body()).status_code == 200
    assert http.post(URL, json=_body()).status_code == 200  # standard: where it was sent
    moved, stayed = upstream.requests
    assert str(moved.url) == "https://us.provider.test/inference/v1/chat/completions"
    assert moved.headers["host"] == "us.provider.test"
    assert json.loads(upstream.contents[0])["model"].endswith("/routers/kimi-k3-fast-us")
    assert str(stayed.url) == URL and stayed.headers["host"] == "provider.test"
    # The same through Selector.send, whose base URL has its own path.
    direct = tiersel.Selector(
        clock=FakeClock(),
        api_key="",
        pricing=pricing,
        transport=httpx.MockTransport(upstream),
        base_url="https://provider.test/inference/v1",
    )
    result = direct.send(_body(), requirements=tiersel.Requirements(tiers="fast_us"))
    assert result.ok and result.tier == "fast_us"
    assert str(upstream.requests[-1].url) == (
        "https://us.provider.test/inference/v1/chat/completions"
    )


def test_a_tier_base_url_must_be_https_except_on_loopback(tmp_path: Any) -> None:
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("tiers:\n  eu: {request: {base_url: 'http://eu.provider.test'}}\n")
    with pytest.raises(tiersel.PricingError) as info:
        load_pricing(overlay=overlay)
    assert "tiers.eu.request.base_url: must be an https:// URL" in str(info.value)
    overlay.write_text("tiers:\n  eu: {request: {base_url: 'http://127.0.0.1:8080/ignored'}}\n")
    assert load_pricing(overlay=overlay).tiers["eu"].base_url == "http://127.0.0.1:8080"


def test_a_door_given_no_transport_uses_its_selectors_rather_than_the_network() -> None:
    # TierTransport(Selector(transport=sim)) sent to api.fireworks.ai (a DNS failure, a 502, in a
    # new user's probe; with a key set, a paid call from a test meant for the simulator).
    import asyncio

    from tiersel.sim import AsyncSimTransport, SimTransport

    url = "https://api.fireworks.ai/inference/v1/chat/completions"
    body = {"model": "kimi-k3", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    clock = FakeClock()
    sim = SimTransport(scenario="calm", clock=clock)
    door = tiersel.TierTransport(tiersel.Selector(transport=sim, clock=clock, api_key=""))
    with httpx.Client(transport=door) as client:
        assert client.post(url, json=body).status_code == 200
    assert sim.stats()["requests"] == 1

    async def go() -> None:
        other = AsyncSimTransport(scenario="calm", clock=clock)
        selector = tiersel.Selector(async_transport=other, clock=clock, api_key="")
        async with httpx.AsyncClient(transport=tiersel.AsyncTierTransport(selector)) as client:
            assert (await client.post(url, json=body)).status_code == 200
        assert other.stats()["requests"] == 1

    asyncio.run(go())
    # A function cannot be a door's transport: said at once, not sent to the network instead.
    with pytest.raises(TypeError, match="TierTransport: the selector's transport= is a function"):
        tiersel.TierTransport(tiersel.Selector(transport=sim.handle_request, api_key=""))
    # A selector over an httpx client: the door's own default, as before.
    over_client = tiersel.TierTransport(tiersel.Selector(transport=httpx.Client(), api_key=""))
    assert repr(over_client).endswith("transport=default)")
