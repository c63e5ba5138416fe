"""The discrete-event replay: deterministic, honest bookkeeping, an oracle never beaten."""

from __future__ import annotations

from collections import Counter
from functools import cache

import pytest

from tiersel.budget import MemoryLedger
from tiersel.cost import tier_cost
from tiersel.pricing import load_pricing
from tiersel.replay.baselines import POLICY_NAMES, contender
from tiersel.replay.capacity import sized
from tiersel.replay.harness import Comparison, ReplayResult, Workload, compare, replay
from tiersel.replay.metrics import CallRecord
from tiersel.replay.mix import DEFAULT_MIX
from tiersel.replay.traces import Trace, shipped_trace
from tiersel.sim import Scenario, load_scenario

# 900 conversation calls squeezed 2.5x: about 80 s of traffic, reaching into the first busy spell
# of `peak` (from 60 s) and the outage of `outage` (from 60 s), with a flap of `flapping`.
SLICE = 900
SPEEDUP = 2.5


@cache
def conv_slice() -> Trace:
    return shipped_trace("azure-conv").head(SLICE)


@cache
def scenario(name: str) -> Scenario:
    sc, _ = sized(load_scenario(name), conv_slice())
    return sc


@cache
def comparison(name: str, seed: int = 0) -> Comparison:
    return compare(conv_slice(), scenario=scenario(name), speedup=SPEEDUP, seed=seed)


# The tests that read `comparison` run in one pytest-xdist worker (``--dist loadgroup``), so each
# scenario's comparison is replayed once, not once in each worker.
COMPARISONS = pytest.mark.xdist_group("replay-comparisons")


@pytest.mark.slow
def test_same_seed_same_replay_and_another_seed_differs() -> None:
    trace = conv_slice().head(400)
    work = Workload.build(trace.compressed(SPEEDUP), DEFAULT_MIX, seed=5)
    sc = scenario("flapping")
    a = replay(work, contender("tiersel"), scenario=sc, seed=5)
    b = replay(work, contender("tiersel"), scenario=sc, seed=5)
    assert a.records == b.records
    assert a.attempts == b.attempts
    assert a.metrics.cost_usd == b.metrics.cost_usd
    c = replay(work, contender("tiersel"), scenario=sc, seed=6)
    assert (c.records, c.attempts) != (a.records, a.attempts)
    # The comparison's own figures are the seeded ones too (only the wall time differs), and a
    # policy's do not depend on which others are compared beside it.
    both = compare(trace, scenario=sc, speedup=SPEEDUP, policies=["tiersel", "always-standard"])
    alone = compare(trace, scenario=sc, speedup=SPEEDUP, policies=["tiersel"])
    assert both.to_dict()["policies"][0] == {
        **alone.to_dict()["policies"][0],
        "replay_wall_s": both.to_dict()["policies"][0]["replay_wall_s"],
    }


@COMPARISONS
@pytest.mark.parametrize("name", ["calm", "busy", "peak", "outage", "flapping"])
def test_the_oracle_is_never_beaten_on_cost_at_its_attainment(name: str) -> None:
    result = comparison(name)
    oracle = result.metrics("oracle")
    assert oracle.attainment >= max(m.attainment for m in result.policies) - 1e-12
    for m in result.policies:
        if m.attainment >= oracle.attainment:
            assert m.cost_usd >= oracle.cost_usd * (1 - 1e-9), m.policy
    # Every call the oracle sends meets its deadline on the first attempt, as foreseen.
    records = _result(result, "oracle").records
    sent = [r for r in records if r.attempts]
    assert sent and all(r.met and r.attempts == 1 and r.sheds == 0 for r in sent)
    assert all(r.detail == "no tier would meet the deadline" for r in records if not r.attempts)


@COMPARISONS
def test_a_policy_that_ignores_signals_does_worse_under_peak_than_calm() -> None:
    calm, peak = comparison("calm"), comparison("peak")
    for name in ("always-standard", "retry-up"):
        assert peak.metrics(name).attainment < calm.metrics(name).attainment
    standard_calm = calm.metrics("always-standard")
    standard_peak = peak.metrics("always-standard")
    assert standard_peak.shed_attempts > standard_calm.shed_attempts
    assert standard_peak.attempts_per_call > standard_calm.attempts_per_call


@COMPARISONS
def test_costs_are_the_tier_prices_of_what_served() -> None:
    prices = load_pricing().model("kimi-k3")
    trace = conv_slice().compressed(SPEEDUP)
    for policy in _result(comparison("peak"), "tiersel"), _result(comparison("peak"), "cooldown"):
        for r in policy.records:
            if r.ok:
                assert r.tier is not None
                req = trace.requests[r.index]
                due = tier_cost(prices.tiers[r.tier], req.input_tokens, 0, req.output_tokens)
                assert r.cost_usd == pytest.approx(due, rel=1e-9)
            else:
                assert r.cost_usd == 0.0


