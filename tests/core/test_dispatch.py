"""Sending through an injected transport: escalation, Retry-After, final errors, accounting."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import tiersel
from tiersel import Call, Requirements, Selector
from tiersel.budget import MemoryLedger
from tiersel.clock import FakeClock
from tiersel.dialects import Dialect, Usage
from tiersel.engine.results import AttemptRecord
from tiersel.errors import StoreUnavailable, UnknownTier
from tiersel.policy import CheapestFeasible
from tiersel.signals import Observation, Outcome, SignalKey

BODY = {
    "model": "accounts/fireworks/models/kimi-k3",
    "messages": [{"role": "user", "content": "hello there"}],
    "max_tokens": 200,
}
ANTHROPIC_BODY = {**BODY, "model": "kimi-k3"}
SHED = {
    "error": {
        "object": "error",
        "type": "server_overloaded",
        "code": "503",
        "message": "overloaded",
    }
}


def ok(prompt: int = 120, completion: int = 80, cached: int = 0, **extra: Any) -> httpx.Response:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return httpx.Response(
        200, json={"id": "c1", "object": "chat.completion", "choices": [], "usage": usage, **extra}
    )


class Upstream:
    """A scripted provider: a list of responses, or a function of the request body."""

    def __init__(
        self, script: list[httpx.Response] | Callable[[dict[str, Any]], httpx.Response]
    ) -> None:
        self.script = script
        self.seen: list[tuple[dict[str, Any], httpx.Headers]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.seen.append((body, request.headers))
        if callable(self.script):
            return self.script(body)
        return self.script.pop(0)

    @property
    def tiers(self) -> list[str]:
        out = []
        for body, _ in self.seen:
            if "/routers/" in body["model"]:
                out.append("fast")
            else:
                out.append(body.get("service_tier") or "standard")
        return out


def selector(upstream: Upstream, clock: FakeClock | None = None, **kw: Any) -> Selector:
    return Selector(
        clock=clock or FakeClock(), transport=httpx.MockTransport(upstream), api_key="", **kw
    )


def test_a_shed_escalates_within_the_deadline_and_the_cost_is_the_served_tiers() -> None:
    # Standard sheds every time: the schedule's attempts on it fail fast, and the call climbs
    # to priority within its attempts, billed at priority's price.
    def script(body: dict[str, Any]) -> httpx.Response:
        if body.get("service_tier") == "priority":
            return ok(prompt=1000, completion=100, cached=400)
        return httpx.Response(503, json=SHED)

    up = Upstream(script)
    ledger = MemoryLedger(1.0)
    records: list[AttemptRecord] = []
    sel = selector(up, ledger=ledger, on_attempt=records.append)
    r = sel.send(BODY, requirements=Requirements(deadline_s=30, reliability=0.99))
    assert r.ok and r.tier == "priority" and up.tiers[-1] == "priority"
    assert set(up.tiers[:-1]) == {"standard"} and 2 <= r.attempts <= 4
    kimi = sel.pricing.model("kimi-k3").tiers["priority"]
    expected = (
        600 * kimi.input_per_token + 400 * kimi.cached_input_per_token + 100 * kimi.output_per_token
    )
    assert r.cost_usd == pytest.approx(expected)
    state = ledger.state(0.0)
    assert state.spent_usd == pytest.approx(expected) and state.reserved_usd == 0.0
    shed = Outcome.shed
    assert [x.outcome for x in records] == [shed] * (r.attempts - 1) + [Outcome.ok]
    assert isinstance(r.response, httpx.Response) and r.response.status_code == 200


def test_after_one_shed_a_call_follows_its_schedule() -> None:
    # On a calm system the cheapest schedule for 0.99 within 30 s tries standard again after a
    # shed before it climbs: after the shed the call makes its second attempt as planned,
    # without deciding again, at the planned start (after the backoff).
    clock = FakeClock()
    up = Upstream([httpx.Response(503, json=SHED), ok()])
    r = selector(up, clock).send(BODY, requirements=Requirements(deadline_s=30, reliability=0.99))
    assert r.ok and up.tiers == ["standard", "standard"] and r.tier == "standard"
    decision, followed = r.decisions
    assert followed is decision and r.tried == ("standard", "standard")
    assert [s.tier for s in decision.plan[:2]] == ["standard", "standard"]
    assert decision.p_success >= 0.99
    assert clock.now() >= decision.plan[1].start_s > 0  # it waited for the planned start


def test_with_two_attempts_a_call_climbs_after_its_first_shed() -> None:
    # Two attempts on standard reach 0.9994 on priors: a target above that needs priority
    # as the second attempt.
    up = Upstream([httpx.Response(503, json=SHED), ok()])
    sel = selector(up, max_attempts=2)
    r = sel.send(BODY, requirements=Requirements(deadline_s=30, reliability=0.9995))
    assert r.ok and up.tiers == ["standard", "priority"]
    assert [d.label for d in r.decisions] == ["standard>priority"] * 2


def test_a_loose_call_stays_on_standard_after_a_shed() -> None:
    clock = FakeClock()
    up = Upstream([httpx.Response(503, json=SHED), ok()])
    r = selector(up, clock).send(BODY, requirements=Requirements(deadline_s=600))
    assert r.ok and up.tiers == ["standard", "standard"]
    assert clock.now() > 0  # it backed off before trying standard again


def test_a_loose_call_waits_out_a_cooldown_rather_than_paying_more() -> None:
    clock = FakeClock()
    up = Upstream([httpx.Response(503, json=SHED, headers={"retry-after": "20"}), ok()])
    r = selector(up, clock).send(BODY, requirements=Requirements(deadline_s=600))
    assert r.ok and up.tiers == ["standard", "standard"] and clock.now() >= 20
    assert r.decisions[-1].tier == "standard"
    # A tight call facing the same cooldown does not wait: it pays for priority.
    clock2 = FakeClock()
    up2 = Upstream([httpx.Response(503, json=SHED, headers={"retry-after": "20"}), ok()])
    r2 = selector(up2, clock2).send(BODY, requirements=Requirements(deadline_s=15))
    assert r2.ok and up2.tiers == ["standard", "priority"] and clock2.now() < 20


def test_retry_after_is_honoured_when_no_other_tier_is_allowed() -> None:
    clock = FakeClock()
    up = Upstream(
        [
            httpx.Response(
                429, json={"error": {"code": "rate_limited"}}, headers={"retry-after": "3"}
            ),
            ok(),
        ]
    )
    sel = selector(up, clock)
    r = sel.send(BODY, requirements=Requirements(tiers=["standard"], deadline_s=60))
    assert r.ok and r.attempts == 2 and up.tiers == ["standard", "standard"]
    assert clock.now() >= 3.0


def test_retry_after_past_the_deadline_gives_up_without_sleeping_past_it() -> None:
    clock = FakeClock()
    up = Upstream([httpx.Response(503, json=SHED, headers={"retry-after": "30"})])
    sel = selector(up, clock)
    r = sel.send(BODY, requirements=Requirements(tiers=["standard"], deadline_s=10))
    assert not r.ok and r.attempts == 1 and clock.now() < 10
    assert r.response.status_code == 503


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_final_errors_are_never_retried(status: int) -> None:
    up = Upstream(lambda body: httpx.Response(status, json={"error": {"message": "no"}}))
    r = selector(up).send(BODY, requirements=Requirements(reliability=0.9))
    assert not r.ok and r.attempts == 1 and len(up.seen) == 1
    assert r.response.status_code == status


def test_spend_limit_refusal_is_not_retried() -> None:
    refusal = {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "details": {"error_code": "enforced_spend_limit_reached"},
        },
    }
    up = Upstream(lambda body: httpx.Response(429, json=refusal))
    r = selector(up).send(ANTHROPIC_BODY, path="/messages")
    assert not r.ok and r.attempts == 1 and "spend limit" in r.detail


def test_attempts_are_bounded() -> None:
    up = Upstream(lambda body: httpx.Response(500, json={"error": {"message": "boom"}}))
    r = selector(up, max_attempts=3).send(BODY)
    assert not r.ok and r.attempts == 3 and len(up.seen) == 3


def test_transport_errors_and_timeouts_are_retried_and_recorded() -> None:
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ConnectError("refused", request=request)
        if calls["n"] == 2:
            raise httpx.ReadTimeout("slow", request=request)
        return ok()

    sel = Selector(clock=FakeClock(), transport=httpx.MockTransport(flaky), api_key="")
    r = sel.send(BODY)
    assert r.ok and r.attempts == 3
    stats = sel.signals.stats(SignalKey("fireworks", "kimi-k3", r.tier), 0.0)
    assert stats.error + stats.timeout + stats.ok >= 1


def test_a_request_that_timed_out_is_charged_what_the_provider_bills_for_it() -> None:
    # The provider worked on a request until the client gave up on it, and bills its prompt and
    # the output made until then: the budget counts that estimate (the prompt as estimated,
    # the output at the tier's expected rate after its expected first token), as for a hedge's
    # cancelled loser; before, a timeout was charged nothing and a budget could be overspent.
    clock = FakeClock()
    calls = {"n": 0}

    def slow_once(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            clock.advance(2.5)
            raise httpx.ReadTimeout("slow", request=request)
        return ok()

    ledger = MemoryLedger(1.0)
    sel = Selector(clock=clock, transport=httpx.MockTransport(slow_once), api_key="", ledger=ledger)
    call, _ = sel.engine.call_for(BODY, Dialect.openai)
    kimi = sel.pricing.model("kimi-k3").tiers["standard"]

    def estimate() -> float:  # what the next call's timed-out attempt is to be charged
        health = sel.health("kimi-k3")["standard"]
        ttft = health.ttft_s + kimi.spec.priors.prefill_s(call.uncached_input_tokens)
        made = min(200, round((2.5 - ttft) * health.output_tps))
        assert 0 < made < 200
        return call.input_tokens * kimi.input_per_token + made * kimi.output_per_token

    dropped = estimate()
    r = sel.send(BODY)
    served = 120 * kimi.input_per_token + 80 * kimi.output_per_token
    assert r.ok and r.attempts == 2 and r.sunk_usd == pytest.approx(dropped)
    assert r.cost_usd == pytest.approx(dropped + served)
    state = ledger.state(clock.now())
    assert state.spent_usd == pytest.approx(dropped + served) and state.reserved_usd == 0.0
    # With no retry left, the call fails, charged that bill alone.
    calls["n"], spent = 0, state.spent_usd
    again = estimate()
    r = sel.send(BODY, requirements=Requirements(max_attempts=1, tiers=("standard",)))
    assert not r.ok and r.cost_usd == pytest.approx(again)
    state = ledger.state(clock.now())
    assert state.spent_usd == pytest.approx(spent + again) and state.reserved_usd == 0.0


def test_a_reply_read_whole_records_its_output_rate_after_the_expected_first_token() -> None:
    # 80 tokens in 3 s, where the call's first token is expected after about 1 s (the tier's,
    # and its prompt's prefill): about 40 tokens/s, not the 26.7 of tokens over the whole call
    # (a latency estimate of TTFT plus tokens over that rate would count the TTFT twice).
    clock = FakeClock()

    def slow(request: httpx.Request) -> httpx.Response:
        clock.advance(3.0)
        return ok(completion=80)

    sel = Selector(clock=clock, transport=httpx.MockTransport(slow), api_key="")
    key = SignalKey("fireworks", "kimi-k3", "standard")
    call, _ = sel.engine.call_for(BODY, Dialect.openai)
    prefill = (
        sel.pricing.model("kimi-k3")
        .tiers["standard"]
        .spec.priors.prefill_s(call.input_tokens - call.cached_input_tokens)
    )
    assert prefill > 0
    ttft = sel.health("kimi-k3", clock.now())["standard"].ttft_s + prefill
    r = sel.send(BODY, requirements=Requirements(tiers=("standard",)))
    assert r.ok
    stats = sel.signals.stats(key, clock.now())
    assert stats.tps_n == 1
    assert stats.tps_sum == pytest.approx(80 / (3.0 - ttft))


def test_hint_headers_never_go_upstream_and_priority_never_rides_a_fast_model() -> None:
    up = Upstream(lambda body: ok())
    sel = selector(up)
    body = {**BODY, "service_tier": "priority"}
    r = sel.send(
        body,
        requirements=Requirements(min_output_tps=100),
        headers={"x-tiersel-deadline": "5", "x-other": "1"},
    )
    assert r.ok and r.tier == "fast"
    sent, headers = up.seen[0]
    assert sent["model"].endswith("/routers/kimi-k3-fast") and "service_tier" not in sent
    assert "x-tiersel-deadline" not in headers and headers["x-other"] == "1"


def test_the_served_tier_in_the_response_is_what_is_billed() -> None:
    # Asked for priority, the response says it was served at standard (a downgrade): bill standard.
    up = Upstream(lambda body: ok(prompt=1000, completion=100, service_tier="default"))
    sel = selector(up)
    r = sel.send(BODY, requirements=Requirements(tiers=["priority"]))
    std = sel.pricing.model("kimi-k3").tiers["standard"]
    assert r.tier == "standard"
    assert r.cost_usd == pytest.approx(1000 * std.input_per_token + 100 * std.output_per_token)


def test_a_response_that_names_no_tier_is_billed_at_the_tier_it_was_sent_at() -> None:
    # Fireworks reports no served tier: an accepted priority request was served at priority.
    up = Upstream(lambda body: ok(prompt=1000, completion=100))
    sel = selector(up)
    r = sel.send(BODY, requirements=Requirements(tiers=["priority"]))
    pri = sel.pricing.model("kimi-k3").tiers["priority"]
    assert up.seen[0][0]["service_tier"] == "priority"
    assert r.tier == "priority"
    assert r.cost_usd == pytest.approx(1000 * pri.input_per_token + 100 * pri.output_per_token)


def test_a_response_without_usage_is_charged_its_worst_case() -> None:
    up = Upstream(lambda body: httpx.Response(200, json={"id": "x", "choices": []}))
    ledger = MemoryLedger(1.0)
    r = selector(up, ledger=ledger).send(BODY)
    assert r.ok and r.usage is None
    assert r.cost_usd == pytest.approx(r.decision.plan[0].worst_cost_usd)  # type: ignore[union-attr]
    assert ledger.state(0.0).spent_usd == pytest.approx(r.cost_usd)


def test_anthropic_usage_is_read() -> None:
    msg = {
        "type": "message",
        "usage": {
            "input_tokens": 50,
            "cache_read_input_tokens": 30,
            "output_tokens": 20,
            "service_tier": "standard",
        },
    }
    up = Upstream(lambda body: httpx.Response(200, json=msg))
    r = selector(up).send(ANTHROPIC_BODY, path="/messages")
    assert r.ok and r.usage == Usage(80, 30, 20, "standard")


def test_budget_exhausted_before_any_send() -> None:
    up = Upstream(lambda body: ok())
    with pytest.raises(tiersel.BudgetExhausted):
        selector(up, ledger=MemoryLedger(1e-9)).send(BODY)
    assert up.seen == []


@pytest.mark.parametrize("deadline", [None, 30.0, 90.0])
def test_a_tier_cooling_down_does_not_hide_that_no_tier_is_affordable(
    deadline: float | None,
) -> None:
    # One shed puts standard on a 60 s cooldown. A later call no tier can afford must be refused
    # at once for its budget, not made to wait out (or fail on) a cooldown it could never use.
    clock = FakeClock()
    up = Upstream([httpx.Response(503, json=SHED, headers={"retry-after": "60"}), ok()])
    ledger = MemoryLedger(0.05)
    sel = selector(up, clock, ledger=ledger)
    first = sel.send(BODY, requirements=Requirements(tiers=["standard"], deadline_s=5))
    assert not first.ok and sel.health(BODY["model"])["standard"].state.value == "open"
    big = {**BODY, "max_tokens": 100_000}
    sent, started = len(up.seen), clock.now()
    with pytest.raises(tiersel.BudgetExhausted) as caught:
        sel.send(big, requirements=Requirements(deadline_s=deadline))
    assert {r.code for r in caught.value.reasons} - {"not_allowed", "not_offered", "opt_in"} == {
        "budget"
    }
    assert len(up.seen) == sent and clock.now() == started
    assert ledger.state(clock.now()).reserved_usd == 0
    # The same with a cost cap instead of a budget: NoFeasibleTier at once, naming the cap.
    with pytest.raises(tiersel.NoFeasibleTier) as capped:
        sel.send(BODY, requirements=Requirements(deadline_s=deadline, max_cost_usd=1e-6))
    assert "cost_cap" in {r.code for r in capped.value.reasons}
    assert "cooldown" not in {r.code for r in capped.value.reasons}
    assert clock.now() == started


def test_no_feasible_tier_before_any_send() -> None:
    up = Upstream(lambda body: ok())
    with pytest.raises(tiersel.NoFeasibleTier):
        selector(up).send(BODY, requirements=Requirements(max_cost_usd=1e-9))
    assert up.seen == []


def test_bad_bodies_are_refused_clearly() -> None:
    sel = selector(Upstream(lambda body: ok()))
    with pytest.raises(tiersel.RequestNotUnderstood, match="'model'"):
        sel.send({"messages": []})
    with pytest.raises(tiersel.RequestNotUnderstood, match="max_tokens must be a positive integer"):
        sel.send({**BODY, "max_tokens": -3})
    with pytest.raises(tiersel.UnknownModel, match="nope"):
        sel.send({**BODY, "model": "nope"})
    with pytest.raises(tiersel.RequestNotUnderstood, match="is not a generation path"):
        sel.send(BODY, path="/embeddings")


def given_up_bill(sel: Selector, after_s: float) -> float:
    """What BODY's attempt on standard is billed when given up on ``after_s`` seconds in: its
    prompt as estimated and the output made until then at standard's expected pace."""
    call, _ = sel.engine.call_for(BODY, Dialect.openai)
    kimi = sel.pricing.model("kimi-k3").tiers["standard"]
    health = sel.health("kimi-k3")["standard"]
    ttft = health.ttft_s + kimi.spec.priors.prefill_s(call.uncached_input_tokens)
    made = min(200, round(max(0.0, after_s - ttft) * health.output_tps))
    return call.input_tokens * kimi.input_per_token + made * kimi.output_per_token


