"""Invariants of the default policy, under random calls, requirements and signals."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import assume, given
from hypothesis import strategies as st

from tiersel import Call, NoFeasibleTier, Requirements
from tiersel.call import BudgetState
from tiersel.dialects import apply_step
from tiersel.policy import CheapestFeasible
from tiersel.pricing import ModelPrices, load_pricing
from tiersel.signals import CircuitState, TierHealth

PRICING = load_pricing()
# Every model that sells two tiers or more, and a few that sell one (most of the catalogue).
MODELS = (
    sorted(name for name, mp in PRICING.models.items() if len(mp.tiers) > 1)
    + sorted(name for name, mp in PRICING.models.items() if len(mp.tiers) == 1)[:5]
)
POLICY = CheapestFeasible()

Drawn = tuple[Call, Requirements, ModelPrices, dict[str, TierHealth], BudgetState | None]

healths = st.builds(
    TierHealth,
    refusal_rate=st.floats(0.0, 0.9),
    error_rate=st.floats(0.0, 0.09),
    ttft_s=st.floats(0.05, 5.0),
    output_tps=st.floats(5.0, 400.0),
    shed_latency_s=st.floats(0.0, 2.0),
    state=st.sampled_from([CircuitState.closed] * 4 + [CircuitState.open]),
    cooldown_s=st.floats(0.0, 30.0),
    observed=st.integers(0, 1000),
    ttft_spread=st.floats(0.01, 2.0),
    tps_spread=st.floats(0.01, 2.0),
)


@st.composite
def scenarios(draw: st.DrawFn) -> Drawn:
    model = draw(st.sampled_from(MODELS))
    prices = PRICING.model(model)
    inp = draw(st.integers(0, 50_000))
    call = Call(
        model=model,
        input_tokens=inp,
        cached_input_tokens=draw(st.integers(0, inp)),
        max_output_tokens=draw(st.integers(1, 8000)),
    )
    all_tiers = list(PRICING.tiers)
    tiers = draw(st.none() | st.lists(st.sampled_from(all_tiers), min_size=1, unique=True))
    deadline = draw(st.none() | st.floats(0.5, 300.0))
    ttft = draw(st.none() | st.floats(0.05, 10.0))
    if ttft is not None and deadline is not None:
        ttft = min(ttft, deadline)
    req = Requirements(
        deadline_s=deadline,
        max_ttft_s=ttft,
        min_output_tps=draw(st.none() | st.floats(1.0, 300.0)),
        reliability=draw(st.none() | st.floats(0.5, 0.9999)),
        tiers=tiers,
        max_cost_usd=draw(st.none() | st.floats(0.0, 2.0)),
        best_effort=draw(st.booleans()),
    )
    signals = {t: draw(healths) for t in prices.tiers}
    budget = draw(st.none() | st.builds(BudgetState, limit_usd=st.floats(0.0, 5.0)))
    return call, req, prices, signals, budget


@given(scenarios())
def test_chosen_plans_are_allowed_offered_capped_and_never_mix_priority_with_fast(
    s: Drawn,
) -> None:
    call, req, prices, signals, budget = s
    try:
        d = POLICY(call, req, budget, prices, signals, 0.0)
    except NoFeasibleTier as exc:
        assert exc.reasons
        return
    if signals[d.plan[0].tier].state is CircuitState.open:
        # Only a call with a deadline waits out a cooldown, the cooldown's own length, and only
        # one that ends in time (a cooldown that has just run out, 0 s, is no wait at all).
        assert req.deadline_s is not None
        assert d.wait_s == signals[d.plan[0].tier].cooldown_s < req.deadline_s
    else:
        assert d.wait_s == 0.0
    for step in d.plan:
        assert step.tier in prices.tiers
        assert req.tiers is None or step.tier in req.tiers
        assert step.model == prices.tiers[step.tier].model_id
        body = apply_step({"model": call.model, "messages": [], "service_tier": "priority"}, step)
        # Priority rides no router but a US-only one (Fireworks sells that pair: us_priority).
        if "/routers/" in body["model"] and not body["model"].endswith("-us"):
            assert "service_tier" not in body
        assert ("service_tier" in body) == (step.tier in ("priority", "us_priority"))
        if req.max_cost_usd is not None:
            assert step.worst_cost_usd <= req.max_cost_usd + 1e-12
        if budget is not None:
            assert step.worst_cost_usd <= budget.remaining_usd + 1e-12
    assert d.estimated_cost_usd <= d.worst_case_cost_usd + 1e-12
    if req.max_cost_usd is not None:
        assert d.estimated_cost_usd <= req.max_cost_usd + 1e-12
    if not d.best_effort and req.reliability is not None:
        assert d.p_success >= req.reliability
    assert 0.0 <= d.p_success <= 1.0


@given(scenarios(), st.data())
def test_a_higher_shed_rate_never_makes_a_tier_more_attractive(
    s: Drawn,
    data: st.DataObject,
) -> None:
    call, req, prices, signals, budget = s
    tier = data.draw(st.sampled_from(sorted(signals)))
    h = signals[tier]
    more = data.draw(st.floats(h.refusal_rate, 1.0 - h.error_rate))
    assume(more > h.refusal_rate)
    worse = {**signals, tier: replace(h, refusal_rate=more)}

    def uses(sig: dict[str, TierHealth]) -> bool | None:
        try:
            d = POLICY(call, req, budget, prices, sig, 0.0)
        except NoFeasibleTier:
            return None
        return any(step.tier == tier for step in d.plan)

    before, after = uses(signals), uses(worse)
    if after:
        assert before, f"{tier} chosen only after its shed rate rose to {more}"


@given(scenarios(), st.data())
def test_no_subset_of_the_tiers_offers_a_cheaper_plan_that_meets_the_requirements(
    s: Drawn,
    data: st.DataObject,
) -> None:
    # The policy prunes the plans it weighs (ladders it cannot need); restricting the tiers to a
    # pair, so that pair's ladder is weighed for sure, must never find a cheaper plan.
    call, req, prices, signals, budget = s
    offered = [
        t for t in prices.tiers if (t in req.tiers if req.tiers else t in prices.default_tiers)
    ]
    assume(len(offered) >= 2)
    pair = data.draw(st.lists(st.sampled_from(offered), min_size=2, max_size=2, unique=True))
    narrowed = req.model_copy(update={"tiers": pair})
    try:
        within_pair = POLICY(call, narrowed, budget, prices, signals, 0.0)
    except NoFeasibleTier:
        return
    assume(not within_pair.best_effort)
    best = POLICY(call, req, budget, prices, signals, 0.0)
    assert not best.best_effort
    assert best.estimated_cost_usd <= within_pair.estimated_cost_usd * (1 + 1e-9) + 1e-15
