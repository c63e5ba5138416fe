"""What one call's flow keeps while it runs: its host's settings (`FlowHost`), its fixed
context, its progress and the schedule it follows."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tiersel.call import BudgetState, Call, Requirements
from tiersel.decision import Decision, Reason, Step
from tiersel.dialects import (
    Dialect,
)
from tiersel.engine.results import AttemptRecord, Reply
from tiersel.pricing import ModelPrices, Pricing
from tiersel.prompts import Prompt
from tiersel.signals import (
    SignalConfig,
    SignalKey,
    TierHealth,
    TierStats,
)


class FlowHost(Protocol):
    """What a call's flow reads from whoever runs it (the `Engine`): settings, the price
    table, the policy and the signals' reading. The flow does no I/O: stores, clock and sends
    are the shell's, reached through the effects it yields."""

    pricing: Pricing
    policy: Callable[..., Decision]
    signal_config: SignalConfig
    endpoint: str
    max_attempts: int
    backoff_s: float
    unbounded_output: str
    budget_wait_s: float
    on_attempt: Callable[[AttemptRecord], None] | None
    carry_on: bool

    @property
    def ledger_enabled(self) -> bool: ...

    @property
    def charges_doubt(self) -> bool: ...

    def signal_keys(self, model: str) -> tuple[SignalKey, ...]: ...

    def read_keys(
        self, prices: ModelPrices, requirements: Requirements
    ) -> tuple[SignalKey, ...]: ...

    def assess(
        self, key: SignalKey, stats: TierStats, now: float, *, probing: bool = False
    ) -> TierHealth: ...


@dataclass(slots=True)
class Progress:
    call: Call  # the call (its output cap sized to the budget's share, if so)
    cap: int | None = None  # the output cap tiersel sets (see output_cap)
    decisions: list[Decision] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    attempts: int = 0
    last_reply: Reply | None = None
    last_tier: str | None = None
    waited: bool = False
    admitted: bool = False  # the policy has planned the call once (see flow._carried_on)
    backed_off: bool = False  # a backoff was waited out, late: the next plan adds none
    detail: str = ""
    money_waited: float = 0.0  # seconds spent waiting for reservations in flight to settle
    money_polls: int = 0
    sunk: float = 0.0  # what earlier attempts were billed and charged (`CallResult.sunk_usd`)
    cuts: int = 0  # how many attempts were cut for their pace
    refused: tuple[Reason, ...] = ()  # the budget's refusal that started those waits
    signals: Mapping[str, TierHealth] | None = None  # the tiers' health at the last decision
    budget: BudgetState | None = None  # the budget at the last decision


@dataclass(slots=True)
class Following:
    """The schedule a call is following: its decision, the next attempt, when it was decided."""

    decision: Decision
    index: int
    decided_at: float
    backoff: bool = False  # it starts after a backoff (planned again when late: no second one)


@dataclass(slots=True)
class CallContext:
    """What one call's flow keeps fixed: its host, request, call, limits and start."""

    sel: FlowHost
    body: Mapping[str, Any]
    dialect: Dialect
    requirements: Requirements
    call_id: str
    max_wait: Callable[[], float | None] | None
    prices: ModelPrices
    keys: tuple[SignalKey, ...]  # every tier's
    read: tuple[SignalKey, ...]  # those whose health a decision reads (`FlowHost.read_keys`)
    most: int  # attempts allowed
    ceiling: int | None  # the output cap before the budget's share sizes it
    sized: bool  # the output cap is the call's share of the money left
    start: float = 0.0
    prompt: Prompt | None = None  # its prompt's prefixes, for the provider's cache