def test_an_interrupted_call_leaves_nothing_reserved_and_charges_its_attempt_in_flight() -> None:
    # The request left, and the provider bills it for its prompt and the output made until the
    # interrupt: the budget is charged that (before, nothing: the reservation was released).
    clock = FakeClock()

    def boom(request: httpx.Request) -> httpx.Response:
        clock.advance(2.0)
        raise KeyboardInterrupt

    ledger = MemoryLedger(1.0)
    sel = Selector(clock=clock, transport=httpx.MockTransport(boom), ledger=ledger, api_key="")
    billed = given_up_bill(sel, 2.0)
    with pytest.raises(KeyboardInterrupt):
        sel.send(BODY, requirements=Requirements(tiers=("standard",)))
    state = ledger.state(clock.now())
    assert state.reserved_usd == 0.0 and state.spent_usd == pytest.approx(billed) and billed > 0
    # Interrupted before any request left (here, while reserving): nothing is charged.
    spent = state.spent_usd

    class Interrupting(MemoryLedger):
        def reserve(self, *args: Any, **kw: Any) -> Any:
            raise KeyboardInterrupt

    quiet = Selector(
        clock=clock, transport=httpx.MockTransport(boom), ledger=Interrupting(1.0), api_key=""
    )
    with pytest.raises(KeyboardInterrupt):
        quiet.send(BODY)
    assert quiet.engine.ledger.state(clock.now()).spent_usd == 0.0  # type: ignore[union-attr]
    assert ledger.state(clock.now()).spent_usd == spent


