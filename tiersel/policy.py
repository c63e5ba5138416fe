"""Policies: pure functions from (call, requirements, budget, prices, signals, now) to a `Decision`.

The default, `CheapestFeasible`, weighs every tier the model offers and every two-step ladder
(a cheaper tier first, a dearer one after a shed) and picks the plan with the lowest expected cost
that meets the requirements. A custom policy is any callable with the same signature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from operator import attrgetter
from typing import Any, NamedTuple, Protocol

from tiersel.call import BudgetState, Call, Requirements
from tiersel.cost import tier_cost
from tiersel.decision import Decision, Reason, Step, Verdict, new_decision
from tiersel.errors import NoFeasibleTier
from tiersel.pricing import ModelPrices, TierPrice
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
_erf = math.erf
_log = math.log
_OPEN = CircuitState.open
_REJECTED = Verdict.rejected
_COSTLIER = Verdict.costlier
_CHOSEN = Verdict.chosen


def _reason(fields: tuple[str, Verdict, str, tuple[Any, ...]]) -> Reason:
    return tuple.__new__(Reason, fields)


class _Option(NamedTuple):
    """One tier's numbers for this call."""

    tier: str
    price: TierPrice
    health: TierHealth
    worst: float
    expected: float
    latency: float  # median end-to-end seconds if served
    on_time: float  # P(finishing within the deadline | served)
    served: float  # P(served: neither shed nor failed)
    wait: float  # seconds to wait for the tier's cooldown to end before sending
    scale: float  # 1 / (sigma * sqrt 2) of the latency's log-normal spread (0: no deadline)


class _Plan(NamedTuple):
    options: tuple[_Option, ...]
    p_success: float
    expected_cost: float
    worst_cost: float
    latency: float
    label: str


# tuple.__new__ skips NamedTuple's Python-level __new__: creation is most of the decision's cost.
_new = tuple.__new__


