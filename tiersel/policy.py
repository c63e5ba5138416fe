"""Policies: pure functions from (call, requirements, budget, prices, signals, now) to a `Decision`.

The default, `CheapestFeasible`, weighs every tier the model offers and every two-step ladder
(a cheaper tier first, a dearer one after a shed) and picks the plan with the lowest expected cost
that meets the requirements. A custom policy is any callable with the same signature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from tiersel.decision import Decision, Reason, Step, Verdict
from tiersel.errors import NoFeasibleTier
from tiersel.pricing import ModelPrices, TierPrice
from tiersel.requirements import BudgetState, Call, Requirements
from tiersel.signals import CircuitState, TierHealth

__all__ = ["CheapestFeasible", "FixedTier", "Policy", "Signals"]

Signals = Mapping[str, TierHealth]
"""The signals a policy reads: the health of each tier of the call's model, by tier name."""


class Policy(Protocol):
    """Anything that maps a call and its context to a decision, with no I/O."""

    def __call__(
        self,
        call: Call,
        requirements: Requirements,
        budget: BudgetState | None,
        prices: ModelPrices,
        signals: Signals,
        now: float,
    ) -> Decision: ...


_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True, slots=True)
class _Option:
    """One tier's numbers for this call."""

    tier: str
    price: TierPrice
    health: TierHealth
    worst: float
    expected: float
    latency: float  # median end-to-end seconds if served


@dataclass(frozen=True, slots=True)
class _Plan:
    options: tuple[_Option, ...]
    p_success: float
    expected_cost: float
    worst_cost: float
    latency: float

    @property
    def label(self) -> str:
        return ">".join(o.tier for o in self.options)


