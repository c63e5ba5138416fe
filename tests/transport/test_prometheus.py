"""Prometheus metrics (`tiersel.prometheus`) after real calls: the openai SDK through
`TierTransport` against the simulator under peak, read back with prometheus_client's own
exposition and parser."""

from __future__ import annotations

from collections import Counter

import httpx
import openai
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import tiersel
from tests.transport.conftest import CANARY_KEY, MODEL, Recorder
from tiersel.budget import MemoryLedger
from tiersel.clock import FakeClock, ScaledClock
from tiersel.prometheus import TierselMetrics
from tiersel.signals import Observation, Outcome, SignalKey
from tiersel.sim.server import RunningServer
from tiersel.wrap import TierTransport, requirements


def _samples(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = generate_latest(registry).decode()
    assert CANARY_KEY not in text
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


@pytest.mark.slow
def test_after_calls_the_metrics_count_them(server: RunningServer, clock: ScaledClock) -> None:
    server.reset(time_s=100.0)  # the peak: standard is shed much of the time
    registry = CollectorRegistry()
    ledger = MemoryLedger(5.0)
    selector = tiersel.Selector(clock=clock, api_key=CANARY_KEY, ledger=ledger)
    metrics = TierselMetrics(selector, registry=registry)
    recorder = Recorder()
    with httpx.Client(transport=TierTransport(selector, on_call=recorder)) as http:
        client = openai.OpenAI(
            api_key=CANARY_KEY, base_url=server.openai_base_url, http_client=http, max_retries=0
        )
        for i in range(16):
            tight = i < 8
            if i == 8:
                server.reset(time_s=0.0)  # calm, for calls with no reliability target
            with requirements(deadline_s=10 if tight else 20, reliability=0.99 if tight else None):
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi " * 50}], max_tokens=40
                )
            if i == 3:  # the sheds of the first calls are still in the signals' window
                early = {s["tier"]: v for s, v in _samples(registry)["tiersel_shed_rate"]}
                key = SignalKey("fireworks", "kimi-k3", "standard")
                stats = selector.signals.stats(key, clock.now())
                assert early["standard"] == pytest.approx(
                    (stats.shed + stats.rate_limited) / stats.n, abs=0.02
                )
                assert early["standard"] > 0
    records = recorder.records
    assert len(records) == 16
    got = _samples(registry)

    calls = {(s["model"], s["tier"], s["outcome"]): v for s, v in got["tiersel_calls_total"]}
    assert sum(calls.values()) == 16
    served = Counter(("kimi-k3", str(r.tier), "ok") for r in records if r.ok)
    assert {k: v for k, v in calls.items() if k[2] == "ok"} == {
        k: float(n) for k, n in served.items()
    }
    assert len({tier for _, tier, _ in served}) > 1  # the tight calls climbed at the peak

    spend = sum(v for _, v in got["tiersel_spend_usd_total"])
    assert spend == pytest.approx(sum(r.cost_usd for r in records))
    assert spend == pytest.approx(ledger.state(clock.now()).spent_usd)
    ((_, remaining),) = got["tiersel_budget_remaining_usd"]
    assert remaining == pytest.approx(ledger.state(clock.now()).remaining_usd)

    ((_, decided),) = got["tiersel_decide_seconds_count"]
    assert decided >= len(records)  # (a call plans again after a wait, or a failure)
    assert any(r.attempts > 1 for r in records[:4])  # (the sheds seen above)

    metrics.close()
    assert "tiersel_calls_total" not in generate_latest(registry).decode()
    assert selector.engine.on_result is None


def _upstream_sheds(request: httpx.Request) -> httpx.Response:
    return httpx.Response(503, json={"error": {"message": "overloaded"}})


def test_a_call_that_sent_nothing_counts_and_scraping_still_works() -> None:
    # Standard alone, cooling down past the deadline: the call ends with no attempt.
    registry = CollectorRegistry()
    sel = tiersel.Selector(transport=httpx.MockTransport(_upstream_sheds), api_key="k")
    TierselMetrics(sel, registry=registry)
    sel.record("kimi-k3", "standard", Observation(Outcome.shed, retry_after_s=60))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    result = sel.send(body, requirements=tiersel.Requirements(deadline_s=5, tiers=("standard",)))
    assert not result.ok and result.attempts == 0
    got = _samples(registry)
    assert [(s["outcome"], v) for s, v in got["tiersel_calls_total"]] == [("not_sent", 1.0)]


def test_metrics_close_in_any_order_and_a_refused_registration_hooks_nothing() -> None:
    sel = tiersel.Selector(api_key="k")
    policy = sel.policy
    first, second = CollectorRegistry(), CollectorRegistry()
    a = TierselMetrics(sel, registry=first)
    b = TierselMetrics(sel, registry=second)
    a.close()
    call = tiersel.Call(model="kimi-k3", input_tokens=100, max_output_tokens=10)
    sel.decide(call)  # b still times decisions
    decided = _samples(second)["tiersel_decide_seconds_count"]
    assert decided == [({}, 1.0)]
    b.close()
    sel.decide(call)
    assert _samples(second) == {} and _samples(first) == {}
    # Both closed: what is left passes calls straight to the policy.
    assert sel.decide(call).tier == policy(call, tiersel.Requirements(), None,
        sel.pricing.model("kimi-k3"), sel.health("kimi-k3"), 0.0).tier  # fmt: skip
    # A registry that refuses the collector leaves the selector unhooked.
    other = tiersel.Selector(api_key="k")
    with pytest.raises(ValueError, match="Duplicated"):
        TierselMetrics(other, registry=_taken())
    assert (
        other.engine.on_result is None
        and other.engine.policy.__class__.__name__ == "CheapestFeasible"
    )


def _taken() -> CollectorRegistry:
    registry = CollectorRegistry()
    TierselMetrics(tiersel.Selector(api_key="k"), registry=registry)
    return registry


def test_a_call_the_budget_stopped_after_a_shed_counts_as_budget() -> None:
    # Its last reply was a shed, but the budget is why it ended (it counted as "shed", where its
    # OpenTelemetry span said "budget exhausted before a retry").
    class FirstOnly(MemoryLedger):
        granted = 0

        def reserve(self, *args: object, **kw: object) -> object:
            self.granted += 1
            return super().reserve(*args, **kw) if self.granted == 1 else None  # type: ignore[arg-type]

    registry = CollectorRegistry()
    sel = tiersel.Selector(
        transport=httpx.MockTransport(_upstream_sheds),
        api_key="k",
        ledger=FirstOnly(1.0),
        clock=FakeClock(),  # the schedule's wait before its retry passes at once
    )
    TierselMetrics(sel, registry=registry)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    result = sel.send(body, requirements=tiersel.Requirements(deadline_s=30))
    assert not result.ok and result.budget_stopped and result.attempts == 1
    got = _samples(registry)
    assert [(s["outcome"], v) for s, v in got["tiersel_calls_total"]] == [("budget", 1.0)]