async def test_a_cancelled_async_call_charges_its_attempt_in_flight() -> None:
    clock = FakeClock()
    sent = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        clock.advance(1.5)
        sent.set()
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    ledger = MemoryLedger(1.0)
    sel = Selector(
        clock=clock, async_transport=httpx.MockTransport(hang), ledger=ledger, api_key=""
    )
    billed = given_up_bill(sel, 1.5)
    task = asyncio.create_task(sel.asend(BODY, requirements=Requirements(tiers=("standard",))))
    await sent.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    state = ledger.state(clock.now())
    assert state.reserved_usd == 0.0 and state.spent_usd == pytest.approx(billed) and billed > 0


def test_api_key_is_sent_but_never_shown() -> None:
    up = Upstream(lambda body: ok())
    sel = Selector(clock=FakeClock(), transport=httpx.MockTransport(up), api_key="sk-canary-123")
    r = sel.send(BODY)
    assert up.seen[0][1]["authorization"] == "Bearer sk-canary-123"
    assert "canary" not in repr(sel) and "canary" not in repr(r) and "canary" not in str(vars(sel))


async def test_async_send_escalates_the_same_way() -> None:
    def script(body: dict[str, Any]) -> httpx.Response:
        if body.get("service_tier") == "priority":
            return ok()
        return httpx.Response(503, json=SHED)

    up = Upstream(script)

    async def handler(request: httpx.Request) -> httpx.Response:
        return up(request)

    ledger = MemoryLedger(1.0)
    sel = Selector(
        clock=FakeClock(), async_transport=httpx.MockTransport(handler), ledger=ledger, api_key=""
    )
    r = await sel.asend(BODY, requirements=Requirements(deadline_s=30, reliability=0.99))
    assert r.ok and r.tier == "priority" and set(up.tiers[:-1]) == {"standard"}
    assert ledger.state(0.0).reserved_usd == 0.0 and ledger.state(0.0).spent_usd == pytest.approx(
        r.cost_usd
    )


