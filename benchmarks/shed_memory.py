"""How long does overload last? Measures, in the bundled simulator, how a tier's next answer
leans towards its last one: the figures behind `TierPriors.memory_after_shed` / `memory_s`.

    python benchmarks/shed_memory.py [--trace azure-conv] [--scenario busy --scenario peak]

Replays the trace through always-<tier> (so every attempt goes to that tier) and, over every
pair of attempts on the tier, prints the share shed of those sent 0-2, 2-8, 8-32 and 32-64 s
after a shed, and after a success, beside the tier's base shed rate. With no memory, all of
them would equal the base rate.
"""

from __future__ import annotations

import argparse
import bisect

from tiersel.replay.harness import compare
from tiersel.replay.sources import load_trace

WINDOWS = ((0.0, 2.0), (2.0, 8.0), (8.0, 32.0), (32.0, 64.0))


def leaning(times: list[float], shed: list[bool], after_shed: bool) -> list[str]:
    """The share shed of attempts sent within each window after a shed (or a success)."""
    out = []
    for lo, hi in WINDOWS:
        pairs = hits = 0
        for i, was_shed in enumerate(shed):
            if was_shed is not after_shed:
                continue
            j = bisect.bisect_left(times, times[i] + lo)
            k = bisect.bisect_left(times, times[i] + hi)
            pairs += k - j
            hits += sum(shed[j:k])
        out.append(f"{hits / pairs:6.3f}" if pairs else "     -")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--scenario", action="append", default=None)
    ap.add_argument("--tier", action="append", default=None)
    args = ap.parse_args()
    trace = load_trace(args.trace)
    windows = "  ".join(f"{lo:g}-{hi:g}s".rjust(6) for lo, hi in WINDOWS)
    print(f"trace {args.trace}: share shed of the attempts sent in each window after ...")
    print(f"{'tier':10} {'scenario':9} {'attempts':>8} {'base':>6}  after   {windows}")
    for tier in args.tier or ["standard", "priority", "fast"]:
        for scenario in args.scenario or ["busy", "peak"]:
            run = compare(trace, policies=[f"always-{tier}"], scenario=scenario).results[0]
            attempts = sorted((a for a in run.attempts if a.tier == tier), key=lambda a: a.sent_s)
            times = [a.sent_s for a in attempts]
            shed = [a.outcome in ("shed", "rate_limited") for a in attempts]
            base = sum(shed) / len(shed) if shed else 0.0
            head = f"{tier:10} {scenario:9} {len(shed):8d} {base:6.3f}"
            print(f"{head}  a shed  " + "  ".join(leaning(times, shed, True)))
            print(f"{'':37}  an ok   " + "  ".join(leaning(times, shed, False)))


if __name__ == "__main__":
    main()
