"""What a replay measures: one record per call, and the figures per policy made from them.

- attainment: the share of calls that succeeded within their deadline (a call with no deadline
  counts when it succeeded at all);
- cost: USD charged for every served attempt (sheds are not billed);
- cost per successful call: total cost over the calls that met their requirements, so money
  spent on calls that finished too late counts against the policy;
- latency: arrival to completion of served calls, p50 and p99 (nearest rank);
- attempts per call, sheds, and the tier mix (the share of served calls per tier).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AttemptEvent",
    "Calibration",
    "CalibrationBin",
    "CallRecord",
    "PolicyMetrics",
    "TimeBin",
    "calibration",
    "dominates",
    "pareto_front",
    "percentile",
    "summarize",
    "timeline",
]


@dataclass(frozen=True, slots=True)
class CallRecord:
    """How one call of the trace went under one policy.

    ``latency_s`` runs from arrival to the end of the serving attempt (None when nothing served
    it); ``tier`` is the tier that served it; ``detail`` says why it failed, when it did;
    ``predicted`` is the P(success) of the call's first decision (None for a call that was never
    sent, or a policy that predicts nothing).
    """

    index: int
    arrival_s: float
    klass: str
    deadline_s: float | None
    ok: bool
    met: bool
    latency_s: float | None
    cost_usd: float
    attempts: int
    sheds: int
    tier: str | None
    detail: str = ""
    predicted: float | None = None  # the policy's P(success) for it, when the policy says one


@dataclass(frozen=True, slots=True)
class AttemptEvent:
    """One attempt as the provider saw it: when it was sent, to which tier, and how it ended."""

    sent_s: float
    tier: str
    outcome: str
    call: int


@dataclass(frozen=True, slots=True)
class PolicyMetrics:
    """The figures of one policy over one replay."""

    policy: str
    calls: int
    met: int
    succeeded: int
    attainment: float
    cost_usd: float
    cost_per_success_usd: float | None
    latency_p50_s: float | None
    latency_p99_s: float | None
    attempts_per_call: float
    shed_attempts: int
    tier_mix: Mapping[str, float]
    attainment_by_class: Mapping[str, float]
    replay_wall_s: float
    calibration: Calibration | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values; NaN never appears (None instead)."""
        return {
            "policy": self.policy,
            "calls": self.calls,
            "met": self.met,
            "succeeded": self.succeeded,
            "attainment": self.attainment,
            "cost_usd": self.cost_usd,
            "cost_per_success_usd": self.cost_per_success_usd,
            "latency_p50_s": self.latency_p50_s,
            "latency_p99_s": self.latency_p99_s,
            "attempts_per_call": self.attempts_per_call,
            "shed_attempts": self.shed_attempts,
            "tier_mix": dict(self.tier_mix),
            "attainment_by_class": dict(self.attainment_by_class),
            "replay_wall_s": self.replay_wall_s,
            "calibration": self.calibration.to_dict() if self.calibration else None,
        }


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ascending values; None if there are none.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5), percentile([1.0, 2.0, 3.0, 4.0], 0.99)
    (2.0, 4.0)
    """
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(policy: str, records: Sequence[CallRecord], replay_wall_s: float) -> PolicyMetrics:
    """The figures of one policy from its call records."""
    calls = len(records)
    met = sum(1 for r in records if r.met)
    served = [r for r in records if r.ok]
    cost = math.fsum(r.cost_usd for r in records)
    latencies = sorted(r.latency_s for r in served if r.latency_s is not None)
    tiers = Counter(r.tier for r in served if r.tier is not None)
    by_class: dict[str, list[int]] = {}
    for r in records:
        tally = by_class.setdefault(r.klass, [0, 0])
        tally[0] += r.met
        tally[1] += 1
    return PolicyMetrics(
        policy=policy,
        calls=calls,
        met=met,
        succeeded=len(served),
        attainment=met / calls if calls else 0.0,
        cost_usd=cost,
        cost_per_success_usd=cost / met if met else None,
        latency_p50_s=percentile(latencies, 0.50),
        latency_p99_s=percentile(latencies, 0.99),
        attempts_per_call=sum(r.attempts for r in records) / calls if calls else 0.0,
        shed_attempts=sum(r.sheds for r in records),
        tier_mix={t: n / len(served) for t, n in sorted(tiers.items())},
        attainment_by_class={k: m / n for k, (m, n) in sorted(by_class.items())},
        replay_wall_s=replay_wall_s,
        calibration=calibration(records),
    )


# Bin edges for calibration: predictions crowd near 1, so the bins narrow there.
CALIBRATION_EDGES = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)


@dataclass(frozen=True, slots=True)
class CalibrationBin:
    """Calls whose predicted P(success) fell in (``lo``, ``hi``] (the first bin includes 0):
    their mean prediction and the share that succeeded within their deadline."""

    lo: float
    hi: float
    calls: int
    predicted: float
    observed: float


@dataclass(frozen=True, slots=True)
class Calibration:
    """How well a policy's P(success) predicted what happened: the expected calibration error
    (the calls-weighted mean of |predicted - observed| over the bins) and the bins."""

    ece: float
    bins: tuple[CalibrationBin, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ece": self.ece,
            "bins": [
                {
                    "lo": b.lo,
                    "hi": b.hi,
                    "calls": b.calls,
                    "predicted": b.predicted,
                    "observed": b.observed,
                }
                for b in self.bins
            ],
        }


def calibration(records: Sequence[CallRecord]) -> Calibration | None:
    """The calibration of the records' predictions against their outcomes (met or not); None
    when no record carries a prediction. Empty bins are left out.

    >>> recs = [CallRecord(i, 0.0, "c", 1.0, True, i % 10 != 0, 0.5, 0.0, 1, 0, "standard",
    ...                    predicted=0.95) for i in range(100)]
    >>> c = calibration(recs)
    >>> round(c.ece, 6), [(b.lo, b.hi, b.calls, round(b.observed, 2)) for b in c.bins]
    (0.05, [(0.9, 0.95, 100, 0.9)])
    """
    edges = CALIBRATION_EDGES
    sums = [[0, 0.0, 0] for _ in edges[1:]]  # calls, sum of predictions, successes
    for r in records:
        if r.predicted is None:
            continue
        i = max(0, bisect.bisect_left(edges, r.predicted) - 1)
        tally = sums[min(i, len(sums) - 1)]
        tally[0] += 1
        tally[1] += r.predicted
        tally[2] += r.met
    total = sum(int(t[0]) for t in sums)
    if not total:
        return None
    bins = tuple(
        CalibrationBin(edges[i], edges[i + 1], int(n), p / n, m / n)
        for i, (n, p, m) in enumerate(sums)
        if n
    )
    ece = sum(b.calls * abs(b.predicted - b.observed) for b in bins) / total
    return Calibration(ece, bins)


def dominates(a: PolicyMetrics, b: PolicyMetrics) -> bool:
    """Whether ``a`` is at least as cheap and as good as ``b``, and strictly better in one."""
    no_worse = a.cost_usd <= b.cost_usd and a.attainment >= b.attainment
    return no_worse and (a.cost_usd < b.cost_usd or a.attainment > b.attainment)


def pareto_front(metrics: Sequence[PolicyMetrics]) -> list[PolicyMetrics]:
    """The policies no other policy dominates (cost against attainment), cheapest first."""
    front = [m for m in metrics if not any(dominates(o, m) for o in metrics)]
    return sorted(front, key=lambda m: (m.cost_usd, -m.attainment))


@dataclass(frozen=True, slots=True)
class TimeBin:
    """What happened in one stretch of virtual time.

    ``arrivals`` counts calls arriving in the bin, ``served`` the tier that served each of them
    (by arrival time), ``sent`` and ``shed`` the attempts sent in the bin, by tier.
    """

    start_s: float
    arrivals: int
    served: Mapping[str, int]
    sent: Mapping[str, int]
    shed: Mapping[str, int]

    def shed_rate(self, tier: str) -> float | None:
        """The share of the bin's attempts on ``tier`` that were refused (None if none sent)."""
        sent = self.sent.get(tier, 0)
        return self.shed.get(tier, 0) / sent if sent else None


def timeline(
    records: Sequence[CallRecord], attempts: Sequence[AttemptEvent], bin_s: float
) -> list[TimeBin]:
    """Calls and attempts in consecutive bins of ``bin_s`` seconds, from time 0."""
    if not bin_s > 0:
        raise ValueError(f"bin_s must be > 0, got {bin_s!r}")
    end = max([r.arrival_s for r in records] + [a.sent_s for a in attempts], default=0.0)
    n = int(end // bin_s) + 1
    arrivals = [0] * n
    served: list[Counter[str]] = [Counter() for _ in range(n)]
    sent: list[Counter[str]] = [Counter() for _ in range(n)]
    shed: list[Counter[str]] = [Counter() for _ in range(n)]
    for r in records:
        i = int(r.arrival_s // bin_s)
        arrivals[i] += 1
        if r.tier is not None:
            served[i][r.tier] += 1
    for a in attempts:
        i = int(a.sent_s // bin_s)
        sent[i][a.tier] += 1
        if a.outcome in ("shed", "rate_limited"):
            shed[i][a.tier] += 1
    return [
        TimeBin(i * bin_s, arrivals[i], dict(served[i]), dict(sent[i]), dict(shed[i]))
        for i in range(n)
    ]
