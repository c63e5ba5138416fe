"""When tiersel gives up on a call, the SDK gets the last error once and does not retry it:
the attempts are tiersel's alone. Upstream is a fake here, so every failure is certain."""

from __future__ import annotations

import json

import httpx
import httpx2
import openai
import pytest

import tiersel
from tests.transport.conftest import ANTHROPIC, MODEL, Recorder
from tiersel.budget import MemoryLedger
from tiersel.clock import FakeClock
from tiersel.wrap import CostBasis, TierTransport

ANSWER = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
}
SHED = {"error": {"object": "error", "type": "overloaded", "code": "overloaded", "message": "busy"}}


class Upstream:
    """A fake provider: answers every generation call with ``status`` (or raises ``error``)."""

    def __init__(self, status: int = 503, error: Exception | None = None) -> None:
        self.status = status
        self.error = error
        self.bodies: list[dict[str, object]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.content))
        if self.error is not None:
            raise self.error
        return httpx.Response(self.status, json=SHED)


def _selector() -> tiersel.Selector:
    # A fake clock: the backoffs between attempts pass at once.
    return tiersel.Selector(clock=FakeClock(), api_key="", max_attempts=4)


def test_openai_gets_the_last_shed_once(recorder: Recorder) -> None:
    upstream = Upstream(503)
    transport = TierTransport(_selector(), httpx.MockTransport(upstream), on_call=recorder)
    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://provider.test/inference/v1",
        http_client=httpx2.Client(transport=transport),
        max_retries=5,
    )
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
    assert caught.value.status_code == 503
    assert len(upstream.bodies) == 4  # tiersel's attempts, not multiplied by the SDK's retries
    headers = caught.value.response.headers
    assert headers["x-should-retry"] == "false"
    assert headers["x-tiersel-attempts"] == "4"
    assert headers["x-tiersel-cost-basis"] == "none"
    tried = headers["x-tiersel-tried"].split(",")
    assert tried[0] == "standard" and len(set(tried)) > 1  # it climbed before giving up
    # Never both a priority service tier and a fast router model in one request.
    for body in upstream.bodies:
        assert not ("/routers/" in str(body["model"]) and "service_tier" in body)
    record = recorder.last
    assert not record.ok and record.attempts == 4 and record.cost_usd == 0.0


@ANTHROPIC
def test_anthropic_gets_the_last_error_once() -> None:
    import anthropic

    upstream = Upstream(529)
    transport = TierTransport(_selector(), httpx.MockTransport(upstream))
    client = anthropic.Anthropic(
        api_key="sk-test",
        base_url="http://provider.test/inference",
        http_client=httpx2.Client(transport=transport),
        max_retries=5,
    )
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 529
    assert len(upstream.bodies) == 4


def test_no_response_at_all_becomes_one_gateway_error(recorder: Recorder) -> None:
    upstream = Upstream(error=httpx.ConnectError("connection refused"))
    transport = TierTransport(_selector(), httpx.MockTransport(upstream), on_call=recorder)
    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://provider.test/inference/v1",
        http_client=httpx.Client(transport=transport),
        max_retries=5,
    )
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
    assert caught.value.status_code == 502
    assert "no response after 4 attempt(s)" in caught.value.message
    assert len(upstream.bodies) == 4
    assert recorder.last.detail == "ConnectError: connection refused"


def test_timeouts_are_charged_and_the_response_says_it_is_an_estimate(
    recorder: Recorder,
) -> None:
    # A request that timed out was worked on, and is billed: the call failed, yet its cost is
    # not nothing, and the basis says how it is known (it said "none", "nothing billed").
    upstream = Upstream(error=httpx.ReadTimeout("the provider went quiet"))
    ledger = MemoryLedger(1.0)
    selector = tiersel.Selector(clock=FakeClock(), api_key="", max_attempts=2, ledger=ledger)
    transport = TierTransport(selector, httpx.MockTransport(upstream), on_call=recorder)
    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://provider.test/inference/v1",
        http_client=httpx.Client(transport=transport),
        max_retries=0,
    )
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
    headers = caught.value.response.headers
    assert caught.value.status_code == 504 and headers["x-tiersel-cost-basis"] == "estimate"
    record = recorder.last
    assert not record.ok and record.cost_basis is CostBasis.estimate and record.cost_usd > 0
    assert float(headers["x-tiersel-cost-usd"]) == pytest.approx(record.cost_usd)
    assert ledger.state(0.0).spent_usd == pytest.approx(record.cost_usd)


