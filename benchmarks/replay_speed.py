"""How fast the trace replay runs: 20,000 calls through each policy on the virtual clock.

Target (issue 5): replaying 20,000 calls through one policy takes under 10 s on this machine.

The calls are the shipped conversation trace (13,927 calls) followed by its first 6,073 calls
again, shifted to start where it ended; default scenario, mix and provider sizing. Besides the
wall time it prints the process's CPU time and the machine's load average, since on a shared
machine the wall time also counts the time other processes held the cores. Run:

    python benchmarks/replay_speed.py [--calls N] [--policy NAME ...]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

from tiersel.replay.baselines import POLICY_NAMES, contender
from tiersel.replay.capacity import sized
from tiersel.replay.harness import DEFAULT_SCENARIO, Workload, replay
from tiersel.replay.mix import DEFAULT_MIX
from tiersel.replay.traces import Trace, shipped_trace
from tiersel.sim import load_scenario

TARGET_S = 10.0


def calls(n: int) -> Trace:
    base = shipped_trace("azure-conv")
    out = list(base.requests)
    offset = 0.0
    while len(out) < n:
        offset += base.duration_s + 1.0
        out.extend(replace(r, arrival_s=r.arrival_s + offset) for r in base.requests)
    return Trace(f"azure-conv x{n}", tuple(out[:n]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--policy", action="append", choices=POLICY_NAMES)
    args = parser.parse_args()
    trace = calls(args.calls)
    scenario, replicas = sized(load_scenario(DEFAULT_SCENARIO), shipped_trace("azure-conv"))
    started = time.perf_counter()
    work = Workload.build(trace, DEFAULT_MIX, seed=0)
    build_s = time.perf_counter() - started
    print(
        f"{len(work)} calls over {trace.duration_s:.0f} s of traffic; scenario {scenario.name},"
        f" {replicas} replicas; workload built in {build_s:.2f} s"
    )
    print(
        f"{'policy':<16} {'wall s':>7} {'CPU s':>7} {'calls/s':>8} {'attempts':>9}"
        f" {'sim s/wall s':>13} {'load avg':>9}  target (wall)"
    )
    for name in args.policy or POLICY_NAMES:
        cpu = time.process_time()
        result = replay(work, contender(name), scenario=scenario)
        cpu = time.process_time() - cpu
        wall = result.metrics.replay_wall_s
        verdict = "met" if wall < TARGET_S else "MISSED"
        print(
            f"{name:<16} {wall:>7.2f} {cpu:>7.2f} {len(work) / wall:>8.0f}"
            f" {len(result.attempts):>9} {trace.duration_s / wall:>13.0f}"
            f" {os.getloadavg()[0]:>9.2f}  < {TARGET_S:g} s: {verdict}"
        )


if __name__ == "__main__":
    main()