@COMPARISONS
def test_attempt_log_matches_the_records() -> None:
    for policy in (
        _result(comparison("flapping"), "tiersel"),
        _result(comparison("peak"), "retry-up"),
    ):
        per_call = Counter(a.call for a in policy.attempts)
        for r in policy.records:
            assert per_call[r.index] == r.attempts
        sheds = Counter(a.call for a in policy.attempts if a.outcome in ("shed", "rate_limited"))
        assert all(sheds[r.index] == r.sheds for r in policy.records)
        times = [a.sent_s for a in policy.attempts]
        assert times == sorted(times)  # the provider saw time move forward only


@COMPARISONS
def test_baselines_behave_as_named() -> None:
    result = comparison("peak")
    for tier in ("standard", "priority", "fast"):
        m = result.metrics(f"always-{tier}")
        assert dict(m.tier_mix) == {tier: 1.0}
    records = _result(result, "retry-up").records
    assert max(r.attempts for r in records) == 2
    assert all(r.tier == "priority" for r in records if r.ok and r.attempts == 2)
    # retry-up's second attempt is on priority: never two standard attempts for a call.
    attempts = _result(result, "retry-up").attempts
    tiers_by_call: dict[int, list[str]] = {}
    for a in attempts:
        tiers_by_call.setdefault(a.call, []).append(a.tier)
    assert all(t[1:] in ([], ["priority"]) for t in tiers_by_call.values())
    # cooldown: after a shed on standard, the next calls within 30 s go to priority.
    cooldown = _result(result, "cooldown").attempts
    sheds = [a.sent_s for a in cooldown if a.tier == "standard" and a.outcome == "shed"]
    assert sheds
    first = sheds[0]
    later = [a for a in cooldown if first + 1.0 < a.sent_s < first + 29.0]
    assert later and all(a.tier == "priority" for a in later)


@COMPARISONS
def test_tiersel_escalates_tight_calls_when_standard_sheds() -> None:
    records = _result(comparison("outage"), "tiersel").records
    # The outage takes standard down from 60 s (scenario time) on; the slice reaches 80 s.
    late = [r for r in records if r.arrival_s > 62 and r.klass == "interactive"]
    assert late
    assert Counter(r.tier for r in late).most_common(1)[0][0] != "standard"
    assert sum(r.met for r in late) / len(late) > 0.99


def test_a_ledger_caps_spend_and_refuses_what_it_cannot_cover() -> None:
    work = Workload.build(conv_slice().compressed(SPEEDUP), DEFAULT_MIX, seed=1)
    cap = 1.0
    ledger = MemoryLedger(cap)
    seen: list[tuple[float, CallRecord]] = []
    result = replay(
        work,
        contender("tiersel"),
        scenario=scenario("peak"),
        seed=1,
        ledger=ledger,
        on_call=lambda record, now: seen.append((now, record)),
    )
    spent = sum(r.cost_usd for r in result.records)
    assert spent <= cap + 1e-9
    assert ledger.state(0.0).spent_usd == pytest.approx(spent)
    refused = [r for r in result.records if r.detail == "budget"]
    assert refused and not any(r.ok for r in refused)
    assert [now for now, _ in seen] == sorted(now for now, _ in seen)
    assert {r.index for _, r in seen} == set(range(len(work)))


@COMPARISONS
def test_every_policy_is_compared_by_default() -> None:
    result = comparison("calm")
    assert [m.policy for m in result.policies] == list(POLICY_NAMES)
    doc = result.to_dict()
    assert doc["calls"] == SLICE and doc["scenario"] == "calm"
    assert [p["policy"] for p in doc["policies"]] == list(POLICY_NAMES)


def _result(comparison: Comparison, policy: str) -> ReplayResult:
    return next(r for r in comparison.results if r.policy == policy)


@pytest.mark.slow
def test_a_long_outage_on_a_model_without_priority() -> None:
    # glm-5p1 offers standard and fast only. always-standard keeps sending standard through the
    # three-minute outage (its failure streak runs past a thousand): the replay must carry on,
    # and the oracle must find fast for every call that standard cannot serve.
    # Every other call of the first 1,200, to 253 s: the outage and its end, at half the cost
    # of replaying (tiersel plans again at each cooldown's end, about four times a call).
    first = shipped_trace("azure-conv").head(1200)
    trace = Trace(first.name, first.requests[::2])
    result = compare(
        trace,
        scenario="outage",
        model="glm-5p1",
        policies=["always-standard", "tiersel", "oracle"],
    )
    standard = _result(result, "always-standard")
    in_outage = [r for r in standard.records if 61 < r.arrival_s < 237]
    assert len(in_outage) > 250 and not any(r.ok for r in in_outage)
    assert all(r.attempts == 4 for r in in_outage)
    oracle, tiersel = result.metrics("oracle"), result.metrics("tiersel")
    assert oracle.attainment > 0.99 and tiersel.attainment > 0.99
    assert oracle.attainment >= tiersel.attainment
    # The oracle sends one attempt; tiersel may instead wait out the outage on standard for a
    # call with time to spare, so it may cost less than the oracle, never much more.
    assert tiersel.cost_usd <= oracle.cost_usd * 1.10
    assert set(oracle.tier_mix) == {"standard", "fast"}