def test_a_call_served_after_a_timeout_says_its_cost_is_partly_an_estimate(
    recorder: Recorder,
) -> None:
    # Its cost is the served attempt's reported usage plus the timed-out attempt's estimated
    # bill: "actual" (the usage the provider reported) would say more than is known.
    answers: list[Exception | httpx.Response] = [
        httpx.ReadTimeout("the provider went quiet"),
        httpx.Response(200, json=ANSWER),
    ]

    def upstream(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    ledger = MemoryLedger(1.0)
    selector = tiersel.Selector(clock=FakeClock(), api_key="", max_attempts=2, ledger=ledger)
    transport = TierTransport(selector, httpx.MockTransport(upstream), on_call=recorder)
    with httpx.Client(transport=transport) as http:
        response = http.post(
            "http://provider.test/inference/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        )
    assert response.status_code == 200 and response.headers["x-tiersel-attempts"] == "2"
    record = recorder.last
    assert record.ok and record.cost_basis is CostBasis.estimate
    assert response.headers["x-tiersel-cost-basis"] == "estimate"
    served = float(response.headers["x-tiersel-cost-usd"])
    assert served == pytest.approx(record.cost_usd) == pytest.approx(ledger.state(0.0).spent_usd)


def test_a_final_client_error_is_not_retried() -> None:
    upstream = Upstream(400)
    transport = TierTransport(_selector(), httpx.MockTransport(upstream))
    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://provider.test/inference/v1",
        http_client=httpx.Client(transport=transport),
    )
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
    assert len(upstream.bodies) == 1


class RetryAfter:
    """A fake provider whose standard tier sheds with ``Retry-After: 60`` until ``healthy``."""

    def __init__(self, sheds: int) -> None:
        self.sheds = sheds
        self.bodies: list[dict[str, object]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.content))
        if len(self.bodies) <= self.sheds:
            return httpx.Response(503, json=SHED, headers={"retry-after": "60"})
        usage = {"prompt_tokens": 10, "completion_tokens": 2}
        return httpx.Response(200, json={"id": "c", "choices": [], "usage": usage})


@pytest.mark.parametrize(("timeout", "waits"), [(5.0, False), (120.0, True), (None, True)])
def test_a_call_without_a_deadline_waits_no_longer_than_its_clients_timeout(
    timeout: float | None, waits: bool
) -> None:
    # Only standard may serve, and it asks for 60 s: a client that waits 5 s for an answer gets
    # the shed at once rather than a minute's silence; one that would wait 120 s (or for ever)
    # has the cooldown waited out, and the call served.
    clock = FakeClock()
    upstream = RetryAfter(sheds=1)
    selector = tiersel.Selector(clock=clock, api_key="")
    transport = TierTransport(selector, httpx.MockTransport(upstream))
    client = httpx.Client(transport=transport, timeout=timeout)
    with tiersel.requirements(tiers=("standard",)):
        response = client.post(
            "http://provider.test/inference/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        )
    if waits:
        assert response.status_code == 200 and response.headers["x-tiersel-attempts"] == "2"
        assert clock.now() >= 60
    else:
        assert response.status_code == 503 and response.headers["x-should-retry"] == "false"
        assert response.headers["x-tiersel-attempts"] == "1" and clock.now() < 5
    assert len(upstream.bodies) == (2 if waits else 1)


def test_an_attempt_with_no_response_says_what_failed_and_where_but_no_path() -> None:
    # A job pointed at a wrong --base-url said only "ConnectError" on every row (a new user's
    # probe). The server is named by scheme, host and port: a path or query may hold a key.
    from tiersel.http.reply import failure

    where = httpx.Request("POST", "https://api.example.test:8443/v1/chat?key=SECRET")
    said = failure(httpx.ConnectError("[Errno 111] Connection refused", request=where))
    assert said == "ConnectError: [Errno 111] Connection refused (https://api.example.test:8443)"
    assert failure(httpx.ConnectError("refused")) == "ConnectError: refused"  # no request known
    assert failure(httpx.RemoteProtocolError("")) == "RemoteProtocolError"