def test_a_plain_function_is_a_transport() -> None:
    up = Upstream(lambda body: ok())
    sel = Selector(clock=FakeClock(), api_key="")
    assert sel.send(BODY, transport=up).ok


def test_shed_signals_steer_the_next_call() -> None:
    clock = FakeClock()
    up = Upstream(
        lambda body: (
            httpx.Response(503, json=SHED)
            if "service_tier" not in body and "/routers/" not in body["model"]
            else ok()
        )
    )
    sel = selector(up, clock)
    need = Requirements(deadline_s=30, reliability=0.95)
    firsts = []
    for _ in range(4):
        before = len(up.seen)
        assert sel.send(BODY, requirements=need).ok
        firsts.append(up.tiers[before])
        clock.advance(0.5)
    # The sheds pile up in the signals (and open standard's circuit): later calls skip standard.
    assert firsts[0] == "standard" and firsts[-1] == "priority", firsts
    before = len(up.seen)
    assert sel.send(BODY, requirements=need).ok
    assert up.tiers[before:] == ["priority"]


def test_send_reads_hint_headers_and_a_requirements_block_as_the_transport_does() -> None:
    # Selector.send reads its request through the transport's route: hint headers set
    # requirements and never go upstream; a tiersel.requirements() block applies.
    up = Upstream(lambda body: ok())
    sel = selector(up)
    r = sel.send(BODY, headers={"x-tiersel-tiers": "priority", "x-trace": "t1"})
    assert r.ok and r.tier == "priority" and up.tiers == ["priority"]
    sent = up.seen[-1][1]
    assert sent["x-trace"] == "t1" and not any(k.startswith("x-tiersel-") for k in sent)
    with tiersel.requirements(tiers=("fast",)):
        assert sel.send(BODY).tier == "fast"
    assert up.tiers == ["priority", "fast"]
    # The explicit requirements are the defaults the block and the hints build on.
    r = sel.send(BODY, requirements=Requirements(tiers=("priority",)))
    assert r.tier == "priority"
    with pytest.raises(tiersel.InvalidHint, match="x-tiersel-tiers"):
        sel.send(BODY, headers={"x-tiersel-tiers": "platinum"})
    assert len(up.seen) == 3  # the bad hint sent nothing


