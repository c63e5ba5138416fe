"""Requests that are not generation calls pass through untouched (hint headers aside)."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai
import pytest

import tiersel
from tests.transport.conftest import Recorder
from tiersel.sim.server import RunningServer
from tiersel.wrap import TierTransport


class Spy(httpx2.BaseTransport):
    """A real HTTP transport that keeps every request it is handed."""

    def __init__(self) -> None:
        self.inner = httpx2.HTTPTransport()
        self.requests: list[Any] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_model_lists_and_other_paths_pass_through(calm: RunningServer, recorder: Recorder) -> None:
    spy = Spy()
    http = httpx2.Client(
        transport=TierTransport(tiersel.Selector(api_key=""), spy, on_call=recorder)
    )
    client = openai.OpenAI(api_key="sk-test", base_url=calm.openai_base_url, http_client=http)
    plain = openai.OpenAI(api_key="sk-test", base_url=calm.openai_base_url)

    listed = client.models.with_raw_response.list()
    assert [m.id for m in listed.parse()] == [m.id for m in plain.models.list()]
    assert not any(k.startswith("x-tiersel-") for k in listed.headers)
    assert len(spy.requests) == 1
    assert spy.requests[0].url.path == "/inference/v1/models"

    # A path tiersel does not route (the simulator has no embeddings): the 404 comes back as
    # is, and a hint header on it is stripped all the same.
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(
            model="nomic-ai/nomic-embed-text-v1.5",
            input="hello",
            extra_headers={"x-tiersel-deadline": "5"},
        )
    sent = spy.requests[-1]
    assert sent.url.path == "/inference/v1/embeddings"
    assert not any(k.lower().startswith("x-tiersel-") for k in sent.headers)
    assert recorder.records == []  # nothing was routed
    stats = calm.stats()
    assert stats["hinted"] == 0
    assert stats["by_status"] == {"404": 1}
    http.close()
    plain.close()


def test_the_requests_the_client_builds_are_forwarded_as_they_are(calm: RunningServer) -> None:
    spy = Spy()
    http = httpx2.Client(transport=TierTransport(tiersel.Selector(api_key=""), spy))
    request = http.build_request("GET", calm.base_url + "/sim/stats", headers={"x-mine": "1"})
    response = http.send(request)
    assert response.status_code == 200
    assert spy.requests == [request]
    http.close()


def test_priority_on_a_fast_router_never_goes_upstream_routed_or_passed_through(
    calm: RunningServer,
) -> None:
    spy = Spy()
    http = httpx2.Client(transport=TierTransport(tiersel.Selector(api_key=""), spy))
    client = openai.OpenAI(api_key="sk-test", base_url=calm.openai_base_url, http_client=http)
    router = "accounts/fireworks/routers/kimi-k3-fast"
    # A routed call (text completions, here) is sent as the router alone: tiersel owns the tier.
    done = client.completions.create(
        model=router, prompt="hi", max_tokens=8, extra_body={"service_tier": "priority"}
    )
    assert done.choices[0].text
    (sent,) = spy.requests
    assert sent.url.path == "/inference/v1/completions"
    body = json.loads(sent.read())
    assert body["model"] == router and "service_tier" not in body
    # A body passed through (not a generation call) with the combination is refused, unsent.
    url = calm.openai_base_url + "/embeddings"
    asked = {"model": router, "input": "hi", "service_tier": "priority"}
    with pytest.raises(tiersel.RequestNotUnderstood) as caught:
        http.post(url, json=asked)
    assert str(caught.value) == (
        "POST /inference/v1/embeddings: the body asks for service_tier 'priority' on the fast"
        f" router model {router!r}; the two do not combine, so tiersel does not send it"
    )
    # The anthropic SDK's refusal mode answers instead of raising.
    refused = http.post(url, json=asked, headers={"user-agent": "Anthropic/Python 2.0.0"})
    assert refused.status_code == 400 and refused.headers["x-should-retry"] == "false"
    assert "fast router model" in refused.json()["error"]["message"]
    assert len(spy.requests) == 1
    assert calm.stats()["priority_with_router"] == 0