class CheapestFeasible:
    """The default policy: the cheapest plan that meets the requirements.

    - ``latency_sigma``: spread of the end-to-end latency around its estimate (log-normal), which
      turns a deadline into a probability of finishing on time.
    - ``ladders``: also weigh two-step plans (cheap tier first, escalate after a shed).
    - ``pacing``: when the budget knows how many calls remain, refuse a plan that would leave
      less than ``pacing`` times what the calls still to come need at this call's cheapest tier
      (None: no pacing). Money then goes to calls whose requirements demand a dearer tier only
      while the rest can still be served.

    >>> from tiersel import Selector, Call, Requirements
    >>> d = Selector().decide(Call(model="kimi-k2p6", input_tokens=800, max_output_tokens=200))
    >>> d.tier
    <Tier.standard: 'standard'>
    """

    __slots__ = ("ladders", "latency_sigma", "pacing")

    def __init__(
        self, *, latency_sigma: float = 0.35, ladders: bool = True, pacing: float | None = None
    ) -> None:
        if not latency_sigma > 0:
            raise ValueError(f"latency_sigma must be > 0, got {latency_sigma!r}")
        if pacing is not None and not pacing > 0:
            raise ValueError(f"pacing must be > 0, got {pacing!r}")
        self.latency_sigma = latency_sigma
        self.ladders = ladders
        self.pacing = pacing

    def __repr__(self) -> str:
        return (
            f"CheapestFeasible(latency_sigma={self.latency_sigma}, ladders={self.ladders},"
            f" pacing={self.pacing})"
        )

    # The decision path: keep it cheap (benchmarks/decide.py).
    def __call__(
        self,
        call: Call,
        requirements: Requirements,
        budget: BudgetState | None,
        prices: ModelPrices,
        signals: Signals,
        now: float,
    ) -> Decision:
        reasons: list[Reason] = []
        allowed = requirements.tiers
        cap = requirements.max_cost_usd
        remaining = budget.remaining_usd if budget is not None else None
        deadline = requirements.deadline_s
        if deadline is not None and deadline <= 0:
            reasons.append(Reason("*", Verdict.rejected, "no_time"))
            raise NoFeasibleTier(call.model, reasons)

        uncached = call.input_tokens - call.cached_input_tokens
        cached = call.cached_input_tokens
        out_max = call.max_output_tokens
        out_exp = call.output_tokens_for_latency
        options: list[_Option] = []
        if allowed is not None:
            for name in allowed:
                if name not in prices.tiers:
                    reasons.append(Reason(name, Verdict.rejected, "not_offered"))
        for name, price in prices.tiers.items():
            if allowed is not None and name not in allowed:
                reasons.append(Reason(name, Verdict.rejected, "not_allowed"))
                continue
            health = signals.get(name)
            if health is None:
                continue
            if health.state is CircuitState.open:
                reasons.append(Reason(name, Verdict.rejected, "cooldown", (health.cooldown_s,)))
                continue
            base = uncached * price.input_per_token + cached * price.cached_input_per_token
            worst = base + out_max * price.output_per_token
            if cap is not None and worst > cap:
                reasons.append(Reason(name, Verdict.rejected, "cost_cap", (worst, cap)))
                continue
            if remaining is not None and worst > remaining:
                reasons.append(Reason(name, Verdict.rejected, "budget", (worst, remaining)))
                continue
            expected = base + out_exp * price.output_per_token
            latency = health.ttft_s + out_exp / health.output_tps
            options.append(_Option(name, price, health, worst, expected, latency))
        if not options:
            raise NoFeasibleTier(call.model, reasons)

        options.sort(key=_by_expected)
        plans = [self._single(o, deadline) for o in options]
        if self.ladders and len(options) > 1:
            for i, first in enumerate(options):
                for second in options[i + 1 :]:
                    plan = self._ladder(first, second, deadline)
                    if plan is not None:
                        plans.append(plan)
        plans.sort(key=_plan_order)

        spendable = None
        if self.pacing is not None and budget is not None and budget.remaining_calls:
            keep = self.pacing * options[0].expected * (budget.remaining_calls - 1)
            spendable = max(budget.remaining_usd - keep, options[0].expected)
        target = requirements.reliability
        max_ttft = requirements.max_ttft_s
        min_tps = requirements.min_output_tps
        chosen: _Plan | None = None
        for plan in plans:
            label = plan.label
            why = _unmet(plan, target, max_ttft, min_tps)
            if why is not None:
                reasons.append(Reason(label, Verdict.rejected, why[0], why[1]))
            elif chosen is not None:
                reasons.append(
                    Reason(
                        label,
                        Verdict.costlier,
                        "costlier",
                        (plan.expected_cost, chosen.expected_cost),
                    )
                )
            elif spendable is not None and plan.expected_cost > spendable:
                reasons.append(
                    Reason(label, Verdict.rejected, "pacing", (plan.expected_cost, spendable))
                )
            else:
                chosen = plan
                reasons.append(
                    Reason(label, Verdict.chosen, "chosen", (plan.expected_cost, plan.p_success))
                )
        if chosen is not None:
            return _decision(chosen, reasons)
        if not requirements.best_effort:
            raise NoFeasibleTier(call.model, reasons)
        best = max(plans, key=_likeliest)
        reasons.append(
            Reason(best.label, Verdict.chosen, "best_effort", (best.expected_cost, best.p_success))
        )
        return _decision(best, reasons, best_effort=True)

    def _on_time(self, latency: float, deadline: float | None) -> float:
        if deadline is None:
            return 1.0
        if deadline <= 0:
            return 0.0
        z = (math.log(deadline) - math.log(latency)) / self.latency_sigma
        return 0.5 * (1.0 + math.erf(z / _SQRT2))

    def _single(self, o: _Option, deadline: float | None) -> _Plan:
        p = o.health.p_served * self._on_time(o.latency, deadline)
        return _Plan((o,), p, o.expected, o.worst, o.latency)

    def _ladder(self, a: _Option, b: _Option, deadline: float | None) -> _Plan | None:
        """Plan ``a`` then, after a shed, ``b`` in the time left.

        The escalated attempt is credited at most ``a``'s own chance of finishing on time: a more
        shed-prone ``a`` then never makes the ladder look better, only dearer.
        """
        shed_wait = a.health.shed_latency_s
        left = None if deadline is None else deadline - shed_wait
        if left is not None and left <= 0:
            return None
        ha, hb = a.health, b.health
        on_time_a = self._on_time(a.latency, deadline)
        p_b = hb.p_served * self._on_time(b.latency, left)
        p = ha.p_served * on_time_a + ha.refusal_rate * min(p_b, on_time_a)
        # Weights of "a serves" and "we climb to b". b's own shed rate stays out of the cost on
        # purpose: a more shed-prone b must not make the ladder look cheaper.
        w_a = ha.p_served
        w_b = ha.refusal_rate
        expected = (
            (w_a * a.expected + w_b * b.expected) / (w_a + w_b) if w_a + w_b > 0 else b.expected
        )
        latency = ha.p_served * a.latency + ha.refusal_rate * (shed_wait + b.latency)
        return _Plan((a, b), p, expected, max(a.worst, b.worst), latency)


