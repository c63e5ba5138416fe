"""Cooldowns a call may wait out: which tiers a wait could bring back, and the shortest wait
worth making."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from tiersel.call import Call, Requirements
from tiersel.errors import NoFeasibleTier
from tiersel.pricing import ModelPrices
from tiersel.signals import (
    CircuitState,
    TierHealth,
)


def as_open(health: TierHealth, wait: float) -> TierHealth:
    return replace(health, state=CircuitState.open, cooldown_s=wait)


# Rejections that no wait can lift: waiting out such a tier's cooldown would be for nothing.
_BARRED = frozenset({"cost_cap", "budget", "not_allowed", "not_offered", "opt_in"})


def waitable(signals: Mapping[str, TierHealth], exc: NoFeasibleTier) -> Mapping[str, TierHealth]:
    """The tiers whose rejection a wait might lift (those not rejected for cost or by name)."""
    barred = {r.plan for r in exc.reasons if r.code in _BARRED}
    if not barred:
        return signals
    return {name: h for name, h in signals.items() if name not in barred}


def cooling(signals: Mapping[str, TierHealth]) -> bool:
    return any(h.state is CircuitState.open for h in signals.values())


def shortest_cooldown(
    signals: Mapping[str, TierHealth],
    req: Requirements,
    call: Call,
    max_wait: Callable[[], float | None] | None = None,
    prices: ModelPrices | None = None,
) -> float | None:
    """The shortest cooldown worth waiting out: with a deadline, one that leaves the tier its
    expected time to serve the call, its prompt's prefill included where ``prices`` are given
    (a wait that ends too late to finish is no wait at all)."""
    deadline = req.deadline_s
    out = call.output_tokens_for_latency
    uncached = call.uncached_input_tokens

    def serves_in_time(name: str, h: TierHealth) -> bool:
        if deadline is None:
            return True
        tier = prices.tiers.get(name) if prices is not None else None
        prefill = tier.spec.priors.prefill_s(uncached) if tier is not None else 0.0
        return h.cooldown_s + h.ttft_s + prefill + out / h.output_tps < deadline

    waits = [
        h.cooldown_s
        for name, h in signals.items()
        if h.state is CircuitState.open
        and (req.tiers is None or name in req.tiers)
        and serves_in_time(name, h)
    ]
    if not waits:
        return None
    wait = min(waits) + 1e-3
    if deadline is not None and wait >= deadline:
        return None
    if req.deadline_s is None and max_wait is not None:
        bound = max_wait()
        if bound is not None and wait > bound:
            return None
    return wait