class CheapestFeasible:
    """The default policy: the cheapest plan that meets the requirements.

    - ``latency_sigma``: the spread (log-standard-deviation) of the end-to-end latency around
      its estimate, which turns a deadline into a probability of finishing on time. None (the
      default): each tier's own, from the spreads of its observed TTFT and output rate
      (`TierHealth.ttft_spread`, `TierHealth.tps_spread`; the tier's prior until observed); a
      number: that spread for every tier, whatever was observed.
    - ``ladders``: also weigh two-step plans (cheap tier first, escalate after a shed).
    - ``pacing``: when the budget knows how many calls remain, refuse a plan that would leave
      less than ``pacing`` times what the calls still to come need at this call's cheapest tier
      (None: no pacing). Money then goes to calls whose requirements demand a dearer tier only
      while the rest can still be served; a best-effort call, too, gets the likeliest plan within
      what pacing leaves.

    >>> from tiersel import Selector, Call, Requirements
    >>> d = Selector().decide(Call(model="kimi-k3", input_tokens=800, max_output_tokens=200))
    >>> d.tier
    <Tier.standard: 'standard'>
    """

    __slots__ = ("ladders", "latency_sigma", "pacing")

    def __init__(
        self,
        *,
        latency_sigma: float | None = None,
        ladders: bool = True,
        pacing: float | None = None,
    ) -> None:
        if latency_sigma is not None and not latency_sigma > 0:
            raise ValueError(f"latency_sigma must be > 0 or None, got {latency_sigma!r}")
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

    # The decision path: keep it cheap (benchmarks/decide.py). Object creation dominates here,
    # so reasons and steps are built with tuple.__new__ and enum members are module constants.
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
        add = reasons.append
        allowed = requirements.tiers
        cap = requirements.max_cost_usd
        remaining = budget.remaining_usd if budget is not None else None
        deadline = requirements.deadline_s
        if deadline is not None and deadline <= 0:
            raise NoFeasibleTier(call.model, [_reason(("*", _REJECTED, "no_time", ()))])
        log_deadline = math.log(deadline) if deadline is not None else 0.0
        sigma = self.latency_sigma
        fixed_scale = 1.0 / (sigma * _SQRT2) if sigma is not None else 0.0

        uncached = call.input_tokens - call.cached_input_tokens
        cached = call.cached_input_tokens
        # The worst case counts the prompt at its bound (what the provider can bill at most).
        bound = call.max_input_tokens
        extra_in = bound - call.input_tokens if bound is not None else 0
        out_max = call.max_output_tokens
        out_exp = call.expected_output_tokens
        if out_exp is None:
            out_exp = out_max
        tiers = prices.tiers
        if not tiers:
            raise NoFeasibleTier(call.model, [_reason(("*", _REJECTED, "unpriced", ()))])
        options: list[_Option] = []
        if allowed is not None:
            for name in allowed:
                if name not in tiers:
                    add(_reason((name, _REJECTED, "not_offered", ())))
        for name, price in tiers.items():
            if allowed is not None:
                if name not in allowed:
                    add(_reason((name, _REJECTED, "not_allowed", ())))
                    continue
            elif price.spec.opt_in:
                add(_reason((name, _REJECTED, "opt_in", ())))
                continue
            health = signals.get(name)
            if health is None:
                continue
            # cost.tier_cost's arithmetic, inlined: this loop is the decision's hot path.
            base = uncached * price.input_per_token + cached * price.cached_input_per_token
            worst = base + extra_in * price.input_per_token + out_max * price.output_per_token
            # Cost first: a tier the call cannot afford is rejected for that, not for a cooldown
            # it would be pointless to wait out.
            if cap is not None and worst > cap:
                add(_reason((name, _REJECTED, "cost_cap", (worst, cap))))
                continue
            if remaining is not None and worst > remaining:
                add(_reason((name, _REJECTED, "budget", (worst, remaining))))
                continue
            wait = 0.0
            ttft = health.ttft_s
            decode = out_exp / health.output_tps
            if health.state is _OPEN:
                # A call with a deadline may wait out a cooldown if it leaves the tier its
                # expected time to finish; a wait that ends too late is no plan.
                if deadline is None or health.cooldown_s + ttft + decode >= deadline:
                    add(_reason((name, _REJECTED, "cooldown", (health.cooldown_s,))))
                    continue
                wait = health.cooldown_s
            expected = base + out_exp * price.output_per_token
            latency = wait + ttft + decode
            if deadline is None:
                on_time = 1.0
                scale = 0.0
            else:
                # The latency's log-spread: its parts' log-spreads weighted by their shares of
                # it, added as if TTFT and output rate stray together (a loaded tier is slow in
                # both), which bounds it from above. A cooldown wait is known: it only dilutes it.
                scale = fixed_scale or latency / (
                    (ttft * health.ttft_spread + decode * health.tps_spread) * _SQRT2
                )
                on_time = 0.5 * (1.0 + _erf((log_deadline - _log(latency)) * scale))
            served = 1.0 - health.refusal_rate - health.error_rate
            if served < 0.0:
                served = 0.0
            options.append(
                _new(
                    _Option,
                    (name, price, health, worst, expected, latency, on_time, served, wait, scale),
                )
            )
        if not options:
            raise NoFeasibleTier(call.model, reasons)

        options.sort(key=_BY_EXPECTED)
        plans = [
            _new(_Plan, ((o,), o.served * o.on_time, o.expected, o.worst, o.latency, o.tier))
            for o in options
        ]
        target = requirements.reliability
        max_ttft = requirements.max_ttft_s
        min_tps = requirements.min_output_tps
        # A ladder costs at least its first step alone, so it can only win where that step alone
        # falls short on reliability; and it must start cheaper than the best single tier.
        if self.ladders and len(options) > 1 and (target is not None or requirements.best_effort):
            # Best effort under pacing may fall back to the likeliest of all plans: weigh them all.
            every_ladder = requirements.best_effort and self.pacing is not None
            best_single = None
            for plan in plans:
                if _unmet(plan, target, max_ttft, min_tps) is None:
                    best_single = plan.expected_cost
                    break
            for i, first in enumerate(options):
                if best_single is not None and first.expected >= best_single:
                    break
                if target is not None and first.served * first.on_time >= target:
                    continue
                for second in options[i + 1 :]:
                    ladder = self._ladder(first, second, deadline)
                    if ladder is not None:
                        plans.append(ladder)
                        # Dearer second steps only make this ladder dearer: stop at one that meets
                        # the requirements.
                        if not every_ladder and _unmet(ladder, target, max_ttft, min_tps) is None:
                            break
            plans.sort(key=_BY_COST)  # stable: singles before ladders on ties

        spendable = None
        if self.pacing is not None and budget is not None and budget.remaining_calls:
            keep = self.pacing * options[0].expected * (budget.remaining_calls - 1)
            spendable = max(budget.remaining_usd - keep, options[0].expected)
        chosen: _Plan | None = None
        for plan in plans:
            if chosen is not None:
                add(
                    _reason(
                        (
                            plan.label,
                            _COSTLIER,
                            "costlier",
                            (plan.expected_cost, chosen.expected_cost),
                        )
                    )
                )
                continue
            why = _unmet(plan, target, max_ttft, min_tps)
            if why is not None:
                add(_reason((plan.label, _REJECTED, why[0], why[1])))
            elif spendable is not None and plan.expected_cost > spendable:
                add(_reason((plan.label, _REJECTED, "pacing", (plan.expected_cost, spendable))))
            else:
                chosen = plan
                wait = plan.options[0].wait
                values = (plan.expected_cost, plan.p_success, wait)
                add(
                    _reason(
                        (plan.label, _CHOSEN, "chosen_after_wait" if wait else "chosen", values)
                    )
                )
        if chosen is not None:
            return _decision(chosen, reasons)
        if not requirements.best_effort:
            raise NoFeasibleTier(call.model, reasons)
        # Best effort stays within what pacing leaves (the cheapest plan always is).
        within = plans if spendable is None else [p for p in plans if p.expected_cost <= spendable]
        best = max(within or plans, key=_likeliest)
        add(_reason((best.label, _CHOSEN, "best_effort", (best.expected_cost, best.p_success))))
        return _decision(best, reasons, best_effort=True)

    def _ladder(self, a: _Option, b: _Option, deadline: float | None) -> _Plan | None:
        """Plan ``a`` then, after a shed, ``b`` in the time left.

        The escalated attempt is credited at most ``a``'s own chance of finishing on time: a more
        shed-prone ``a`` then never makes the ladder look better, only dearer.
        """
        if a.wait:
            return None  # waiting out a cooldown is for a tier trusted on its own, not a ladder
        ha = a.health
        shed_wait = ha.shed_latency_s
        if deadline is None:
            on_time_b = 1.0
        elif deadline - shed_wait <= 0:
            return None
        else:
            on_time_b = 0.5 * (1.0 + _erf((_log((deadline - shed_wait) / b.latency)) * b.scale))
        p = a.served * a.on_time + ha.refusal_rate * min(b.served * on_time_b, a.on_time)
        # Weights of "a serves" and "we climb to b". b's own shed rate stays out of the cost on
        # purpose: a more shed-prone b must not make the ladder look cheaper.
        w_a = a.served
        w_b = ha.refusal_rate
        w = w_a + w_b
        expected = (w_a * a.expected + w_b * b.expected) / w if w > 0 else b.expected
        latency = w_a * a.latency + w_b * (shed_wait + b.latency)
        worst = a.worst if a.worst > b.worst else b.worst
        return _new(_Plan, ((a, b), p, expected, worst, latency, a.tier + ">" + b.tier))