@pytest.mark.slow
def test_the_default_scenario_sheds_standard_at_times_and_tiersel_rides_it() -> None:
    # The code trace's first ~7 minutes at its own pace, under the default scenario (`busy`):
    # other tenants overload the shared pool from 270 s to 330 s, ramping over 30 s either side.
    trace = shipped_trace("azure-code").head(1300)
    assert trace.duration_s > 400
    names = ["always-standard", "always-priority", "tiersel", "oracle"]
    c = compare(trace, policies=names)
    assert c.scenario == "busy"
    runs = {r.policy: r for r in c.results}
    sheds = [a.sent_s for a in runs["always-standard"].attempts if a.outcome == "shed"]
    # Shed in the busy minute (and when the bursty trace itself fills the pool), not throughout.
    assert sum(270 <= t <= 330 for t in sheds) > 50
    assert not [t for t in sheds if t < 180], "the first three minutes are calm"
    tiersel, oracle = c.metrics("tiersel"), c.metrics("oracle")
    priority = c.metrics("always-priority")
    assert c.metrics("always-standard").attainment < 1.0
    assert tiersel.attainment >= oracle.attainment - 0.005
    # The oracle sends one attempt, knowing how it will go; tiersel may also wait out a spell
    # on standard for a call with time to spare, which can make it the cheaper of the two.
    assert tiersel.cost_usd <= oracle.cost_usd * 1.10 and tiersel.cost_usd < priority.cost_usd


@pytest.mark.slow
def test_watched_attempts_buy_three_nines_cheaper_than_a_ladder() -> None:
    # Strict calls (20 s, 0.999): a ~400-token answer is too near the deadline on standard for a
    # ladder, which buys fast; a watched standard attempt, cut for fast when its pace is too
    # slow, serves most of them at standard's price (`tiersel.watch`).
    from tiersel.policy import CheapestFeasible
    from tiersel.replay.baselines import Contender
    from tiersel.replay.mix import parse_mix

    watched = Contender("watched", CheapestFeasible(watch=True))
    ladder = Contender("ladder", CheapestFeasible(watch=False))
    trace = shipped_trace("azure-conv").head(3000)
    both = compare(trace, policies=[watched, ladder], mix=parse_mix("strict=1:20s:0.999"))
    w, lad = both.metrics("watched"), both.metrics("ladder")
    assert w.attainment >= 0.999 and lad.attainment >= 0.999
    assert w.cost_usd < lad.cost_usd * 0.95
    # Cut attempts are billed: a call served after a cut costs more than its tier's price.
    prices = load_pricing().model("kimi-k3")
    cut = 0
    for r in _result(both, "watched").records:
        if r.ok and r.attempts > 1 and r.tier is not None:
            req = trace.requests[r.index]
            due = tier_cost(prices.tiers[r.tier], req.input_tokens, 0, req.output_tokens)
            cut += r.cost_usd > due * (1 + 1e-9)
    assert cut > 10


def test_a_replayed_session_finds_its_prefix_cached_and_is_planned_so() -> None:
    # Two turns of one session over a 40,000-token context, 30 s apart, each due in 6 s: the
    # first waits about 5 s of prefill on standard, so it is planned on fast; the second finds
    # the context in the provider's cache (the engine saw the first served), and standard
    # serves it in time, billed the cached rate for the context.
    from tiersel.replay.traces import parse_trace

    trace = parse_trace(
        "timestamp_s,input_tokens,output_tokens,deadline_s,reliability,prefix,prefix_tokens\n"
        "0,40200,100,6,0.95,chat/1,40000\n30,40500,100,6,0.95,chat/1,40300\n"
    )
    result = _result(compare(trace, policies=["tiersel"], scenario="calm"), "tiersel")
    first, second = result.records
    assert first.met and second.met
    assert first.tier == "fast" and second.tier == "standard"
    prices = load_pricing().model("kimi-k3").tiers["standard"]
    uncached = tier_cost(prices, 40_500, 0, 100)
    assert second.cost_usd == pytest.approx(tier_cost(prices, 40_500, 40_300, 100))
    assert second.cost_usd < 0.6 * uncached
