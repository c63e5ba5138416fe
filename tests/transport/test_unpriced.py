"""Models without a choice, through the wrapper against the simulator server: a model with only a
standard price is routed, charged and recorded; a model the table cannot price goes as written
(warned once) when no budget is set, and is refused, never sent, under a budget."""

from __future__ import annotations

import json
import warnings

import httpx2
import openai
import pytest

import tiersel
from tests.transport.conftest import Recorder
from tests.transport.test_passthrough import Spy
from tiersel.budget import MemoryLedger
from tiersel.sim.server import RunningServer
from tiersel.wrap import TierTransport

STANDARD_ONLY = "accounts/fireworks/models/llama-v3p3-70b-instruct"
UNPRICED = "accounts/fireworks/routers/auto"  # Fireworks' own model router: in the table, no price
UNKNOWN = "accounts/fireworks/models/not-in-any-table"
MESSAGES = [{"role": "user", "content": "hi"}]


def client_for(
    server: RunningServer, sel: tiersel.Selector, spy: Spy, recorder: Recorder | None = None
) -> openai.OpenAI:
    http = httpx2.Client(transport=TierTransport(sel, spy, on_call=recorder))
    return openai.OpenAI(
        api_key="sk-test", base_url=server.openai_base_url, http_client=http, max_retries=0
    )


def test_a_standard_only_model_is_routed_charged_and_recorded(
    calm: RunningServer, recorder: Recorder
) -> None:
    ledger = MemoryLedger(1.0)
    sel = tiersel.Selector(api_key="", ledger=ledger)
    client = client_for(calm, sel, Spy(), recorder)
    raw = client.chat.completions.with_raw_response.create(
        model=STANDARD_ONLY, messages=MESSAGES, max_tokens=20
    )
    assert raw.status_code == 200 and raw.headers["x-tiersel-tier"] == "standard"
    record = recorder.last
    assert record.ok and record.tier == "standard" and record.cost_usd > 0
    assert ledger.state(0.0).spent_usd == pytest.approx(record.cost_usd)


def test_an_unpriced_model_goes_as_written_and_is_warned_once(
    calm: RunningServer, recorder: Recorder
) -> None:
    spy = Spy()
    client = client_for(calm, tiersel.Selector(api_key=""), spy, recorder)
    with pytest.warns(tiersel.TierselWarning, match="has no price in the price table") as caught:
        for _ in range(3):
            raw = client.chat.completions.with_raw_response.create(
                model=UNPRICED,
                messages=MESSAGES,
                max_tokens=20,
                extra_headers={"x-tiersel-deadline": "30"},
            )
            assert raw.status_code == 200 and "x-tiersel-tier" not in raw.headers
    assert len([w for w in caught if issubclass(w.category, tiersel.TierselWarning)]) == 1
    # Sent as written: its model, no tier fields, no hint header; not routed, so not recorded.
    for sent in spy.requests:
        body = sent.read()
        assert b'"model":"accounts/fireworks/routers/auto"' in body.replace(b" ", b"")
        assert b"service_tier" not in body
        assert not any(k.lower().startswith("x-tiersel") for k in sent.headers)
    assert len(spy.requests) == 3 and recorder.records == []
    assert calm.stats()["by_model"]  # the simulator served it
    # A model the table has never heard of goes too: the provider answers for it.
    with (
        pytest.warns(tiersel.TierselWarning, match="is not in the price table"),
        pytest.raises(openai.NotFoundError, match=r"model_not_found|not found"),
    ):
        client.chat.completions.create(model=UNKNOWN, messages=MESSAGES, max_tokens=20)


@pytest.mark.parametrize(("model", "problem"), [(UNPRICED, "has no price"), (UNKNOWN, "unknown")])
def test_under_a_budget_an_unpriced_model_is_refused_and_never_sent(
    calm: RunningServer, model: str, problem: str
) -> None:
    spy = Spy()
    ledger = MemoryLedger(1.0)
    client = client_for(calm, tiersel.Selector(api_key="", ledger=ledger), spy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(tiersel.UnpricedModel) as info:
            client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=20)
    assert problem in str(info.value) and "under a budget" in str(info.value)
    assert spy.requests == []
    state = ledger.state(0.0)
    assert state.spent_usd == 0 and state.reserved_usd == 0


def test_a_us_only_router_goes_with_priority_when_asked_or_chosen(calm: RunningServer) -> None:
    """Fireworks sells priority on its US-only routers: the one router tier that may carry a
    service_tier. Asked for by the caller (router id and service_tier) or allowed by name, it
    goes upstream as both; the simulator serves it as us_priority, never as priority on a fast
    model."""
    spy = Spy()
    client = client_for(calm, tiersel.Selector(api_key=""), spy)
    us = "accounts/fireworks/routers/kimi-k3-us"
    asked = client.chat.completions.with_raw_response.create(
        model=us, messages=MESSAGES, max_tokens=20, extra_body={"service_tier": "priority"}
    )
    assert asked.headers["x-tiersel-tier"] == "us_priority"
    with tiersel.requirements(tiers="us_priority"):
        chosen = client.chat.completions.with_raw_response.create(
            model="kimi-k3", messages=MESSAGES, max_tokens=20
        )
    assert chosen.headers["x-tiersel-tier"] == "us_priority"
    plain = client.chat.completions.with_raw_response.create(
        model=us, messages=MESSAGES, max_tokens=20
    )
    assert plain.headers["x-tiersel-tier"] == "us"
    sent = [json.loads(r.read()) for r in spy.requests]
    assert [(b["model"], b.get("service_tier")) for b in sent] == [
        (us, "priority"),
        (us, "priority"),
        (us, None),
    ]
    stats = calm.stats()
    assert stats["by_tier"]["us_priority"] == {"200": 2} and stats["by_tier"]["us"] == {"200": 1}
    assert stats["priority_with_router"] == 0


def test_a_retired_us_only_router_is_refused_not_sent_to_the_global_model(
    calm: RunningServer,
) -> None:
    spy = Spy()
    client = client_for(calm, tiersel.Selector(api_key=""), spy)
    with pytest.raises(tiersel.TierselError, match=r"\(us of glm-5p3-flash\) was retired"):
        client.chat.completions.create(
            model="accounts/fireworks/routers/glm-5p3-flash-us", messages=MESSAGES, max_tokens=20
        )
    assert spy.requests == []
