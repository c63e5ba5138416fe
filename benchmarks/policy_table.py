"""The policy table of issue 5: every policy on both shipped traces at three load levels.

For each shipped Azure trace (code, conversation) and each load level (speedup 1, 2 and 4: the
trace's traffic compressed, so it takes about 10%, 20% and 40% of the provider's capacity on top
of the other tenants' load), the default scenario and mix, it prints one row per policy, then
the issue's targets as measured in the same run:

- tiersel's attainment within 0.5 percentage points of the oracle's, at <= 1.15x its cost;
- tiersel at least 25% cheaper than always-priority, at equal or better attainment;
- no baseline both cheaper than tiersel and at higher attainment (tiersel on the frontier).

Nothing is fitted here: the policy is tiersel's default, `CheapestFeasible()` (each tier's
latency spread learned from its own observations, starting from the priors in the price table),
with the default signal configuration. ``--what-if-sigma S`` and ``--what-if-max-open S`` add a
row ``tiersel*``: the same policy with one fixed ``latency_sigma=S`` for every tier and/or
``SignalConfig(max_open_s=S)``, to weigh a change to those defaults (``--what-if-sigma 0.35`` is
the policy as it was before spreads were learned). ``--what-if-patience S`` makes ``tiersel*``
wait S seconds and decide again, rather than buy a dearer tier than the model's cheapest, while
the call's remaining deadline leaves room for that wait and ten times the dearer plan's expected
latency (a call with a 10 min deadline can sit out a busy spell; an interactive one cannot).
The targets above are always checked on the default row. Run:

    python benchmarks/policy_table.py [--scenario NAME] [--seed N] [--trace NAME] [--speedup K]

It replays about 130,000 calls per policy set; expect a few minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from tiersel.call import BudgetState, Call, Requirements
from tiersel.decision import Decision
from tiersel.policy import CheapestFeasible, Policy, Signals
from tiersel.pricing import ModelPrices
from tiersel.replay.baselines import POLICY_NAMES, Contender
from tiersel.replay.harness import DEFAULT_SCENARIO, Comparison, compare
from tiersel.replay.metrics import PolicyMetrics, dominates
from tiersel.replay.traces import SHIPPED_TRACES, shipped_trace
from tiersel.signals import SignalConfig

ORACLE_GAP_PP = 0.5
ORACLE_COST_RATIO = 1.15
PRIORITY_SAVING = 0.25


class Patient:
    """What-if: wait ``hold_s`` and decide again instead of buying a dearer tier than the
    cheapest, while the remaining deadline leaves that wait plus ten times the dearer plan's
    expected latency."""

    def __init__(self, inner: Policy, hold_s: float) -> None:
        self.inner = inner
        self.hold_s = hold_s

    def __call__(
        self,
        call: Call,
        requirements: Requirements,
        budget: BudgetState | None,
        prices: ModelPrices,
        signals: Signals,
        now: float,
    ) -> Decision:
        d = self.inner(call, requirements, budget, prices, signals, now)
        cheapest = next(iter(prices.tiers))
        deadline = requirements.deadline_s
        if d.tier == cheapest or d.wait_s or deadline is None:
            return d
        if deadline < self.hold_s + 10 * d.expected_latency_s:
            return d
        return dataclasses.replace(d, wait_s=self.hold_s)


def row(m: PolicyMetrics) -> str:
    mix = " ".join(f"{t} {s:.0%}" for t, s in m.tier_mix.items())
    per = f"{m.cost_per_success_usd:.6f}" if m.cost_per_success_usd is not None else "-"
    p50 = f"{m.latency_p50_s:.2f}" if m.latency_p50_s is not None else "-"
    p99 = f"{m.latency_p99_s:.2f}" if m.latency_p99_s is not None else "-"
    return (
        f"  {m.policy:<16}{m.attainment:>10.2%}{m.cost_usd:>10.3f}{per:>12}{p50:>7}{p99:>7}"
        f"{m.attempts_per_call:>9.2f}  {mix}"
    )


def targets(c: Comparison) -> list[str]:
    t, o, p = c.metrics("tiersel"), c.metrics("oracle"), c.metrics("always-priority")
    gap = 100 * (o.attainment - t.attainment)
    ratio = t.cost_usd / o.cost_usd
    saving = 1 - t.cost_usd / p.cost_usd
    baselines = [m for m in c.policies if m.policy not in ("tiersel", "tiersel*", "oracle")]
    dominating = [m.policy for m in baselines if dominates(m, t)]
    beaters = [
        m.policy for m in baselines if m.cost_usd < t.cost_usd and m.attainment > t.attainment
    ]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    return [
        f"  oracle gap {gap:+.2f} pp (<= {ORACLE_GAP_PP}: {verdict(gap <= ORACLE_GAP_PP)}),"
        f" cost {ratio:.3f}x the oracle's (<= {ORACLE_COST_RATIO}:"
        f" {verdict(ratio <= ORACLE_COST_RATIO)})",
        f"  {saving:.1%} cheaper than always-priority at {t.attainment:.2%} against"
        f" {p.attainment:.2%} (>= {PRIORITY_SAVING:.0%} at equal or better attainment:"
        f" {verdict(saving >= PRIORITY_SAVING and t.attainment >= p.attainment)});"
        f" the oracle's saving {1 - o.cost_usd / p.cost_usd:.1%}",
        f"  baselines cheaper and at higher attainment: {', '.join(beaters) or 'none'}"
        f" ({verdict(not beaters)}); at least as cheap and as good:"
        f" {', '.join(dominating) or 'none'}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default=DEFAULT_SCENARIO)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", action="append", choices=list(SHIPPED_TRACES))
    parser.add_argument("--speedup", action="append", type=float)
    parser.add_argument("--what-if-sigma", type=float, metavar="S")
    parser.add_argument("--what-if-max-open", type=float, metavar="S")
    parser.add_argument("--what-if-patience", type=float, metavar="S")
    args = parser.parse_args()
    policies: list[str | Contender] = list(POLICY_NAMES)
    what_if = (args.what_if_sigma, args.what_if_max_open, args.what_if_patience)
    if any(x is not None for x in what_if):
        config = (
            SignalConfig(max_open_s=args.what_if_max_open)
            if args.what_if_max_open is not None
            else None
        )
        variant: Policy = CheapestFeasible(latency_sigma=args.what_if_sigma)
        if args.what_if_patience is not None:
            variant = Patient(variant, args.what_if_patience)
        policies.append(Contender("tiersel*", variant, signal_config=config))
    for name in args.trace or list(SHIPPED_TRACES):
        trace = shipped_trace(name)
        for speedup in args.speedup or (1.0, 2.0, 4.0):
            started = time.perf_counter()
            c = compare(
                trace, scenario=args.scenario, speedup=speedup, seed=args.seed, policies=policies
            )
            wall = time.perf_counter() - started
            print(
                f"{name}, speedup {speedup:g} ({c.calls} calls over {c.duration_s:.0f} s),"
                f" scenario {c.scenario}, {c.replicas} replicas, seed {c.seed}"
                f" [{wall:.0f} s to replay]"
            )
            print(
                f"  {'policy':<16}{'attain.':>10}{'cost $':>10}{'$/met call':>12}{'p50 s':>7}"
                f"{'p99 s':>7}{'attempts':>9}  tier mix"
            )
            for m in c.policies:
                print(row(m))
            for line in targets(c):
                print(line)
            print(flush=True)


if __name__ == "__main__":
    main()
