"""Watched attempts (`tiersel.watch`): their pricing, the policy's choice of them, and the flow
that cuts one for its pace and goes on to the next step."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import tiersel
from tiersel.budget import MemoryLedger
from tiersel.clock import FakeClock
from tiersel.dialects import Dialect
from tiersel.engine import Engine
from tiersel.engine.effects import Send
from tiersel.engine.results import Reply
from tiersel.policy import CheapestFeasible
from tiersel.pricing import load_pricing
from tiersel.schedule import Candidate
from tiersel.signals import CircuitState, TierHealth
from tiersel.tiers import DEFAULT_PREFILL_S
from tiersel.watch import checkpoint_s, cut_bill, price_watched, projected_finish

KIMI = load_pricing().model("kimi-k3")
STRICT = tiersel.Requirements(deadline_s=20, reliability=0.999)
LONG = tiersel.Call(model="kimi-k3", input_tokens=2000, max_output_tokens=500)
BODY = {
    "model": "kimi-k3",
    "messages": [{"role": "user", "content": "x" * 6000}],
    "max_tokens": 500,
}


def _selector(watch: bool, **kw: Any) -> tiersel.Selector:
    return tiersel.Selector(
        api_key="", policy=CheapestFeasible(watch=watch), clock=FakeClock(), **kw
    )


def test_a_call_only_fast_could_serve_in_time_is_bought_a_watched_standard_attempt() -> None:
    # 500 tokens in 20 s at 0.999: standard's pace is too uncertain for a ladder on it, so
    # without a watch the call goes to fast; watched, standard serves it when its pace holds,
    # and the call is cut for fast when it does not.
    ladder = _selector(False).decide(LONG, STRICT)
    assert _selector(True).decide(LONG, STRICT.model_copy(update={"watch": False})) == ladder
    watched = _selector(True).decide(LONG, STRICT)
    assert ladder.label == "fast*4"
    assert watched.label == "standard^>fast"
    assert watched.p_success >= 0.999
    assert watched.estimated_cost_usd < ladder.estimated_cost_usd * 0.8
    first, then = watched.plan[0], watched.plan[1]
    assert first.watch_s is not None and first.watch_s > 0 and then.watch_s is None
    assert then.start_s == pytest.approx(first.start_s + first.watch_s)
    # A cut attempt is billed: the worst case counts both attempts.
    assert watched.worst_case_cost_usd == pytest.approx(first.worst_cost_usd + then.worst_cost_usd)
    chosen = [r for r in watched.reasons if r.code == "watched"]
    assert chosen and "checked" in str(chosen[0]) and "fast" in str(chosen[0])
    assert watched.to_dict()["plan"][0]["watch_s"] == first.watch_s


def test_no_watch_where_a_ladder_does_as_well_or_a_cost_cap_is_set() -> None:
    short = tiersel.Call(model="kimi-k3", input_tokens=2000, max_output_tokens=100)
    assert _selector(True).decide(short, STRICT).plan[0].watch_s is None
    capped = STRICT.model_copy(update={"max_cost_usd": 1.0})
    assert _selector(True).decide(LONG, capped).label == "fast*4"
    # The default policy watches where the call allows it (a door's flow turns that off for a
    # call its shell cannot watch).
    assert (
        tiersel.Selector(api_key="", clock=FakeClock()).decide(LONG, STRICT).label
        == "standard^>fast"
    )


def test_the_finish_is_projected_from_the_pace_between_the_first_and_last_token() -> None:
    # 11 tokens from 1.0 s to 2.0 s: 0.1 s a token; 89 more end at 10.9 s.
    assert projected_finish(2.05, 1.0, 2.0, 11, 100, 50.0) == pytest.approx(10.9)
    # Fewer than two tokens: the tier's expected pace from now.
    assert projected_finish(2.0, None, None, 0, 100, 50.0) == pytest.approx(4.0)
    assert projected_finish(2.0, 1.5, 1.5, 1, 100, 50.0) == pytest.approx(2.0 + 99 / 50)


def _health(tps: float) -> TierHealth:
    return TierHealth(0.02, 0.01, 0.5, tps, 0.2, CircuitState.closed, 0.0, 0)


@st.composite
def _pair(draw: st.DrawFn) -> tuple[Candidate, Candidate]:
    out: list[Candidate] = []
    for tier, tps in (("standard", 25.0), ("fast", 120.0)):
        refusal = draw(st.floats(0.0, 0.9))
        error = draw(st.floats(0.0, min(0.2, 1.0 - refusal)))
        ttft = draw(st.floats(0.1, 3.0))
        latency = ttft + draw(st.floats(0.5, 40.0))
        cost = draw(st.floats(1e-4, 1e-2))
        prompt = cost * draw(st.floats(0.0, 0.9))
        cand = Candidate(
            tier, KIMI.tiers[tier], _health(tps), cost * 2, cost, latency, refusal,
            draw(st.floats(0.0, 1.0 - error)), error, 0.2, 0.0, draw(st.floats(0.5, 5.0)),
            ttft, draw(st.floats(0.0, 1.0)), 30.0, prompt,
        )  # fmt: skip
        out.append(cand)
    return out[0], out[1]


@given(_pair(), st.floats(1.0, 120.0), st.integers(1, 3), st.floats(0.0, 0.9))
def test_a_watched_schedule_is_a_probability_and_sheds_never_make_it_likelier(
    pair: tuple[Candidate, Candidate], deadline: float, n: int, more: float
) -> None:
    a, b = pair
    s = price_watched(a, [b] * n, deadline=deadline, backoff_s=0.2)
    assume(s is not None)
    assert s is not None
    assert 0.0 <= s.p_success <= 1.0 + 1e-12
    assert s.p_success >= s.ok[0] - 1e-12 and s.watch_s == checkpoint_s(a)
    # One more attempt never lowers it.
    longer = price_watched(a, [b] * (n + 1), deadline=deadline, backoff_s=0.2)
    if longer is not None:
        assert longer.p_success >= s.p_success - 1e-12
    # More sheds on the watched tier never raise it.
    refusal = a.refusal + (1.0 - a.refusal - a.error) * more
    shed_more = a._replace(refusal=refusal, refused=max(a.refused, refusal))
    worse = price_watched(shed_more, [b] * n, deadline=deadline, backoff_s=0.2)
    # None: sheds and errors leave the watched tier nothing to serve, so there is no watched
    # plan to buy (the search then prices ladders only): never likelier either.
    if worse is not None:
        assert worse.p_success <= s.p_success + 1e-12
    else:
        assert shed_more.refused + shed_more.error >= 1.0 - 1e-12
    assert a.prompt <= cut_bill(a, s.watch_s or 0.0) <= a.expected + 1e-15


# -- the flow ---------------------------------------------------------------------------------


def _payload(prompt: int, out: int) -> dict[str, Any]:
    return {"usage": {"prompt_tokens": prompt, "completion_tokens": out}}


def test_a_watched_attempt_cut_for_its_pace_is_billed_and_the_call_goes_on_to_fast() -> None:
    clock = FakeClock()
    ledger = MemoryLedger(limit_usd=10.0)
    engine = Engine(policy=CheapestFeasible(watch=True), clock=clock, ledger=ledger, max_attempts=4)
    sent: list[Send] = []

    def send(effect: Send) -> Reply:
        sent.append(effect)
        if effect.watch is not None:
            clock.advance(effect.watch.at_s)
            return Reply(200, {}, _payload(2000, 30), effect.watch.at_s, cut=True, ttft_s=0.9)
        clock.advance(4.0)
        return Reply(200, {}, _payload(2000, 500), 4.0)

    started = engine.start(BODY, requirements=STRICT, watch=True)
    result = engine.run(started, send)
    assert result.ok and result.tier == "fast" and result.attempts == 2
    assert [e.step.tier for e in sent] == ["standard", "fast"]
    watch = sent[0].watch
    assert watch is not None and sent[1].watch is None
    assert watch.finish_by_s == pytest.approx(20 * 0.97) and watch.tokens == 500
    # The cut attempt's bill (its prompt and 30 tokens at standard) is in the call's cost.
    std, fast = KIMI.tiers["standard"], KIMI.tiers["fast"]
    cut = 2000 * std.input_per_token + 30 * std.output_per_token
    whole = 2000 * fast.input_per_token + 500 * fast.output_per_token
    assert result.cost_usd == pytest.approx(cut + whole)
    state = ledger.state(clock.now())
    assert state.spent_usd == pytest.approx(cut + whole) and state.reserved_usd == 0.0
    # The tier served, slowly: its pace is recorded, not a failure.
    stats = engine.signals.stats(engine.signal_keys("kimi-k3")[0], clock.now())
    assert (
        stats.ok == 1
        and stats.tps_n == 1
        and stats.tps_sum == pytest.approx(29 / (watch.at_s - 0.9))
    )


def test_a_watched_attempt_that_keeps_its_pace_is_the_call() -> None:
    clock = FakeClock()
    engine = Engine(policy=CheapestFeasible(watch=True), clock=clock)
    tiers: list[str] = []

    def send(effect: Send) -> Reply:
        tiers.append(effect.step.tier)
        clock.advance(15.0)
        return Reply(200, {}, _payload(2000, 500), 15.0)

    started = engine.start(BODY, requirements=STRICT, watch=True)
    result = engine.run(started, send)
    assert result.ok and tiers == ["standard"] and result.tier == "standard"
    std = KIMI.tiers["standard"]
    assert result.cost_usd == pytest.approx(2000 * std.input_per_token + 500 * std.output_per_token)


def test_explain_shows_the_watched_attempt_and_its_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tiersel.cli import main

    argv = ["explain", "--model", "kimi-k3", "--input-tokens", "2000", "--max-tokens", "500"]
    argv += ["--deadline", "20", "--reliability", "0.999"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "plan:               standard^>fast" in out
    # Checked at 1.5x the call's expected TTFT, plus 1 s: standard's, and 2,000 tokens' prefill.
    w = 1.5 * (0.8 + 2000 * DEFAULT_PREFILL_S) + 1.0
    assert f"attempt 1 is watched: its pace is checked {w:.2f} s after it is sent" in out
    assert f"  2  fast         {w:.2f} s    {20 - w:.2f} s" in out
    assert main([*argv, "--no-watch"]) == 0
    assert "plan:               fast*4" in capsys.readouterr().out


def _cut_or_served(clock: FakeClock, effect: Send) -> Reply:
    if effect.watch is not None:
        clock.advance(effect.watch.at_s)
        return Reply(200, {}, _payload(2000, 30), effect.watch.at_s, cut=True, ttft_s=0.9)
    clock.advance(4.0)
    return Reply(200, {}, _payload(2000, 500), 4.0)


def test_no_watch_whose_two_worst_cases_the_budget_cannot_cover() -> None:
    # A cut attempt is billed, and the next one reserves its own worst case: with $0.04 left, a
    # watched plan (worst $0.065) could end with nothing left for its fast attempt.
    clock = FakeClock()
    ledger = MemoryLedger(limit_usd=0.04)
    engine = Engine(policy=CheapestFeasible(), clock=clock, ledger=ledger)
    started = engine.start(BODY, requirements=STRICT, watch=True)
    result = engine.run(started, lambda e: _cut_or_served(clock, e))
    assert result.ok and result.decisions[0].label == "fast*4"


def test_a_cut_is_charged_at_once_so_an_interrupted_call_still_counts_it() -> None:
    clock = FakeClock()
    ledger = MemoryLedger(limit_usd=10.0)
    engine = Engine(policy=CheapestFeasible(), clock=clock, ledger=ledger)

    def send(effect: Send) -> Reply:
        if effect.watch is not None:
            return _cut_or_served(clock, effect)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.run(engine.start(BODY, requirements=STRICT, watch=True), send)
    std, fast = KIMI.tiers["standard"], KIMI.tiers["fast"]
    state = ledger.state(clock.now())
    cut = 2000 * std.input_per_token + 30 * std.output_per_token
    # And the attempt in flight at the interrupt (on fast, just sent) is charged its prompt,
    # as estimated.
    prompt = engine.call_for(BODY, Dialect.openai)[0].input_tokens
    assert state.spent_usd == pytest.approx(cut + prompt * fast.input_per_token)
    assert state.reserved_usd == 0.0


def test_a_budget_that_cannot_bind_leaves_the_choice_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The money left bounds a watched plan's two worst cases only where it could bind: with an
    # ample budget, calls of one shape are searched once however much money is left (the
    # decision path stays cheap), and a tight one still bars the watch.
    from tiersel.call import BudgetState

    policy = CheapestFeasible()
    searched = 0
    search = CheapestFeasible._search

    def counted(*args: Any) -> Any:
        nonlocal searched
        searched += 1
        return search(*args)

    monkeypatch.setattr(CheapestFeasible, "_search", counted)
    sel = tiersel.Selector(api_key="", policy=policy, clock=FakeClock())
    for spent in (0.0, 1.0, 2.5):
        d = sel.decide(LONG, STRICT, budget=BudgetState(limit_usd=10.0, spent_usd=spent))
        assert d.label == "standard^>fast"
    assert searched == 1
    tight = sel.decide(LONG, STRICT, budget=BudgetState(limit_usd=0.03))  # < $0.03375
    assert tight.label == "fast*4" and searched == 2
