"""What the policy returns: a plan of tiers, its estimates, and the reasons behind it."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, NamedTuple

__all__ = ["Decision", "Reason", "ReasonCode", "Step", "Verdict"]


class Verdict(str, enum.Enum):
    chosen = "chosen"
    rejected = "rejected"
    costlier = "costlier"  # not needed: a cheaper plan meets the requirements


class ReasonCode(str, enum.Enum):
    """Why a tier or a schedule was chosen or rejected: the stable, machine-readable part of a
    `Reason` (members compare equal to their names, ``ReasonCode.budget == "budget"``)."""

    # candidates: a tier is weighed for this call, or why not
    not_offered = "not_offered"
    not_allowed = "not_allowed"
    opt_in = "opt_in"
    unpriced = "unpriced"
    cost_cap = "cost_cap"
    budget = "budget"
    cooldown = "cooldown"
    tps = "tps"
    ttft = "ttft"
    no_time = "no_time"
    # feasibility: a priced schedule against the requirements
    reliability = "reliability"
    pacing = "pacing"
    # choice
    chosen = "chosen"
    chosen_after_wait = "chosen_after_wait"
    hedged = "hedged"
    watched = "watched"
    small_saving = "small_saving"
    best_effort = "best_effort"
    likeliest = "likeliest"
    costlier = "costlier"
    fixed = "fixed"

    def __str__(self) -> str:
        return self.value


_TEMPLATES: Mapping[str, str] = {
    "not_offered": "the model does not offer this tier",
    "not_allowed": "not among the allowed tiers",
    "opt_in": "opt-in: chosen only when the allowed tiers name it",
    "cooldown": "avoided: cooling down for {0:.1f} s more",
    "no_time": "no time left before the deadline",
    "unpriced": "the price table has no price for this model",
    # A limit is shown to its own precision: a cap of $0.0000001 must not read "$0.000000".
    "cost_cap": "worst-case cost ${0:.6f} exceeds max_cost_usd ${1:.6g}",
    "budget": "worst-case cost ${0:.6f} exceeds the remaining budget ${1:.6g}",
    "pacing": "expected cost ${0:.6f} exceeds ${1:.6f}, what pacing leaves for this call",
    "ttft": "expected time to first token {0:.2f} s exceeds max_ttft_s {1:.2f}",
    "tps": "expected {0:.0f} output tokens/s is below min_output_tps {1:.0f}",
    "reliability": "P(success within deadline) {0:.4f} is below the target {1:.4f}",
    "chosen": "cheapest plan that meets the requirements: expected ${0:.6f}, P(success) {1:.4f}",
    "chosen_after_wait": (
        "cheapest plan that meets the requirements, its first attempt after {2:.1f} s (a"
        " cooldown, or a spell of sheds, to wait out): expected ${0:.6f}, P(success) {1:.4f}"
    ),
    "hedged": (
        "cheapest plan that meets the requirements, a hedge: {3} is sent {2:.2f} s after the"
        " first attempt unless that has answered, and the loser is cancelled: expected"
        " ${0:.6f}, P(success) {1:.4f}"
    ),
    "watched": (
        "cheapest plan that meets the requirements, a watched first attempt: its pace is checked"
        " {2:.2f} s after it is sent, and it is cut for {3} if it would end too late: expected"
        " ${0:.6f}, P(success) {1:.4f}"
    ),
    "small_saving": (
        "a hedge would save only {0:.2%} over the chosen ladder; it must save {1:.0%} or more"
    ),
    "best_effort": (
        "best effort (requirements not met): the likeliest plan within the cost limits,"
        " P(success) {1:.4f}, expected ${0:.6f}"
    ),
    "likeliest": (
        "no reliability asked and no plan reaches {2:.2f}: the likeliest plan within the cost"
        " limits, P(success) {1:.4f}, expected ${0:.6f}"
    ),
    "costlier": (
        "not needed: the chosen plan meets the requirements at an expected ${1:.6f}, less than"
        " ${0:.6f} for this one"
    ),
    "fixed": "chosen by policy {2}: expected ${0:.6f}, P(success) {1:.4f}",
}


class Reason(NamedTuple):
    """Why one plan (a tier, or a ladder such as ``standard>priority``) was chosen or rejected.

    ``code`` is stable and machine-readable; ``str(reason)`` is the sentence for people.
    """

    plan: str
    verdict: Verdict
    code: str  # a `ReasonCode` (a custom policy may use its own)
    values: tuple[Any, ...] = ()

    @property
    def message(self) -> str:
        template = _TEMPLATES.get(self.code, self.code)
        if self.code == "reliability" and len(self.values) == 2:
            p, target = self.values
            if f"{p:.4f}" == f"{target:.4f}":  # "1.0000 is below the target 1.0000": say more
                template = "P(success within deadline) {0!r} is below the target {1!r}"
        return template.format(*self.values)

    def __str__(self) -> str:
        return f"{self.plan}: {self.verdict.value}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "verdict": self.verdict.value,
            "code": str(self.code),
            "message": self.message,
        }


class Step(NamedTuple):
    """One attempt of a plan: the tier, the model id to send, ``service_tier`` if any, its costs
    for this call, the body fields and headers that request the tier, and its place in the
    schedule.

    ``start_s`` is when the attempt is sent, in seconds after the decision (after the failures
    before it, their backoff and any cooldown), ``budget_s`` the time it has before the deadline
    (None: no deadline), ``p_reach`` the probability that the call gets to it (every attempt
    before it refused or failed fast), ``p_ok`` the probability that the call gets to it and it
    succeeds in time. A plan's ``p_ok`` sum to its ``p_success``.

    ``hedge_s`` (None but in a hedge's second attempt, see `tiersel.hedge`): the attempt races
    the one before it, sent this long after it unless that one has answered (or at once if it
    fails fast); the loser is cancelled. ``p_reach`` is then the probability it is sent.

    ``watch_s`` (None but in a watched attempt, see `tiersel.watch`): the attempt's pace is
    checked this long after it is sent, and it is cut if it would end too late; the next step
    follows then.
    """

    tier: str
    model: str
    service_tier: str | None
    worst_cost_usd: float
    expected_cost_usd: float
    body: Mapping[str, Any] = MappingProxyType({})
    headers: Mapping[str, str] = MappingProxyType({})
    base_url: str | None = None  # the scheme and host the tier is served from, if its own
    start_s: float = 0.0
    budget_s: float | None = None
    p_reach: float = 1.0
    p_ok: float = 0.0
    hedge_s: float | None = None
    watch_s: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer for one call.

    ``tier``, ``model`` and ``service_tier`` say what to send first; ``plan`` is the schedule:
    every attempt the call will make while attempts before it are refused or fail fast, each with
    its start and its probability (see `Step`, and `tiersel.schedule` for the model). Costs are
    in USD: ``estimated_cost_usd`` is what the call is expected to be billed once served,
    ``worst_case_cost_usd`` the most one attempt can cost (every output token at the dearest
    step's price; attempts run one at a time), or for a hedge both its attempts' worst cases.
    ``p_success`` is the probability that some attempt succeeds within the deadline. ``wait_s``
    > 0 means: wait that long before the first attempt (a tier's cooldown, a Retry-After, or a
    spell of sheds the schedule waits out), then send.
    """

    plan: tuple[Step, ...]
    estimated_cost_usd: float
    worst_case_cost_usd: float
    p_success: float
    expected_latency_s: float
    reasons: tuple[Reason, ...]
    best_effort: bool = False
    wait_s: float = 0.0

    @property
    def tier(self) -> str:
        return self.plan[0].tier

    @property
    def model(self) -> str:
        return self.plan[0].model

    @property
    def service_tier(self) -> str | None:
        return self.plan[0].service_tier

    @property
    def label(self) -> str:
        """The schedule's tiers, repeats counted: ``standard*3>priority``; a hedge
        ``standard~fast``; a watched first attempt ``standard^>fast``."""
        if len(self.plan) == 2 and self.plan[1].hedge_s is not None:
            return f"{self.plan[0].tier}~{self.plan[1].tier}"
        if self.plan[0].watch_s is not None:
            return watched_label([s.tier for s in self.plan])
        return run_label([s.tier for s in self.plan])

    def explain(self) -> str:
        """The reasons, one per line."""
        return "\n".join(str(r) for r in self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "tier": str(self.tier),
            "model": self.model,
            "service_tier": self.service_tier,
            "estimated_cost_usd": self.estimated_cost_usd,
            "worst_case_cost_usd": self.worst_case_cost_usd,
            "p_success": self.p_success,
            "expected_latency_s": self.expected_latency_s,
            "best_effort": self.best_effort,
            "wait_s": self.wait_s,
            "plan": [
                {
                    "tier": str(s.tier),
                    "model": s.model,
                    "service_tier": s.service_tier,
                    "worst_cost_usd": s.worst_cost_usd,
                    "expected_cost_usd": s.expected_cost_usd,
                    "start_s": s.start_s,
                    "budget_s": s.budget_s,
                    "p_reach": s.p_reach,
                    "p_ok": s.p_ok,
                    "hedge_s": s.hedge_s,
                    "watch_s": s.watch_s,
                }
                for s in self.plan
            ],
            "reasons": [r.to_dict() for r in self.reasons],
        }


def run_label(tiers: list[str]) -> str:
    """Tiers in order, a run of one tier written once with its count: ``standard*2>fast``."""
    parts: list[str] = []
    run = 0
    for i, tier in enumerate(tiers):
        run += 1
        if i + 1 == len(tiers) or tiers[i + 1] != tier:
            parts.append(tier if run == 1 else f"{tier}*{run}")
            run = 0
    return ">".join(parts)


def watched_label(tiers: list[str]) -> str:
    """A schedule whose first attempt is watched (`tiersel.watch`): ``standard^>fast*2``."""
    rest = run_label(tiers[1:])
    return f"{tiers[0]}^>{rest}" if rest else f"{tiers[0]}^"


_SETTERS = tuple(Decision.__dict__[f.name].__set__ for f in fields(Decision))
_new_object = object.__new__


def new_decision(
    plan: tuple[Step, ...],
    estimated_cost_usd: float,
    worst_case_cost_usd: float,
    p_success: float,
    expected_latency_s: float,
    reasons: tuple[Reason, ...],
    best_effort: bool,
    wait_s: float,
) -> Decision:
    """``Decision(...)`` for the policy's hot path: the same object, built without the frozen
    dataclass's per-field ``object.__setattr__`` calls (its slots are set directly)."""
    d: Decision = _new_object(Decision)
    p, e, w, s, lat, r, b, ws = _SETTERS
    p(d, plan)
    e(d, estimated_cost_usd)
    w(d, worst_case_cost_usd)
    s(d, p_success)
    lat(d, expected_latency_s)
    r(d, reasons)
    b(d, best_effort)
    ws(d, wait_s)
    return d