def test_a_plain_function_transport_can_read_every_attempts_body() -> None:
    # A transport that is a plain function reads request.content, which must be there for an
    # attempt whose body tiersel rewrote (priority's service_tier), sync and async.
    seen: list[dict[str, Any]] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return ok()

    async def aupstream(request: httpx.Request) -> httpx.Response:
        return upstream(request)

    priority = Requirements(tiers=("priority",))
    sel = Selector(api_key="", transport=upstream, async_transport=aupstream)
    assert sel.send(BODY, requirements=priority).tier == "priority"
    assert asyncio.run(sel.asend(BODY, requirements=priority)).tier == "priority"
    assert [b.get("service_tier") for b in seen] == ["priority", "priority"]


class StalledClock(FakeClock):
    """A fake clock on a stalled machine: each wait overruns by ``stall`` seconds."""

    def __init__(self, stall: float) -> None:
        super().__init__()
        self.stall = stall

    during_sleep: Callable[[], object] | None = None  # what happens while it sleeps

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds + self.stall if seconds > 0 else seconds)
        if self.during_sleep is not None:
            self.during_sleep()


def test_a_call_that_waited_is_carried_on_at_best_effort_not_refused() -> None:
    # Standard alone is allowed and cooling for 3 s: the plan (P(success) 0.62) waits, then
    # sends. The machine stalls, so the wait ends with 5 s of the 20 left, and no schedule
    # meets 0.6 any more. The call was admitted (it waited for its plan), so it goes on with
    # the likeliest schedule instead of raising NoFeasibleTier after spending its deadline.
    clock, up, sel, need = _stalled(stall=12.0)
    r = sel.send(BODY, requirements=need)
    assert r.ok and r.attempts == 1 and up.tiers == ["standard"]
    assert clock.now() == pytest.approx(15.0)
    assert r.decision is not None and 0.01 < r.decision.p_success < 0.6
    chosen = [c.code for c in r.decision.reasons if c.verdict == "chosen"]
    assert chosen == ["best_effort"]


