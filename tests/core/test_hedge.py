"""Hedged attempts (`tiersel.hedge`, `tiersel.engine.race`): the model, the policy's choice,
the race.

The race tests use a scripted upstream whose standard tier answers slowly (a real sleep, short),
so the second request really races the first, in threads (sync) and tasks (async).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tiersel
import tiersel.engine
from tiersel import Call, Decision, Requirements, Selector
from tiersel.budget import MemoryLedger
from tiersel.clock import FakeClock
from tiersel.cost import tier_cost
from tiersel.decision import ReasonCode, Step
from tiersel.hedge import HEDGE_SAVING, price_hedge
from tiersel.policy import CheapestFeasible
from tiersel.pricing import load_pricing
from tiersel.schedule import Candidate, price
from tiersel.signals import CircuitState, Observation, Outcome, SignalKey, TierHealth

PRICES = load_pricing().model("kimi-k3")
BODY = {
    "model": "accounts/fireworks/models/kimi-k3",
    "messages": [{"role": "user", "content": "hello there"}],
    "max_tokens": 100,
}
PROMPT, OUTPUT = 120, 80
SLOW_S = 0.8  # how long the slow tier takes to answer, real seconds
HEDGE_S = 0.05


# -- the model ---------------------------------------------------------------------------------


def _cand(tier: str, cost: float, latency: float, refused: float, scale: float) -> Candidate:
    health = TierHealth(refused, 0.0, 0.3, 60.0, 0.2, CircuitState.closed, 0.0, 0)
    return Candidate(
        tier,
        PRICES.tiers[tier],
        health,
        cost * 2,
        cost,
        latency,
        refused,
        refused,
        0.0,
        0.2,
        0.0,
        scale,
        0.3,
        0.0,
        45.0,
        cost * 0.4,
    )


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0.0, 0.9),
    st.floats(0.0, 0.9),
    st.floats(0.0, 0.5),
    st.floats(0.5, 10.0),
    st.floats(0.1, 5.0),
    st.floats(0.05, 3.0),
)
def test_a_hedge_is_a_probability_at_least_its_first_attempt_and_more_sheds_never_help(
    shed: float, more: float, shed_b: float, deadline: float, lat_b: float, h: float
) -> None:
    a = _cand("standard", 1e-3, 1.5, shed, 1.2)
    b = _cand("fast", 1.5e-3, lat_b, shed_b, 2.0)
    s = price_hedge(a, b, h, deadline)
    if s is None:
        assert h >= deadline or 1.0 - shed_b <= 0.0
        return
    alone = price([a], deadline=deadline, backoff_s=0.2)
    assert alone is not None
    assert alone.p_success - 1e-12 <= s.p_success <= 1.0
    assert s.worst_cost == pytest.approx(a.worst + b.worst)
    assert sum(s.ok) == pytest.approx(s.p_success)
    # A tier shed more often never makes the hedge it leads likelier.
    worse = price_hedge(_cand("standard", 1e-3, 1.5, min(0.95, shed + more), 1.2), b, h, deadline)
    assert worse is None or worse.p_success <= s.p_success + 1e-12


def test_the_policy_hedges_only_where_it_is_cheaper_than_every_ladder() -> None:
    sel = Selector(api_key="")
    seen = 0
    for out in (5, 10, 30, 60, 200):
        for deadline in (1.0, 1.5, 2.0, 3.0, 3.5, 6.0, 10.0, 20.0):
            for target in (0.9, 0.99, 0.999):
                call = Call(model="kimi-k3", input_tokens=200, max_output_tokens=out)
                req = Requirements(deadline_s=deadline, reliability=target)
                try:
                    ladder: Decision | None = sel.decide(call, req)
                except tiersel.NoFeasibleTier:
                    ladder = None
                try:
                    d = sel.decide(call, req.model_copy(update={"hedge": True}))
                except tiersel.NoFeasibleTier:
                    assert ladder is None
                    continue
                assert d.p_success >= target
                if d.plan[-1].hedge_s is None:
                    assert ladder is not None and d.label == ladder.label
                    continue
                seen += 1
                assert len(d.plan) == 2 and d.label == f"{d.plan[0].tier}~{d.plan[1].tier}"
                assert d.worst_case_cost_usd == pytest.approx(
                    d.plan[0].worst_cost_usd + d.plan[1].worst_cost_usd
                )
                if ladder is not None:
                    saving = 1 - d.estimated_cost_usd / ladder.estimated_cost_usd
                    assert saving >= HEDGE_SAVING
                assert any(r.code == ReasonCode.hedged for r in d.reasons)
    assert seen >= 3  # the grid holds calls where a hedge pays


def test_no_hedge_without_a_deadline_or_when_not_allowed() -> None:
    sel = Selector(api_key="")
    call = Call(model="kimi-k3", input_tokens=200, max_output_tokens=30)
    tight = Requirements(deadline_s=3, reliability=0.999)
    assert sel.decide(call, tight.model_copy(update={"hedge": True})).label == "standard~fast"
    assert "~" not in sel.decide(call, tight).label
    assert "~" not in sel.decide(call, Requirements(hedge=True)).label
    # Both worst cases must fit the cost cap: where they do not, no hedge.
    one = tier_cost(PRICES.tiers["fast"], 200, 0, 30)
    capped = tight.model_copy(update={"hedge": True, "max_cost_usd": one * 1.2})
    assert "~" not in sel.decide(call, capped).label


def test_explain_shows_the_hedge(capsys: pytest.CaptureFixture[str]) -> None:
    from tiersel.cli import main

    args = "explain --model kimi-k3 --input-tokens 200 --max-tokens 30 --deadline 3"
    code = main([*args.split(), "--reliability", "0.999", "--hedge"])
    out = capsys.readouterr().out
    assert code == 0
    assert "plan:               standard~fast" in out
    assert "a hedge: attempt 2 is sent" in out and "the loser is cancelled" in out


# -- the race ----------------------------------------------------------------------------------


def _step(tier: str, hedge_s: float | None = None) -> Step:
    tp = PRICES.tiers[tier]
    name, model, service_tier, body, headers, base_url = tp.step_fields
    worst = tier_cost(tp, PROMPT, 0, BODY["max_tokens"])  # type: ignore[arg-type]
    expected = tier_cost(tp, PROMPT, 0, OUTPUT)
    start = hedge_s or 0.0
    return Step(
        name, model, service_tier, worst, expected, body, headers, base_url, start, 30 - start,
        hedge_s=hedge_s,
    )  # fmt: skip


class Hedging:
    """A policy that always hedges ``first`` by ``second`` after ``after_s``."""

    def __init__(self, first: str = "standard", second: str = "fast", after_s: float = HEDGE_S):
        self.plan = (_step(first), _step(second, after_s))

    def __call__(self, *args: Any) -> Decision:
        worst = sum(s.worst_cost_usd for s in self.plan)
        return Decision(self.plan, self.plan[0].expected_cost_usd, worst, 0.999, 1.0, ())


def _ok() -> httpx.Response:
    usage = {"prompt_tokens": PROMPT, "completion_tokens": OUTPUT}
    return httpx.Response(200, json={"id": "c", "choices": [], "usage": usage})


def _tier(body: dict[str, Any]) -> str:
    return "fast" if "/routers/" in body["model"] else body.get("service_tier") or "standard"


class Upstream:
    """Standard answers after ``SLOW_S`` (or sheds); the others answer at once. Records what was
    sent, and which requests were cancelled in flight (async)."""

    def __init__(self, standard: str = "slow", fast: str = "ok") -> None:
        self.behaviour = {"standard": standard, "fast": fast, "priority": "ok"}
        self.sent: list[str] = []
        self.cancelled: list[str] = []
        self.finished: list[str] = []
        self.timeouts: dict[str, float] = {}
        self.lock = threading.Lock()

    def _answer(self, tier: str) -> httpx.Response:
        what = self.behaviour[tier]
        if what == "shed":
            return httpx.Response(503, json={"error": {"message": "overloaded"}})
        if what == "error":
            return httpx.Response(500, json={"error": {"message": "boom"}})
        if what == "bad":
            return httpx.Response(400, json={"error": {"message": "bad request"}})
        if what == "raise":
            raise RuntimeError("a bug in the transport")
        return _ok()

    def _seen(self, request: httpx.Request) -> str:
        tier = _tier(json.loads(request.content))
        with self.lock:
            self.sent.append(tier)
            self.timeouts[tier] = request.extensions["timeout"]["read"]
        return tier

    def sync(self, request: httpx.Request) -> httpx.Response:
        tier = self._seen(request)
        if self.behaviour[tier] in ("slow", "raise"):
            time.sleep(SLOW_S)
        with self.lock:
            self.finished.append(tier)
        return self._answer(tier)

    async def asynchronous(self, request: httpx.Request) -> httpx.Response:
        tier = self._seen(request)
        try:
            if self.behaviour[tier] in ("slow", "raise"):
                await asyncio.sleep(SLOW_S)
        except asyncio.CancelledError:
            self.cancelled.append(tier)
            raise
        self.finished.append(tier)
        return self._answer(tier)


def _selector(up: Upstream, ledger: MemoryLedger, on_attempt: Any = None, **kw: Any) -> Selector:
    return Selector(
        api_key="",
        policy=Hedging(**kw),
        ledger=ledger,
        on_attempt=on_attempt,
        transport=httpx.MockTransport(up.sync),
        async_transport=httpx.MockTransport(up.asynchronous),
    )


async def _send(sel: Selector, req: Requirements, asynchronous: bool) -> tiersel.CallResult:
    if asynchronous:
        return await sel.asend(BODY, requirements=req)
    return sel.send(BODY, requirements=req)


def _cost(tier: str, out: int) -> float:
    return tier_cost(PRICES.tiers[tier], PROMPT, 0, out)


class Reservations(MemoryLedger):
    """A memory ledger that remembers each amount reserved."""

    def __init__(self, limit: float) -> None:
        super().__init__(limit)
        self.held: list[float] = []

        self.charged: list[str] = []

    def reserve(self, call_id: str, amount_usd: float, now: float) -> Any:
        self.held.append(amount_usd)
        return super().reserve(call_id, amount_usd, now)

    def settle(self, call_id: str, actual_usd: float, now: float) -> Any:
        self.charged.append(call_id)
        return super().settle(call_id, actual_usd, now)


def test_a_slow_first_attempt_is_raced_and_the_loser_is_charged_as_not_cancelled_sync() -> None:
    up, ledger = Upstream(), Reservations(1.0)
    sel = _selector(up, ledger)
    started = time.monotonic()
    r = sel.send(BODY, requirements=Requirements(deadline_s=30))
    took = time.monotonic() - started
    assert r.ok and r.tier == "fast" and r.tried == ("standard", "fast") and r.attempts == 2
    assert took < SLOW_S  # fast answered; the call did not wait for standard
    both = _step("standard").worst_cost_usd + _step("fast").worst_cost_usd
    assert ledger.held == [pytest.approx(both)]
    # A sync shell cannot cancel the standard request in flight: it is charged its worst case.
    expected = _cost("fast", OUTPUT) + _step("standard").worst_cost_usd
    assert r.cost_usd == pytest.approx(expected)
    state = ledger.state(0.0)
    assert state.spent_usd == pytest.approx(expected) and state.reserved_usd == 0.0
    # Its thread runs to the end and closes the response unread (given time on a busy machine).
    deadline = time.monotonic() + 20 * SLOW_S
    while "standard" not in up.finished and time.monotonic() < deadline:
        time.sleep(SLOW_S / 10)
    assert "standard" in up.finished


async def test_a_slow_first_attempt_is_raced_and_the_loser_cancelled_async() -> None:
    up, ledger = Upstream(), Reservations(1.0)
    sel = _selector(up, ledger)
    r = await sel.asend(BODY, requirements=Requirements(deadline_s=30))
    assert r.ok and r.tier == "fast" and r.tried == ("standard", "fast")
    assert up.cancelled == ["standard"] and "standard" not in up.finished
    # Cancelled after about HEDGE_S: billed its prompt and the output generated until then (none
    # yet: its expected time to first token is longer).
    prompt_only = _cost("standard", 0)
    assert r.cost_usd == pytest.approx(_cost("fast", OUTPUT) + prompt_only)
    assert ledger.state(0.0).spent_usd == pytest.approx(r.cost_usd)
    assert ledger.state(0.0).reserved_usd == 0.0


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_quick_first_attempt_is_not_hedged(asynchronous: bool) -> None:
    up, ledger = Upstream(standard="ok"), Reservations(1.0)
    sel = _selector(up, ledger, after_s=5.0)
    req = Requirements(deadline_s=30)
    r = await _send(sel, req, asynchronous)
    assert r.ok and r.tried == ("standard",) and up.sent == ["standard"] and r.attempts == 1
    assert r.cost_usd == pytest.approx(_cost("standard", OUTPUT))
    assert ledger.state(0.0).spent_usd == pytest.approx(r.cost_usd)


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_shed_sends_the_second_at_once_and_is_not_billed(asynchronous: bool) -> None:
    up, ledger = Upstream(standard="shed"), Reservations(1.0)
    sel = _selector(up, ledger, after_s=5.0)
    started = time.monotonic()
    req = Requirements(deadline_s=30)
    r = await _send(sel, req, asynchronous)
    assert time.monotonic() - started < 2.0  # not after the 5 s hedge delay
    assert r.ok and r.tier == "fast" and r.tried == ("standard", "fast")
    assert r.cost_usd == pytest.approx(_cost("fast", OUTPUT))
    assert ledger.state(0.0).spent_usd == pytest.approx(r.cost_usd)
    key = SignalKey("fireworks", "kimi-k3", "standard")
    assert sel.signals.stats(key, sel.clock.now()).shed == 1


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_when_both_fail_nothing_is_charged_or_left_reserved(asynchronous: bool) -> None:
    up, ledger = Upstream(standard="shed", fast="error"), Reservations(1.0)
    sel = _selector(up, ledger, after_s=5.0)
    req = Requirements(deadline_s=30, max_attempts=2)
    r = await _send(sel, req, asynchronous)
    assert not r.ok and r.attempts == 2 and r.cost_usd == 0.0
    state = ledger.state(0.0)
    assert state.spent_usd == 0.0 and state.reserved_usd == 0.0


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_after_a_fast_failure_the_second_gets_the_time_left_not_the_hedges(
    asynchronous: bool,
) -> None:
    up, ledger = Upstream(standard="shed"), Reservations(1.0)
    sel = _selector(up, ledger, after_s=5.0)
    r = await _send(sel, Requirements(deadline_s=30), asynchronous)
    assert r.ok and r.tried == ("standard", "fast")
    assert up.timeouts["fast"] > 25.0  # about 30 s, not 30 - 5


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_an_error_not_worth_retrying_ends_the_race_without_a_second_request(
    asynchronous: bool,
) -> None:
    up, ledger = Upstream(standard="bad"), Reservations(1.0)
    sel = _selector(up, ledger, after_s=5.0)
    r = await _send(sel, Requirements(deadline_s=30), asynchronous)
    assert not r.ok and up.sent == ["standard"] and r.attempts == 1
    assert ledger.state(0.0).spent_usd == 0.0 and ledger.state(0.0).reserved_usd == 0.0


async def _raced(asynchronous: bool, **behaviour: str) -> tuple[Upstream, Any, Any]:
    """A hedged call (deadline 30 s) against ``behaviour``: the upstream, the ledger's state
    after it, and its result."""
    up, ledger = Upstream(**behaviour), Reservations(1.0)
    r = await _send(_selector(up, ledger), Requirements(deadline_s=30), asynchronous)
    return up, ledger.state(0.0), r


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_race_lost_to_a_final_error_still_reports_what_the_loser_was_billed(
    asynchronous: bool,
) -> None:
    # Fast refuses the request (400) while standard is still in flight: the race ends, standard
    # is billed (its prompt when cancelled, its worst case when it cannot be), and the call's
    # cost says so, as the ledger does.
    up, ledger = Upstream(fast="bad"), Reservations(1.0)
    seen: list[Any] = []
    sel = _selector(up, ledger, on_attempt=seen.append)
    r = await _send(sel, Requirements(deadline_s=30), asynchronous)
    state = ledger.state(0.0)
    assert not r.ok and r.tried == ("standard", "fast")
    # The loser's bill is settled under an id of its own (a call's id is settled once, by
    # its last attempt), and the attempt's record for the hook counts it, as the result does.
    assert ledger.charged == [f"{r.call_id}#hedge2"]
    assert sum(a.cost_usd for a in seen) == pytest.approx(r.cost_usd)
    if asynchronous:  # its prompt as estimated (the error reported no usage), no output yet
        assert up.cancelled == ["standard"]
        assert 0.0 < state.spent_usd < _step("standard").worst_cost_usd
    else:
        assert state.spent_usd == pytest.approx(_step("standard").worst_cost_usd)
    assert state.reserved_usd == 0.0 and r.cost_usd == pytest.approx(state.spent_usd)


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_racer_whose_send_raises_is_a_failed_attempt_and_the_other_still_counts(
    asynchronous: bool,
) -> None:
    # Standard's send raises after the hedge went out: fast wins, and is charged.
    _, state, r = await _raced(asynchronous, standard="raise")
    assert r.ok and r.tier == "fast"
    assert state.reserved_usd == 0.0 and state.spent_usd == pytest.approx(r.cost_usd)
    assert r.cost_usd >= _cost("fast", OUTPUT)


def test_a_sync_race_leaves_no_thread_behind() -> None:
    up, ledger = Upstream(standard="ok"), Reservations(1.0)
    sel = _selector(up, ledger, after_s=30.0)
    before = threading.active_count()
    for _ in range(5):
        assert sel.send(BODY, requirements=Requirements(deadline_s=60)).ok
    for _ in range(100):  # the timers notice the race is over within a quarter second
        if threading.active_count() <= before:
            break
        time.sleep(0.02)
    assert threading.active_count() <= before


def test_a_streamed_call_is_never_hedged() -> None:
    # Its first token says nothing of when it ends: the policy is asked with hedge off.
    seen: list[bool] = []
    policy = CheapestFeasible()

    def watching(call: Call, req: Requirements, *rest: Any) -> Decision:
        seen.append(req.hedge)
        return policy(call, req, *rest)

    sel = Selector(api_key="", policy=watching, clock=FakeClock())
    tight = Requirements(deadline_s=3, reliability=0.999, hedge=True)
    for stream in (False, True):
        body = {**BODY, "max_tokens": 30, "stream": stream}
        flow = sel.engine.start(body, requirements=tight).flow
        effect = flow.send(None)
        while not isinstance(effect, tiersel.engine.Send | tiersel.engine.Race):
            effect = flow.send(sel.engine.perform(effect))
        flow.close()
    assert seen == [True, False]


def test_no_hedge_with_one_attempt_or_onto_a_tier_cooling_down() -> None:
    sel = Selector(api_key="", clock=FakeClock())
    call = Call(model="kimi-k3", input_tokens=200, max_output_tokens=30)
    tight = Requirements(deadline_s=3, reliability=0.999, hedge=True)
    assert sel.decide(call, tight).label == "standard~fast"
    one = tight.model_copy(update={"max_attempts": 1, "best_effort": True})
    assert "~" not in sel.decide(call, one).label
    # Fast asked for a pause: no hedge leans on it, and a hedge's delay is its second start.
    key = SignalKey("fireworks", "kimi-k3", "fast")
    limited = Observation(Outcome.rate_limited, retry_after_s=40.0)
    sel.signals.record(key, limited, 0.0)
    d = sel.decide(call, tight.model_copy(update={"deadline_s": 60}))
    assert not (d.plan[-1].hedge_s is not None and d.plan[-1].tier == "fast")
    if d.plan[-1].hedge_s is not None:
        assert d.plan[-1].hedge_s == pytest.approx(d.plan[1].start_s - d.plan[0].start_s)
