"""The default policy's choices, reasons and refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import tiersel
from tiersel import Call, NoFeasibleTier, Requirements
from tiersel.call import BudgetState
from tiersel.clock import FakeClock
from tiersel.decision import Verdict
from tiersel.errors import UnknownTier
from tiersel.policy import CheapestFeasible, FixedTier
from tiersel.pricing import load_pricing
from tiersel.signals import CircuitState, TierHealth
from tiersel.tiers import Tier

PRICING = load_pricing()
KIMI = PRICING.model("kimi-k3")
CALL = Call(model="kimi-k3", input_tokens=2000, max_output_tokens=300)


def health(
    refusal: float = 0.01,
    tps: float = 50.0,
    ttft: float = 0.5,
    state: CircuitState = CircuitState.closed,
    spread: float = 0.35,
) -> TierHealth:
    return TierHealth(
        refusal_rate=refusal,
        error_rate=0.0,
        ttft_s=ttft,
        output_tps=tps,
        shed_latency_s=0.3,
        state=state,
        cooldown_s=3.0 if state is CircuitState.open else 0.0,
        observed=10,
        ttft_spread=spread,
        tps_spread=spread,
    )


CALM = {"standard": health(), "priority": health(0.001), "fast": health(0.005, tps=150, ttft=0.3)}


def decide(
    req: Requirements, signals: dict[str, TierHealth] = CALM, **kw: object
) -> tiersel.Decision:
    return CheapestFeasible(**kw)(CALL, req, None, KIMI, signals, 0.0)  # type: ignore[arg-type]


def test_no_requirements_means_the_cheapest_tier() -> None:
    d = decide(Requirements())
    assert d.tier == Tier.standard and d.service_tier is None
    assert d.model == "accounts/fireworks/models/kimi-k3"
    chosen = [r for r in d.reasons if r.verdict is Verdict.chosen]
    # Every attempt on standard: the cheapest, and more attempts cost nothing more.
    assert [r.plan for r in chosen] == ["standard*4"]
    assert {r.plan for r in d.reasons} >= {"standard*4", "priority", "fast"}


def test_speed_requirement_buys_fast() -> None:
    d = decide(Requirements(min_output_tps=100))
    assert d.tier == "fast" and d.service_tier is None
    assert d.model == "accounts/fireworks/routers/kimi-k3-fast"
    assert any(r.code == "tps" and r.plan == "standard" for r in d.reasons)


def test_reliability_under_shedding_buys_more_attempts_or_priority() -> None:
    shedding = {**CALM, "standard": health(0.3)}
    # No deadline: four attempts on standard reach 1 - 0.3**4 = 0.9919.
    d = decide(Requirements(reliability=0.99), shedding)
    assert d.label == "standard*4" and d.p_success == pytest.approx(1 - 0.3**4)
    assert [s.p_reach for s in d.plan] == pytest.approx([1, 0.3, 0.09, 0.027])
    # Three attempts are not enough on standard alone: the last one climbs to priority.
    d = decide(Requirements(reliability=0.99, max_attempts=3), shedding)
    assert d.label == "standard*2>priority" and d.plan[2].service_tier == "priority"
    assert d.p_success == pytest.approx(0.7 + 0.21 + 0.09 * 0.999)
    # One attempt: priority alone.
    d = decide(Requirements(reliability=0.99), shedding, max_attempts=1)
    assert d.tier == "priority" and len(d.plan) == 1


def test_open_tier_is_avoided_with_its_cooldown_in_the_reason() -> None:
    d = decide(Requirements(), {**CALM, "standard": health(state=CircuitState.open)})
    assert d.tier == "priority"
    (why,) = [r for r in d.reasons if r.plan == "standard"]
    assert why.code == "cooldown" and "3.0 s" in str(why)


def test_cost_cap_and_budget_reject_with_reasons() -> None:
    std_cost = decide(Requirements()).worst_case_cost_usd
    with pytest.raises(NoFeasibleTier) as info:
        decide(Requirements(max_cost_usd=std_cost / 2))
    assert {r.code for r in info.value.reasons} - {"opt_in"} == {"cost_cap"}
    budget = BudgetState(limit_usd=std_cost * 1.1)
    d = CheapestFeasible()(
        CALL, Requirements(min_output_tps=100, best_effort=True), budget, KIMI, CALM, 0.0
    )
    assert d.best_effort and d.tier == "standard"
    assert any(r.code == "budget" and r.plan == "fast" for r in d.reasons)


def test_tiers_not_offered_or_not_allowed() -> None:
    oss = PRICING.model("gpt-oss-20b")
    call = Call(model="gpt-oss-20b", input_tokens=10, max_output_tokens=10)
    with pytest.raises(NoFeasibleTier) as info:
        CheapestFeasible()(
            call, Requirements(tiers=["fast"]), None, oss, {"standard": health()}, 0.0
        )
    codes = {(r.plan, r.code) for r in info.value.reasons}
    assert ("fast", "not_offered") in codes and ("standard", "not_allowed") in codes
    assert "no tier of gpt-oss-20b" in str(info.value)


def test_deadline_and_ttft() -> None:
    d = decide(Requirements(deadline_s=4.0, reliability=0.9))
    assert d.tier == "fast"  # 300 tokens at 50 tok/s cannot finish in 4 s
    d = decide(Requirements(max_ttft_s=0.4))
    assert d.tier == "fast"
    assert any(r.code == "ttft" for r in d.reasons)


def test_a_tier_s_learned_spread_decides_whether_it_meets_a_tight_deadline() -> None:
    # 300 tokens on standard: 6.5 s typical, against a 10 s deadline at 98%.
    tight = Requirements(deadline_s=10.0, reliability=0.98, watch=False)  # (a ladder)
    assert decide(tight).tier == "fast"  # at the prior spread, 6.5 s may well become 10 s
    steady = {**CALM, "standard": health(spread=0.1)}
    d = decide(tight, steady)
    assert d.tier == "standard" and d.p_success >= 0.98
    # The spread is each tier's: priority, as slow and still at the prior, is not enough.
    steady_priority = {**CALM, "priority": health(0.001, spread=0.1)}
    assert decide(tight, steady_priority).tier == "priority"
    # A fixed latency_sigma overrides what was learned, for every tier.
    assert decide(tight, steady, latency_sigma=0.35).tier == "fast"
    assert decide(tight, latency_sigma=0.1).tier == "standard"


def test_the_decode_time_s_spread_weighs_by_its_share_of_the_latency() -> None:
    # Almost all of the 6.5 s is decoding: a wide TTFT spread barely matters, a wide rate one does.
    tight = Requirements(deadline_s=10.0, reliability=0.98)
    wide_ttft = dataclasses.replace(health(spread=0.1), ttft_spread=1.0)
    assert decide(tight, {**CALM, "standard": wide_ttft}).tier == "standard"
    wide_rate = dataclasses.replace(health(spread=0.1), tps_spread=1.0)
    assert decide(tight, {**CALM, "standard": wide_rate}).tier == "fast"


def test_best_effort_takes_the_likeliest() -> None:
    with pytest.raises(NoFeasibleTier):
        decide(Requirements(deadline_s=1.0, reliability=0.99))
    d = decide(Requirements(deadline_s=1.0, reliability=0.99, best_effort=True))
    assert d.best_effort and d.tier == "fast"
    assert "best effort" in d.explain()


def test_best_effort_keeps_to_the_tiers_fast_enough_while_they_have_a_hope() -> None:
    # Fast alone writes 100 tokens/s; in one attempt, the target is out of reach. The likeliest
    # plan fast enough is taken, though slower tiers (which shed fewer calls) are likelier.
    want = Requirements(reliability=0.9999, min_output_tps=100, max_attempts=1, best_effort=True)
    d = decide(want)
    assert d.best_effort and {s.tier for s in d.plan} == {"fast"}
    assert d.p_success < decide(want.model_copy(update={"min_output_tps": None})).p_success
    # Where the tiers fast enough have no hope (fast shedding nearly every call), a best-effort
    # call falls back on slower ones, as before.
    hopeless = {**CALM, "fast": health(0.995, tps=150, ttft=0.3)}
    d = CheapestFeasible(min_reliability=0.5)(CALL, want, None, KIMI, hopeless, 0.0)
    assert d.best_effort and "fast" not in {s.tier for s in d.plan}


def test_pacing_keeps_money_for_the_calls_to_come() -> None:
    std = decide(Requirements()).estimated_cost_usd
    fast = decide(Requirements(min_output_tps=100)).estimated_cost_usd
    roomy = BudgetState(limit_usd=std * 9 + fast, remaining_calls=10)
    d = CheapestFeasible(pacing=1.0)(CALL, Requirements(min_output_tps=100), roomy, KIMI, CALM, 0.0)
    assert d.tier == "fast"  # the other nine can still be served on standard
    tight = BudgetState(limit_usd=std * 10, remaining_calls=10)
    with pytest.raises(NoFeasibleTier) as info:
        CheapestFeasible(pacing=1.0)(CALL, Requirements(min_output_tps=100), tight, KIMI, CALM, 0.0)
    assert any(r.code == "pacing" and r.plan.startswith("fast") for r in info.value.reasons)
    # Without pacing the same budget would let this call take fast.
    assert (
        CheapestFeasible()(CALL, Requirements(min_output_tps=100), tight, KIMI, CALM, 0.0).tier
        == "fast"
    )


def test_bad_latency_sigma_is_refused() -> None:
    with pytest.raises(ValueError, match="latency_sigma"):
        CheapestFeasible(latency_sigma=0.0)


def test_custom_policy_is_a_plain_callable() -> None:
    def always_priority(call, requirements, budget, prices, signals, now):  # type: ignore[no-untyped-def]
        return FixedTier("priority")(call, requirements, budget, prices, signals, now)

    sel = tiersel.Selector(policy=always_priority, clock=FakeClock())
    assert sel.decide(CALL).tier == "priority"


def test_decision_is_frozen_and_serialisable() -> None:
    d = decide(Requirements())
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.p_success = 1.0  # type: ignore[misc]
    doc = d.to_dict()
    assert doc["tier"] == "standard" and doc["plan"][0]["model"] == d.model
    assert all({"plan", "verdict", "code", "message"} <= set(r) for r in doc["reasons"])


def test_a_schedule_climbs_past_a_tier_too_slow_to_help() -> None:
    # Standard is shed half the time; priority is far too slow for the deadline, fast is quick.
    signals = {
        "standard": health(0.5),
        "priority": health(0.001, tps=5.0),
        "fast": health(0.005, tps=150, ttft=0.3),
    }
    d = decide(Requirements(deadline_s=20, reliability=0.99), signals)
    tiers = [s.tier for s in d.plan]
    assert tiers[0] == "standard" and tiers[-1] == "fast" and "priority" not in tiers
    assert d.p_success >= 0.99
    verdicts = {r.plan: (r.verdict, r.code) for r in d.reasons}
    assert verdicts["priority"] == (Verdict.costlier, "costlier")


def test_tiers_the_schedule_leaves_out_are_dearer_or_cannot_help() -> None:
    signals = {**CALM, "standard": health(0.2)}
    d = decide(Requirements(deadline_s=30, reliability=0.99), signals)
    assert d.label == "standard*4" and d.p_success >= 0.99
    verdicts = {r.plan: (r.verdict, r.code) for r in d.reasons}
    assert verdicts["priority"] == verdicts["fast"] == (Verdict.costlier, "costlier")
    # The cheapest tier left out of a dearer schedule is there for lack of reliability.
    shedding = {**CALM, "standard": health(0.9)}
    d = decide(Requirements(deadline_s=30, reliability=0.99, max_attempts=1), shedding)
    assert d.tier == "priority"
    assert {r.plan: r.code for r in d.reasons}["standard"] == "reliability"


def test_a_tier_shed_more_often_never_becomes_a_better_first_attempt() -> None:
    # Standard is as fast as priority but far less punctual (a wider spread): priority alone is
    # chosen. Were standard shed half the time, it would hand half its calls on to priority for
    # free; the schedule must not count that as standard growing more reliable (found by the
    # property test of this rule).
    def tier(spread: float, refusal: float = 0.0) -> TierHealth:
        return TierHealth(refusal, 0.0, 1.0, 5.0, 0.0, CircuitState.closed, 0.0, 0, 1.0, spread)

    call = Call(model="kimi-k3", input_tokens=0, max_output_tokens=3)
    need = Requirements(deadline_s=4.0, reliability=0.9)
    for refusal in (0.0, 0.5, 0.9):
        signals = {"standard": tier(3.0, refusal), "priority": tier(0.5), "fast": tier(0.5)}
        d = CheapestFeasible()(call, need, None, KIMI, signals, 0.0)
        assert [s.tier for s in d.plan] == ["priority"] * len(d.plan), (refusal, d.label)


def test_a_long_prompt_takes_its_prefill_to_the_first_token_unless_it_is_cached() -> None:
    # 60,000 prompt tokens at standard's 0.12 ms each put its first token 7.5 s out: with 100
    # output tokens it cannot make a 9 s deadline, and fast (whose prefill is 5.5x quicker)
    # serves. The same prompt read from the cache has no prefill: standard serves.
    prefill = KIMI.tiers["standard"].spec.priors.prefill_s(60_000)
    assert prefill == pytest.approx(60_000 * 0.1247e-3)
    req = Requirements(deadline_s=9, reliability=0.9)
    fresh = Call(model="kimi-k3", input_tokens=60_000, max_output_tokens=100)
    cached = fresh.model_copy(update={"cached_input_tokens": 60_000})
    d = CheapestFeasible()(fresh, req, None, KIMI, CALM, 0.0)
    assert d.tier == Tier.fast
    assert CheapestFeasible()(cached, req, None, KIMI, CALM, 0.0).tier == Tier.standard
    # The latency it expects counts the prefill: fast's TTFT, its prompt's, then 100 tokens.
    fast = KIMI.tiers["fast"].spec.priors
    assert d.expected_latency_s == pytest.approx(0.3 + fast.prefill_s(60_000) + 100 / 150, rel=0.05)


def test_a_cooldown_is_not_waited_out_when_the_prompt_s_prefill_would_then_end_too_late() -> None:
    from tiersel.engine.waits import shortest_cooldown

    cooling = {"standard": health(state=CircuitState.open)}  # open for 3 s
    req = Requirements(deadline_s=9)
    short = Call(model="kimi-k3", input_tokens=1_000, max_output_tokens=100)
    long = Call(model="kimi-k3", input_tokens=60_000, max_output_tokens=100)  # 7.5 s prefill
    assert shortest_cooldown(cooling, req, short, prices=KIMI) == pytest.approx(3.0, abs=0.01)
    assert shortest_cooldown(cooling, req, long, prices=KIMI) is None
    assert shortest_cooldown(cooling, req, long) is not None  # (prices unknown: no prefill)


def test_a_reliability_reason_too_close_to_its_target_to_show_in_four_places_shows_more() -> None:
    # At reliability 1.0, explain said "P(success within deadline) 1.0000 is below the target
    # 1.0000" (a new user's probe).
    from tiersel.decision import Reason, Verdict

    close = Reason("priority*4", Verdict.rejected, "reliability", (0.9999925164154913, 1.0))
    assert close.message == "P(success within deadline) 0.9999925164154913 is below the target 1.0"
    apart = Reason("standard*4", Verdict.rejected, "reliability", (0.9894, 0.999))
    assert apart.message == "P(success within deadline) 0.9894 is below the target 0.9990"


def test_max_attempts_past_any_use_are_refused_naming_the_bound() -> None:
    # A million took 2.2 s to decide, ten million 29 s (a new user's probe); 1,000 attempts at
    # backoffs of up to 10 s outlast any deadline.
    from pydantic import ValidationError

    from tiersel.call import MAX_ATTEMPTS

    with pytest.raises(ValidationError, match="less than or equal to 1000"):
        Requirements(max_attempts=10**6)
    with pytest.raises(ValueError, match="max_attempts must be 1 to 1000, got 1000000"):
        tiersel.Selector(max_attempts=10**6, api_key="")
    with pytest.raises(ValueError, match="max_attempts must be 1 to 1000"):
        CheapestFeasible(max_attempts=0)
    call = Call(model="kimi-k3", input_tokens=100, max_output_tokens=100)
    decision = tiersel.Selector(api_key="").decide(
        call, Requirements(max_attempts=MAX_ATTEMPTS, deadline_s=30)
    )
    assert 1 <= len(decision.plan) <= MAX_ATTEMPTS


def test_a_fake_clock_never_moves_to_a_time_that_is_not_finite() -> None:
    # NaN or infinite times were accepted; the next decision failed with "cannot convert float
    # NaN to integer", naming neither the clock nor the input (a new user's probe).
    from tiersel.clock import FakeClock

    with pytest.raises(ValueError, match="FakeClock: start must be a finite time, got nan"):
        FakeClock(float("nan"))
    clock = FakeClock(5.0)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="FakeClock: cannot move by"):
            clock.advance(bad)
        with pytest.raises(ValueError, match="FakeClock: cannot move by"):
            clock.sleep(bad)
    clock.sleep(-1.0)  # a wait of less than no time is none, as asyncio.sleep's
    assert clock.now() == 5.0


def test_a_call_with_a_blank_model_or_a_boolean_token_count_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="model must name a model, got '   '"):
        Call(model="   ", input_tokens=10, max_output_tokens=10)
    with pytest.raises(ValidationError, match="a token count must be a number, got True"):
        Call(model="kimi-k3", input_tokens=True, max_output_tokens=10)  # type: ignore[arg-type]


def test_a_remembered_decision_is_never_stale() -> None:
    # With no budget, calls of one shape on one snapshot of the signals are decided once:
    # equal health gives the very decision made before (remembered by value, not by the
    # objects' identities); any change is decided afresh.
    policy = CheapestFeasible()
    req = Requirements(deadline_s=20, reliability=0.99)
    first = policy(CALL, req, None, KIMI, CALM, 0.0)
    assert policy(CALL, req, None, KIMI, dict(CALM), 5.0) is first  # same healths: remembered

    def fresh(signals: dict[str, TierHealth], r: Requirements = req) -> tiersel.Decision:
        return CheapestFeasible()(CALL, r, None, KIMI, signals, 0.0)

    shed = {**CALM, "standard": health(0.6)}  # a new snapshot: standard sheds
    again = policy(CALL, req, None, KIMI, shed, 0.0)
    assert again == fresh(shed) and again.plan != first.plan
    copies = {t: dataclasses.replace(h) for t, h in CALM.items()}  # equal, not the same objects
    assert policy(CALL, req, None, KIMI, copies, 0.0) is first
    other = Requirements(deadline_s=20, reliability=0.99, tiers=("priority", "fast"))
    assert policy(CALL, other, None, KIMI, CALM, 0.0) == fresh(CALM, other) != first
    bigger = CALL.model_copy(update={"max_output_tokens": 400})
    assert policy(bigger, req, None, KIMI, CALM, 0.0).plan[0].worst_cost_usd > (
        first.plan[0].worst_cost_usd
    )
    loose = Requirements(deadline_s=20)
    assert len(policy(CALL, loose, None, KIMI, CALM, 0.0).plan) > 1
    policy.max_attempts = 1  # the policy's own settings are part of what it remembers by
    assert len(policy(CALL, loose, None, KIMI, CALM, 0.0).plan) == 1
    # A budget is read afresh each call: never remembered by this memo.
    budget = BudgetState(limit_usd=1.0, spent_usd=0.0, reserved_usd=0.0)
    assert policy(CALL, req, budget, KIMI, CALM, 0.0) == CheapestFeasible(max_attempts=1)(
        CALL, req, budget, KIMI, CALM, 0.0
    )


@pytest.mark.parametrize(
    ("policy", "named"),
    [(FixedTier("turbo"), "'turbo'"), (FixedTier("priority", fallback="standrd"), "'standrd'")],
)
def test_a_fixed_tier_the_table_does_not_declare_is_refused_when_the_selector_is_built(
    policy: FixedTier, named: str
) -> None:
    # helper-27: FixedTier("turbo") fell back to standard on every call, and said nothing.
    with pytest.raises(UnknownTier) as caught:
        tiersel.Selector(api_key="", policy=policy)
    assert str(caught.value).startswith(f"policy={policy!r}: unknown tier {named} (known: ")
    # A tier some model does not sell is no typo: it falls back for that model, as documented.
    assert tiersel.Selector(api_key="", policy=FixedTier("flex")).policy.tier == "flex"


def test_a_table_without_standard_takes_a_fixed_tier_that_names_no_fallback(
    tmp_path: Path,
) -> None:
    # helper-32: the default fallback, standard, was checked as if the caller had named it.
    table = (Path(__file__).parent.parent / "data" / "pricing_two_tiers.yaml").read_text()
    (tmp_path / "acme.yaml").write_text(table)
    prices = load_pricing(tmp_path / "acme.yaml")
    assert "standard" not in prices.tiers
    selector = tiersel.Selector(api_key="", pricing=prices, policy=FixedTier("express"))
    assert selector.policy.tier == "express"
    with pytest.raises(UnknownTier, match=r"fallback='standard'\): unknown tier 'standard'"):
        tiersel.Selector(
            api_key="", pricing=prices, policy=FixedTier("express", fallback="standard")
        )