def test_a_call_left_no_hope_after_its_wait_is_still_refused() -> None:
    # The same with 2 s left: the likeliest schedule is hopeless (P(success) < 0.01), so
    # nothing is sent and the call's refusal is what the caller gets.
    clock, up, sel, need = _stalled(stall=15.0)
    with pytest.raises(tiersel.NoFeasibleTier, match=r"below the target 0\.6000"):
        sel.send(BODY, requirements=need)
    assert up.seen == [] and clock.now() == pytest.approx(18.0)


def test_a_call_that_asked_for_speed_is_carried_on_while_its_tier_is_fast_enough() -> None:
    # The first case's call, also asking for its first token within 10 s: standard still
    # answers that fast, so the likeliest plan left keeps to it and the call is carried on.
    clock, up, sel, need = _stalled(stall=12.0, max_ttft_s=10.0)
    r = sel.send(BODY, requirements=need)
    assert r.ok and r.attempts == 1 and up.tiers == ["standard"]
    assert clock.now() == pytest.approx(15.0)
    assert r.decision is not None and not any(c.code == "ttft" for c in r.decision.reasons)
    assert [c.code for c in r.decision.reasons if c.verdict == "chosen"] == ["best_effort"]


def test_a_call_that_asked_for_speed_is_not_carried_on_on_slower_terms() -> None:
    # A call asking for 20 output tokens/s, which standard gave when it was planned. While it
    # waits, standard is seen writing 15 tokens/s: no plan meets the call's requirements now,
    # and the likeliest left (standard, in time) is too slow for it, so it is refused, as
    # without carry-on, and nothing is sent.
    clock, up, sel, need = _stalled(stall=12.0)
    need = need.model_copy(update={"deadline_s": 60.0, "min_output_tps": 20.0})
    call = Call(model="kimi-k3", input_tokens=10, max_output_tokens=200)
    assert sel.decide(call, need).tier == "standard"
    slow = Observation(Outcome.ok, latency_s=14.0, ttft_s=0.5, output_tps=15.0)
    clock.during_sleep = lambda: [sel.record("kimi-k3", "standard", slow) for _ in range(50)]
    with pytest.raises(tiersel.NoFeasibleTier, match="below min_output_tps 20"):
        sel.send(BODY, requirements=need)
    assert up.seen == [] and clock.now() == pytest.approx(15.0)


def test_carry_on_false_refuses_as_before() -> None:
    _, up, sel, need = _stalled(stall=12.0, carry_on=False)
    with pytest.raises(tiersel.NoFeasibleTier):
        sel.send(BODY, requirements=need)
    assert up.seen == []


def test_a_carried_on_call_keeps_its_policys_floor() -> None:
    # The policy refuses schedules below P(success) 0.5 for a call with no target: a call
    # carried on is held to it too (the likeliest schedule left has about 0.23).
    policy = CheapestFeasible(min_reliability=0.5)
    _, up, sel, _ = _stalled(stall=12.0, policy=policy)
    with pytest.raises(tiersel.NoFeasibleTier):
        sel.send(BODY, requirements=Requirements(tiers=["standard"], deadline_s=20))
    assert up.seen == []


def test_a_stall_during_a_backoff_is_seen_before_the_next_attempt() -> None:
    # The first attempt fails with a 500. Every wait after it overruns by 5 s: the wait for
    # the schedule's next attempt (so the call plans again, behind its schedule), then the
    # backoff before the same tier is tried again. Behind again, the call plans again from the
    # time then left, with no second backoff: with 9.3 s left the retry goes out at once; with
    # 0.3 s left (a deadline of 11 s) no plan has a hope and the call ends with its 500,
    # sending no doomed attempt; and with none left it ends at the deadline.
    for deadline, sent in ((20.0, 2), (11.0, 1), (10.0, 1)):
        clock = StalledClock(5.0)
        seen: list[tuple[float, float]] = []

        def script(
            request: httpx.Request, clock: FakeClock = clock, seen: list[Any] = seen
        ) -> httpx.Response:
            seen.append((clock.now(), request.extensions["timeout"]["read"]))
            if len(seen) == 1:
                return httpx.Response(500, json={"error": {"message": "boom"}})
            return ok()

        sel = Selector(clock=clock, transport=httpx.MockTransport(script), api_key="")
        need = Requirements(tiers=["standard"], deadline_s=deadline, reliability=0.9)
        r = sel.send(BODY, requirements=need)
        assert len(seen) == sent, (deadline, seen)
        assert r.ok is (sent == 2)
        for at, timeout in seen:  # each sent in time, given at most the time then left
            assert at < deadline and timeout <= deadline - at + 1e-9, (deadline, seen)


def _stalled(
    stall: float,
    max_ttft_s: float | None = None,
    carry_on: bool = True,
    policy: CheapestFeasible | None = None,
) -> tuple[StalledClock, Upstream, Selector, Requirements]:
    clock = StalledClock(stall)
    up = Upstream(lambda body: ok())
    sel = selector(up, clock, carry_on=carry_on, policy=policy)
    sel.record("kimi-k3", "standard", Observation(Outcome.rate_limited, retry_after_s=3.0), 0.0)
    need = Requirements(tiers=["standard"], deadline_s=20, reliability=0.6, max_ttft_s=max_ttft_s)
    call = Call(model="kimi-k3", input_tokens=10, max_output_tokens=200)
    assert sel.decide(call, need).wait_s == pytest.approx(3.0)
    return clock, up, sel, need


