"""The policies a replay compares, each a plain policy object with the core's signature.

A `Contender` pairs a policy with the retry settings and signal configuration of the `Selector`
that runs it, since "always standard, with bounded retries and backoff" is as much about the
attempt loop (`tiersel.engine.call_flow`, shared by every contender) as about the choice.

- ``tiersel``: the default policy, `CheapestFeasible`, learning from the signals it observes.
- ``always-standard`` / ``always-priority`` / ``always-fast``: one tier, whatever happens; up to
  four attempts with exponential backoff (the core's attempt loop).
- ``cooldown``: standard until a 503, then everything on priority for a fixed cooldown, then
  standard again (the common gateway behaviour). The cooldown is the core's circuit: it opens
  after one failure for `COOLDOWN_S`.
- ``retry-up``: standard first; after a shed, that call is retried once on priority.
- ``oracle``: sends each call to the tier the replay's oracle chose for it
  (`tiersel.replay.oracle`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from tiersel.call import BudgetState, Call, Requirements
from tiersel.decision import Decision, Reason, Verdict
from tiersel.errors import NoFeasibleTier
from tiersel.policy import CheapestFeasible, FixedTier, Policy, Signals
from tiersel.pricing import ModelPrices
from tiersel.signals import CircuitState, SignalConfig

__all__ = [
    "COOLDOWN_S",
    "POLICY_NAMES",
    "Contender",
    "Cooldown",
    "Ladder",
    "contender",
]

COOLDOWN_S = 30.0
"""How long the ``cooldown`` baseline keeps off standard after a 503."""

RETRY_ATTEMPTS = 4
"""Attempts per call, unless a contender says otherwise (the `Selector` default)."""

RETRY_BACKOFF_S = 0.2
"""Backoff before the same tier is tried again, doubling each time (the `Selector` default)."""


@dataclass(frozen=True, slots=True)
class Contender:
    """A named policy and the attempt settings it runs with.

    ``signal_config`` None means the core's defaults; ``oracle`` marks the contender whose calls
    are pinned, one by one, to the tier the oracle chose.
    """

    name: str
    policy: Policy
    max_attempts: int = RETRY_ATTEMPTS
    backoff_s: float = RETRY_BACKOFF_S
    signal_config: SignalConfig | None = None
    oracle: bool = False


class Ladder:
    """A fixed ladder: the first tier of ``order`` the model offers and the requirements allow,
    then the next ones, to climb after a failure.

    With no ``order``, the requirements' own ``tiers`` in their order (the oracle pins each call
    this way), else the model's tiers. Requirements are otherwise ignored (no deadline or
    reliability check). The core's attempt loop climbs a plan's steps after a shed, so
    ``Ladder(("standard", "priority"))`` run with two attempts is "standard, then once on
    priority"; a ladder of one tier is `FixedTier`'s schedule, that tier for every attempt.

    >>> from tiersel.pricing import load_pricing
    >>> prices = load_pricing().model("kimi-k3")
    >>> call = Call(model="kimi-k3", input_tokens=100, max_output_tokens=10)
    >>> Ladder(("standard", "priority"))(call, Requirements(), None, prices, {}, 0.0).label
    'standard>priority'
    >>> Ladder(("standard", "priority"))(
    ...     call, Requirements(tiers=("priority",)), None, prices, {}, 0.0
    ... ).label
    'priority*4'
    """

    __slots__ = ("_fixed", "order")

    def __init__(self, order: Sequence[str] | None = None) -> None:
        self.order = tuple(order) if order is not None else None
        self._fixed: dict[str, FixedTier] = {}

    def __repr__(self) -> str:
        return f"Ladder({self.order!r})"

    def __call__(
        self,
        call: Call,
        requirements: Requirements,
        budget: BudgetState | None,
        prices: ModelPrices,
        signals: Signals,
        now: float,
    ) -> Decision:
        allowed = requirements.tiers
        order = self.order if self.order is not None else allowed or prices.default_tiers
        steps: list[Decision] = []
        for name in order:
            if name in prices.tiers and (allowed is None or name in allowed):
                fixed = self._fixed.get(name)
                if fixed is None:
                    fixed = self._fixed[name] = FixedTier(name)
                steps.append(fixed(call, requirements, budget, prices, signals, now))
        if not steps:
            reasons = [Reason(name, Verdict.rejected, "not_allowed") for name in order]
            raise NoFeasibleTier(call.model, reasons)
        first = steps[0]
        if len(steps) == 1:
            return first
        return replace(
            first,
            plan=tuple(d.plan[0] for d in steps),
            worst_case_cost_usd=max(d.worst_case_cost_usd for d in steps),
        )


class Cooldown:
    """``primary`` until it fails, then ``fallback`` for a fixed cooldown, then ``primary`` again.

    Run it with a `SignalConfig` that opens the circuit after one failure for the cooldown
    (`contender` does): the policy notes the cooldown's end when it first sees the circuit open,
    and keeps to it even if a request already in flight then succeeds on ``primary`` (a gateway's
    cooldown timer, not a circuit a success closes). The one piece of state it keeps.
    """

    __slots__ = ("_fallback", "_primary", "_until", "fallback", "primary")

    def __init__(self, primary: str = "standard", fallback: str = "priority") -> None:
        self.primary = primary
        self.fallback = fallback
        self._primary = FixedTier(primary)
        self._fallback = FixedTier(fallback)
        self._until = float("-inf")

    def __repr__(self) -> str:
        return f"Cooldown({self.primary!r}, {self.fallback!r})"

    def __call__(
        self,
        call: Call,
        requirements: Requirements,
        budget: BudgetState | None,
        prices: ModelPrices,
        signals: Signals,
        now: float,
    ) -> Decision:
        health = signals.get(self.primary)
        if health is not None and health.state is not CircuitState.closed:
            self._until = max(self._until, now + health.cooldown_s)
        allowed = requirements.tiers is None or self.primary in requirements.tiers
        if allowed and now >= self._until:
            return self._primary(call, requirements, budget, prices, signals, now)
        return self._fallback(call, requirements, budget, prices, signals, now)


def _tiersel() -> Contender:
    return Contender("tiersel", CheapestFeasible())


def _fixed(tier: str) -> Callable[[], Contender]:
    return lambda: Contender(f"always-{tier}", FixedTier(tier))


def _cooldown() -> Contender:
    config = SignalConfig(
        open_after=1, open_s=COOLDOWN_S, max_open_s=COOLDOWN_S, probe_interval_s=0.0
    )
    return Contender("cooldown", Cooldown(), signal_config=config)


def _retry_up() -> Contender:
    return Contender("retry-up", Ladder(("standard", "priority")), max_attempts=2)


def _oracle() -> Contender:
    return Contender("oracle", Ladder(), max_attempts=1, oracle=True)


_FACTORIES: dict[str, Callable[[], Contender]] = {
    "tiersel": _tiersel,
    "always-standard": _fixed("standard"),
    "always-priority": _fixed("priority"),
    "always-fast": _fixed("fast"),
    "cooldown": _cooldown,
    "retry-up": _retry_up,
    "oracle": _oracle,
}

POLICY_NAMES: tuple[str, ...] = tuple(_FACTORIES)
"""The policies `contender` knows, in the order a replay lists them."""


def contender(name: str) -> Contender:
    """A fresh contender by name (see `POLICY_NAMES`); `ValueError` for an unknown name."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown policy {name!r} (known: {', '.join(POLICY_NAMES)})")
    return factory()