def _by_expected(o: _Option) -> tuple[float, float]:
    return (o.expected, o.worst)


def _plan_order(p: _Plan) -> tuple[float, float, int]:
    return (p.expected_cost, -p.p_success, len(p.options))


def _likeliest(p: _Plan) -> tuple[float, float]:
    return (p.p_success, -p.expected_cost)


def _unmet(
    plan: _Plan, target: float | None, max_ttft: float | None, min_tps: float | None
) -> tuple[str, tuple[float, ...]] | None:
    if max_ttft is not None:
        first = plan.options[0]
        if first.health.ttft_s > max_ttft:
            return "ttft", (first.health.ttft_s, max_ttft)
        if len(plan.options) > 1:
            escalated = first.health.shed_latency_s + plan.options[1].health.ttft_s
            if escalated > max_ttft:
                return "ttft", (escalated, max_ttft)
    if min_tps is not None:
        for o in plan.options:
            if o.health.output_tps < min_tps:
                return "tps", (o.health.output_tps, min_tps)
    if target is not None and plan.p_success < target:
        return "reliability", (plan.p_success, target)
    return None


def _step(o: _Option) -> Step:
    spec = o.price.spec
    st = spec.body.get("service_tier")
    return Step(
        tier=spec.name,
        model=o.price.model_id,
        service_tier=st if isinstance(st, str) else None,
        worst_cost_usd=o.worst,
        expected_cost_usd=o.expected,
        body=spec.body,
        headers=spec.headers,
    )


def _decision(plan: _Plan, reasons: list[Reason], *, best_effort: bool = False) -> Decision:
    return Decision(
        plan=tuple(_step(o) for o in plan.options),
        estimated_cost_usd=plan.expected_cost,
        worst_case_cost_usd=plan.worst_cost,
        p_success=plan.p_success,
        expected_latency_s=plan.latency,
        reasons=tuple(reasons),
        best_effort=best_effort,
    )


class FixedTier:
    """A policy that always sends one tier (a baseline: always-standard, always-priority, ...).

    Falls back to ``fallback`` when the model does not offer ``tier``; never checks requirements
    beyond the tiers the model offers, and ignores signals (it is the "hard-coded" choice).
    """

    __slots__ = ("fallback", "tier")

    def __init__(self, tier: str, *, fallback: str = "standard") -> None:
        self.tier = tier
        self.fallback = fallback

    def __repr__(self) -> str:
        return f"FixedTier({self.tier!r})"

    def __call__(
        self,
        call: Call,
        requirements: Requirements,
        budget: BudgetState | None,
        prices: ModelPrices,
        signals: Signals,
        now: float,
    ) -> Decision:
        name = self.tier if self.tier in prices.tiers else self.fallback
        price = prices.tiers.get(name)
        if price is None:
            raise NoFeasibleTier(call.model, [Reason(self.tier, Verdict.rejected, "not_offered")])
        uncached = call.input_tokens - call.cached_input_tokens
        base = (
            uncached * price.input_per_token
            + call.cached_input_tokens * price.cached_input_per_token
        )
        worst = base + call.max_output_tokens * price.output_per_token
        expected = base + call.output_tokens_for_latency * price.output_per_token
        health = signals.get(name)
        latency = 0.0
        p = 1.0
        if health is not None:
            latency = health.ttft_s + call.output_tokens_for_latency / health.output_tps
            p = health.p_served
        o = _Option(name, price, health or _NO_HEALTH, worst, expected, latency)
        reason = Reason(name, Verdict.chosen, "fixed", (expected, p, repr(self)))
        return _decision(_Plan((o,), p, expected, worst, latency), [reason])


_NO_HEALTH = TierHealth(
    refusal_rate=0.0,
    error_rate=0.0,
    ttft_s=0.0,
    output_tps=1.0,
    shed_latency_s=0.0,
    state=CircuitState.closed,
    cooldown_s=0.0,
    observed=0,
)