def test_the_selector_passes_the_engines_settings_on_and_names_a_misspelt_one() -> None:
    sel = Selector(max_attempts=3, backoff_s=0.5, budget_wait_s=0.0, api_key="")
    assert (sel.engine.max_attempts, sel.engine.backoff_s, sel.engine.budget_wait_s) == (3, 0.5, 0)
    with pytest.raises(
        TypeError, match=r"Selector\(\) .* 'max_atempts' \(did you mean 'max_attempts'\?\)"
    ):
        Selector(max_atempts=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"'transprot' \(did you mean 'transport'\?\)"):
        Selector(transprot=None)  # type: ignore[call-arg]


def test_parts_of_the_wrong_kind_are_named_when_the_selector_is_built() -> None:
    # A new user's probe: each of these was taken, then failed at the first call with an
    # AttributeError that named neither the parameter nor what it wants ('float' object has no
    # attribute 'state'); a URL as transport= charged the budget for a request never sent.
    cases: list[tuple[dict[str, Any], str]] = [
        ({"ledger": 5.0}, r"ledger=5\.0 is not a ledger \(state, reserve, settle, release\)"),
        ({"clock": __import__("time").monotonic}, r"clock=<built-in function monotonic> is not a"),
        ({"policy": "cheapest"}, r"policy='cheapest' is not a Policy: a callable"),
        ({"signals": {}}, r"signals=\{\} is not a signal store"),
        ({"pricing": "pricing/fireworks.yaml"}, r"pricing='pricing/fireworks.yaml' is not a Pric"),
        ({"requirements": {"deadline_s": 10}}, r"requirements=\{'deadline_s': 10\} is not a tier"),
        ({"max_attempts": "3"}, r"max_attempts must be an int, got '3'"),
        ({"backoff_s": None}, r"backoff_s must be a number, got None"),
        ({"bytes_per_token": 0}, r"bytes_per_token must be > 0, got 0"),
        ({"transport": "http://localhost:8787"}, r"transport='http://localhost:8787' is not a"
         r" transport: give an httpx Client, .* \(a URL goes in base_url=\)"),
        ({"async_transport": 42}, r"async_transport=42 is not a transport: give an httpx Async"),
    ]  # fmt: skip
    for given, message in cases:
        with pytest.raises(TypeError if "must be >" not in message else ValueError, match=message):
            Selector(api_key="", **given)
    # An httpx2 transport is one (a door sends through it), and so is a function.
    from tiersel.sim.transport_httpx2 import AsyncSimTransport2, SimTransport2

    Selector(api_key="", transport=SimTransport2(), async_transport=AsyncSimTransport2())
    sel = Selector(api_key="", transport=lambda r: ok())
    call = Call(model="kimi-k3", input_tokens=100, max_output_tokens=100)
    with pytest.raises(TypeError, match=r"decide: requirements=\{'deadline_s': 10\} is not a"):
        sel.decide(call, {"deadline_s": 10})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"decide: call=\{'model': 'kimi-k3'\} is not a tiersel"):
        sel.decide({"model": "kimi-k3"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"send: requirements=\{'deadline_s': 10\} is not a"):
        sel.send(BODY, requirements={"deadline_s": 10})  # type: ignore[arg-type]


def test_a_tier_the_model_is_not_sold_on_is_not_recorded() -> None:
    # A misspelt tier was recorded where no decision reads it: a test's scripted overload then
    # did nothing, without a word.
    sel = Selector(api_key="", clock=FakeClock())
    shed = Observation(Outcome.shed, retry_after_s=5)
    for tier in ("Standard", "turbo"):
        with pytest.raises(UnknownTier, match=f"record: kimi-k3 has no tier '{tier}'"):
            sel.record("kimi-k3", tier, shed)
    assert sel.record("kimi-k3", "standard", shed).shed == 1
    assert sel.decide(Call(model="kimi-k3", input_tokens=100, max_output_tokens=100)).tier != (
        "standard"
    )


def test_the_engine_settings_are_the_engines_keywords() -> None:
    # A door passes `EngineSettings` on to `Engine`: the two must name the same settings.
    import inspect

    from tiersel.engine import Engine, EngineSettings

    keywords = [
        p.name
        for p in inspect.signature(Engine).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    assert keywords == list(EngineSettings.__annotations__)


def test_a_misspelt_tier_is_refused_naming_it_not_dropped() -> None:
    up = Upstream(lambda body: ok())
    sel = selector(up, FakeClock())
    call = Call(model="kimi-k3", input_tokens=10, max_output_tokens=200)
    with pytest.raises(tiersel.errors.UnknownTier, match=r"'priorty' \(known: standard, "):
        sel.decide(call, Requirements(tiers=["priorty", "standard"]))
    with pytest.raises(tiersel.errors.UnknownTier, match="'fsat'"):
        sel.send(BODY, requirements=Requirements(tiers=["fsat", "standard"]))
    with tiersel.requirements(tiers=["bogus"]), pytest.raises(tiersel.errors.UnknownTier):
        sel.send(BODY)
    assert up.seen == []
    assert sel.decide(call, Requirements(tiers=["standard"])).tier == "standard"


def test_a_base_url_that_would_send_the_key_in_clear_text_is_refused() -> None:
    # Refused when the selector's own client would send the call (nothing leaves: the check
    # comes first), not when an in-process transport (a mock, the simulator) takes it.
    remote = Selector(base_url="http://192.0.2.2:8000/inference/v1", api_key="sk-test")
    for _ in range(2):
        with pytest.raises(ValueError, match="the API key would go in clear text"):
            remote.send(BODY)
    mocked = Selector(
        base_url="http://mock.test/v1",
        api_key="sk-test",
        transport=httpx.MockTransport(Upstream(lambda body: ok())),
    )
    assert mocked.send(BODY).ok
    with pytest.raises(ValueError, match="must be an http:// or https:// URL"):
        Selector(base_url="ftp://x", api_key="")
    # Without a key, or to this machine, plain http is fine (a local proxy, the simulator).
    assert Selector(base_url="http://192.0.2.2:8000/v1", api_key="").outgoing.base_url
    for local in ("http://127.0.0.1:8000/v1/", "http://localhost/v1", "http://[::1]:80/v1"):
        assert Selector(base_url=local, api_key="sk-test").outgoing.base_url == local.rstrip("/")


def test_a_selector_never_reaches_the_network_past_the_transport_it_was_given() -> None:
    # asend on a Selector given only a sync transport= went to api.fireworks.ai through a client
    # of its own (with FIREWORKS_API_KEY set, a test meant for a mock sends paid calls); send with
    # only async_transport= did the same (a new user's probe).
    from tiersel.sim import AsyncSimTransport, SimTransport

    body = {"model": "kimi-k3", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}
    sync, other = SimTransport(scenario="calm"), AsyncSimTransport(scenario="calm")
    with pytest.raises(TypeError, match="given transport= only: asend would go to the network"):
        asyncio.run(Selector(transport=sync, clock=sync.clock, api_key="").asend(body))
    with pytest.raises(TypeError, match="given async_transport= only: send would go to the"):
        Selector(async_transport=other, clock=other.clock, api_key="").send(body)
    assert sync.stats()["requests"] == other.stats()["requests"] == 0
    # A transport of the other kind is named when the selector is built, not at its first call.
    with pytest.raises(TypeError, match=r"transport=AsyncSimTransport\(...\) is async: pass it"):
        Selector(transport=other, api_key="")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"async_transport=SimTransport\(...\) is sync: pass it"):
        Selector(async_transport=sync, api_key="")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"transport=AsyncClient\(...\) is async"):
        Selector(transport=httpx.AsyncClient(transport=other), api_key="")  # type: ignore[arg-type]
    # Both given: each call goes through its own.
    both = Selector(transport=sync, async_transport=other, clock=sync.clock, api_key="")
    assert both.send(body).ok and asyncio.run(both.asend(body)).ok


