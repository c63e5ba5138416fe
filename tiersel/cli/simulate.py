"""``tiersel simulate``: replay a request trace against the simulated provider, per policy."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from tiersel.cli.common import add_pricing_args, fail, pricing_from
from tiersel.errors import TierselError
from tiersel.replay.baselines import POLICY_NAMES
from tiersel.replay.capacity import DEFAULT_TENANT_SHARE
from tiersel.replay.harness import DEFAULT_MODEL, DEFAULT_SCENARIO, Comparison, compare
from tiersel.replay.metrics import PolicyMetrics
from tiersel.replay.mix import DEFAULT_MIX, Mix, parse_mix
from tiersel.replay.sources import GENERATED_TRACES, load_trace
from tiersel.replay.traces import SHIPPED_TRACES, check_limits


def add_parser(subs: Any, help: str) -> None:
    p = subs.add_parser(
        "simulate",
        help=help,
        description=(
            "Replay a request trace (the Azure LLM trace CSV of 2023 or 2024, BurstGPT's CSV,"
            " or timestamp_s,input_tokens,output_tokens[,deadline_s][,reliability]"
            "[,prefix,prefix_tokens]) against the"
            " simulated provider on a virtual clock, through each policy, and print one row per"
            " policy."
        ),
    )
    _add_workload_args(p)
    _add_provider_args(p.add_argument_group("the simulated provider"))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_pricing_args(p)
    p.set_defaults(run=run)


def _add_workload_args(p: Any) -> None:
    """What is replayed: the trace, its requirements, and the policies it goes through."""
    p.add_argument(
        "--trace",
        required=True,
        metavar="FILE",
        help="a trace CSV, a shipped trace ("
        + ", ".join(SHIPPED_TRACES)
        + ") or a generated one ("
        + ", ".join(GENERATED_TRACES)
        + ": long multi-turn conversations in bursts; calls carrying retrieved context)",
    )
    p.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="NAME",
        help=f"a policy to replay (repeatable, or comma-separated; default all: "
        f"{', '.join(POLICY_NAMES)})",
    )
    p.add_argument(
        "--mix",
        default=None,
        metavar="SPEC",
        help="requirements for calls without them: a preset (default, interactive, background,"
        " none) or [NAME=]SHARE:DEADLINE[:RELIABILITY],... (default: "
        f"{DEFAULT_MIX})",
    )
    p.add_argument(
        "--speedup",
        type=float,
        default=1.0,
        metavar="K",
        help="compress inter-arrival times K times, to create load (default 1)",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"the model every call asks for (default {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--limit", type=int, metavar="N", help="replay only the first N requests of the trace"
    )


def _add_provider_args(g: Any) -> None:
    """The provider the trace is replayed against: its load, its size and its draws."""
    g.add_argument(
        "--scenario",
        default=DEFAULT_SCENARIO,
        metavar="NAME|PATH",
        help=f"the provider's load scenario, by name or YAML path (default {DEFAULT_SCENARIO})",
    )
    g.add_argument(
        "--tenant-share",
        type=float,
        default=DEFAULT_TENANT_SHARE,
        metavar="F",
        help="size the provider so that the trace at speedup 1 takes about this share of its"
        f" capacity (default {DEFAULT_TENANT_SHARE:g}; 0 keeps the scenario's own pool sizes)",
    )
    g.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")


def _policies(items: Sequence[str]) -> list[str]:
    names = [n.strip() for item in items for n in item.split(",") if n.strip()]
    for name in names:
        if name not in POLICY_NAMES:
            raise ValueError(
                f"--policy {name!r}: unknown policy (known: {', '.join(POLICY_NAMES)})"
            )
    return list(dict.fromkeys(names)) or list(POLICY_NAMES)


def run(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.speedup) and args.speedup > 0):
        return fail(f"--speedup {args.speedup!r}: must be a number > 0")
    if args.limit is not None and args.limit < 1:
        return fail(f"--limit {args.limit}: must be >= 1")
    if not (math.isfinite(args.tenant_share) and 0 <= args.tenant_share <= 1):
        return fail(f"--tenant-share {args.tenant_share!r}: must be between 0 and 1")
    try:
        policies = _policies(args.policy)
        mix: Mix = parse_mix(args.mix) if args.mix is not None else DEFAULT_MIX
        pricing = pricing_from(args)
        prices, implied = pricing.resolve(args.model)
        if implied is not None:
            return fail(
                f"--model {args.model}: that id names {prices.name}'s {implied} tier, but the"
                f" policies compared choose the tiers: give the model, --model {prices.name}"
            )
        trace = load_trace(args.trace)
        if args.limit is not None:
            trace = trace.head(args.limit)
        check_limits(trace, prices, args.trace)
        result = compare(
            trace,
            policies=policies,
            scenario=args.scenario,
            mix=mix,
            speedup=args.speedup,
            seed=args.seed,
            model=args.model,
            pricing=pricing,
            tenant_share=args.tenant_share,
        )
    except (TierselError, ValueError) as exc:
        return fail(str(exc))
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print(result)
    return 0


def _print(result: Comparison) -> None:
    print(
        f"trace {result.trace} ({result.calls} calls over {result.duration_s:.0f} s,"
        f" speedup {result.speedup:g}), scenario {result.scenario}, model {result.model},"
        f" seed {result.seed}"
    )
    print(
        f"provider pools of {result.replicas} replica(s), sized so the trace at speedup 1 takes"
        f" about {result.tenant_share:.0%} of their capacity"
    )
    print(f"mix {result.mix}")
    print()
    header = (
        f"{'policy':<16} {'attainment':>10} {'cost USD':>10} {'USD/met call':>12}"
        f" {'p50 s':>7} {'p99 s':>7} {'attempts':>8} {'ECE':>6}  tier mix"
    )
    print(header)
    for m in result.policies:
        print(_row(m))


def _row(m: PolicyMetrics) -> str:
    per = f"{m.cost_per_success_usd:.6f}" if m.cost_per_success_usd is not None else "-"
    p50 = f"{m.latency_p50_s:.2f}" if m.latency_p50_s is not None else "-"
    p99 = f"{m.latency_p99_s:.2f}" if m.latency_p99_s is not None else "-"
    mix = " ".join(f"{t} {share:.0%}" for t, share in m.tier_mix.items()) or "-"
    # How far the policy's P(success) was from what happened ("-": it predicts nothing).
    ece = f"{m.calibration.ece:.4f}" if m.calibration is not None else "-"
    return (
        f"{m.policy:<16} {m.attainment:>10.2%} {m.cost_usd:>10.4f} {per:>12}"
        f" {p50:>7} {p99:>7} {m.attempts_per_call:>8.2f} {ece:>6}  {mix}"
    )