_BY_EXPECTED = attrgetter("expected", "worst")
_BY_COST = attrgetter("expected_cost")


def _likeliest(p: _Plan) -> tuple[float, float]:
    return (p.p_success, -p.expected_cost)


def _unmet(
    plan: _Plan, target: float | None, max_ttft: float | None, min_tps: float | None
) -> tuple[str, tuple[float, ...]] | None:
    if max_ttft is not None:
        first = plan.options[0]
        ttft = first.wait + first.health.ttft_s
        if ttft > max_ttft:
            return "ttft", (ttft, max_ttft)
        if len(plan.options) > 1:
            escalated = first.wait + first.health.shed_latency_s + plan.options[1].health.ttft_s
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
    tier, model, service_tier, body, headers, base_url = o.price.step_fields
    return _new(Step, (tier, model, service_tier, o.worst, o.expected, body, headers, base_url))


def _decision(plan: _Plan, reasons: list[Reason], *, best_effort: bool = False) -> Decision:
    options = plan.options  # one tier, or a two-step ladder
    first = _step(options[0])
    return new_decision(
        (first,) if len(options) == 1 else (first, _step(options[1])),
        plan.expected_cost,
        plan.worst_cost,
        plan.p_success,
        plan.latency,
        tuple(reasons),
        best_effort,
        plan.options[0].wait,
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
        base = tier_cost(price, call.input_tokens, call.cached_input_tokens, 0)
        bound = tier_cost(price, call.input_tokens_bound, call.cached_input_tokens, 0)
        worst = bound + call.max_output_tokens * price.output_per_token
        expected = base + call.output_tokens_for_latency * price.output_per_token
        health = signals.get(name)
        latency = 0.0
        p = 1.0
        if health is not None:
            latency = health.ttft_s + call.output_tokens_for_latency / health.output_tps
            p = health.p_served
        o = _Option(name, price, health or _NO_HEALTH, worst, expected, latency, 1.0, p, 0.0, 0.0)
        reason = Reason(name, Verdict.chosen, "fixed", (expected, p, repr(self)))
        return _decision(_Plan((o,), p, expected, worst, latency, name), [reason])


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