def test_decide_with_an_async_ledger_takes_its_awaited_state() -> None:
    # decide said "use asend", which has no decide; it now takes budget=, the state awaited.
    from tiersel.stores.memory import AsyncMemoryLedger

    ledger = AsyncMemoryLedger(MemoryLedger(0.0001))
    sel = Selector(ledger=ledger, async_transport=lambda r: None, api_key="")  # type: ignore[arg-type, return-value]
    call = Call(model="kimi-k3", input_tokens=1000, max_output_tokens=1000)
    with pytest.raises(TypeError, match=r"is async; use asend or an AsyncTierTransport.*budget="):
        sel.decide(call)
    state = asyncio.run(ledger.state(0.0))
    with pytest.raises(tiersel.NoFeasibleTier, match="exceeds the remaining budget"):
        sel.decide(call, budget=state)  # the money it has, as the ledger says


def test_a_budget_store_lost_after_the_send_does_not_cost_the_caller_its_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The provider answered (and billed): a store that is away when the call settles is logged,
    # saying what becomes of the money, and the answer is handed back. It raised before, and a
    # paid answer was thrown away.
    class Lost(MemoryLedger):
        def settle(self, call_id: str, actual_usd: float, now: float) -> Any:
            raise StoreUnavailable(
                "budget", "redis://x", ConnectionError("gone"), "its reservation lapses"
            )

    sel = Selector(
        clock=FakeClock(), transport=httpx.MockTransport(Upstream(lambda b: ok())), api_key=""
    )
    sel.engine.ledger = Lost(1.0)
    with caplog.at_level(logging.WARNING, logger="tiersel.engine"):
        r = sel.send(BODY)
    assert r.ok and r.cost_usd > 0 and r.response.status_code == 200
    assert "is unreachable" in caplog.text and "its reservation lapses" in caplog.text


@pytest.mark.parametrize("limit", [True, False])
def test_a_boolean_is_no_budget(limit: bool) -> None:
    with pytest.raises(ValueError, match="limit_usd must be a finite number"):
        MemoryLedger(limit)


@pytest.mark.parametrize("ttl", ["30", True, 0, float("inf"), __import__("decimal").Decimal(30)])
def test_an_expiry_that_is_no_positive_real_number_is_refused(ttl: object) -> None:
    # A Decimal was taken, then failed in the ledger's first reserve (float + Decimal), after
    # the door had read the request.
    with pytest.raises(ValueError, match="reservation_ttl_s must be a number > 0 or None"):
        MemoryLedger(1.0, reservation_ttl_s=ttl)  # type: ignore[arg-type]
