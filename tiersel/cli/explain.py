"""``tiersel explain``: what the policy would choose for a call, and why."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from tiersel.call import Call, Requirements
from tiersel.cli.common import add_pricing_args, check_tiers, fail, invalid_flag, pricing_from
from tiersel.clock import FakeClock
from tiersel.decision import Decision
from tiersel.dialects import check_token_count
from tiersel.errors import ConflictingRequirements, NoFeasibleTier, TierselError
from tiersel.pricing import ModelPrices
from tiersel.selector import Selector
from tiersel.signals import Observation, Outcome, SignalKey

EXIT_INFEASIBLE = 3
_WHAT_IF_SAMPLES = 100


def add_parser(subs: Any, help: str) -> None:
    p = subs.add_parser("explain", help=help)
    p.add_argument("--model", required=True, help="model: short name, full id or router id")
    p.add_argument("--input-tokens", type=int, required=True, metavar="N")
    p.add_argument("--cached-input-tokens", type=int, default=0, metavar="N")
    p.add_argument(
        "--max-input-tokens",
        type=int,
        metavar="N",
        help="the most prompt tokens the provider could bill, which the worst case counts"
        " (default: --input-tokens; a request sent through tiersel counts one token a UTF-8"
        " byte of what its chat template could render)",
    )
    p.add_argument("--max-tokens", type=int, required=True, metavar="N", help="output token cap")
    p.add_argument("--expected-output-tokens", type=int, metavar="N")
    p.add_argument("--deadline", type=float, metavar="S", help="end-to-end deadline, seconds")
    p.add_argument("--max-ttft", type=float, metavar="S", help="max time to first token, seconds")
    p.add_argument("--min-tps", type=float, metavar="X", help="min output tokens per second")
    p.add_argument("--reliability", type=float, metavar="P", help="P(success within deadline)")
    p.add_argument("--max-cost", type=float, metavar="USD", help="max cost of the call")
    p.add_argument("--tiers", metavar="T1,T2", help="allowed tiers, comma-separated")
    p.add_argument("--best-effort", action="store_true", help="choose anyway when nothing fits")
    p.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="the most attempts the call may make (default: the selector's, 4)",
    )
    p.add_argument(
        "--hedge",
        action="store_true",
        help="allow a hedge: a second tier races a first attempt slow to answer",
    )
    p.add_argument(
        "--no-watch",
        dest="watch",
        action="store_false",
        help="plan for a call whose attempts cannot be watched (tiersel.watch): no first attempt"
        " is cut for its pace (a call not streamed through the HTTP doors)",
    )
    p.add_argument(
        "--shed-rate",
        action="append",
        default=[],
        metavar="TIER=RATE",
        help="what-if: a tier's shed rate, fed to its signals as observations at that rate,"
        " which blend with the tier's priors and lean towards the last answer, as real ones do"
        " (so a plan may show another rate; repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_pricing_args(p)
    p.set_defaults(run=run)


def _shed_rates(items: list[str], tiers: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--shed-rate {item!r}: expected TIER=RATE")
        try:
            rate = float(value)
        except ValueError:
            raise ValueError(f"--shed-rate {item!r}: {value!r} is not a number") from None
        if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
            raise ValueError(f"--shed-rate {item!r}: the rate must be between 0 and 1")
        if name not in tiers:
            raise ValueError(f"--shed-rate {item!r}: unknown tier {name!r}")
        out[name] = rate
    return out


def run(args: argparse.Namespace) -> int:
    try:
        pricing = pricing_from(args)
        prices = pricing.model(args.model)
        rates = _shed_rates(args.shed_rate, pricing.tiers)
        call = _call(args)
        _within_limits(args, prices)
        req = _requirements(args)
        check_tiers("--tiers", req.tiers, pricing)
    except ValidationError as exc:
        return fail(invalid_flag(exc))
    except (TierselError, ValueError) as exc:
        return fail(str(exc))
    clock = FakeClock()
    selector = Selector(pricing=pricing, clock=clock, api_key="")
    for tier, rate in rates.items():
        _observe(selector, prices.name, tier, rate, clock.now())
    try:
        decision = selector.decide(call, req)
    except ConflictingRequirements as exc:  # --tiers that leave out the tier the id names
        return fail(str(exc))
    except NoFeasibleTier as exc:
        return _infeasible(args, prices.name, exc)
    if args.json:
        return _print_json({"feasible": True, **decision.to_dict()}, 0)
    _print(decision)
    print(
        f"worst case counts:  {call.input_tokens_bound} input tokens"
        f" ({'--max-input-tokens' if args.max_input_tokens is not None else '--input-tokens'})"
        f" and all {call.max_output_tokens} output tokens (--max-tokens)"
    )
    return 0


def _call(args: argparse.Namespace) -> Call:
    """The call the flags describe; `ValueError` naming a token count out of its range."""
    for option, count in (
        ("--input-tokens", args.input_tokens),
        ("--cached-input-tokens", args.cached_input_tokens),
        ("--max-input-tokens", args.max_input_tokens),
        ("--max-tokens", args.max_tokens),
        ("--expected-output-tokens", args.expected_output_tokens),
    ):
        if count is not None:
            check_token_count(option, count)
    if args.max_input_tokens is not None and args.max_input_tokens < args.input_tokens:
        raise ValueError(
            f"--max-input-tokens ({args.max_input_tokens}) cannot be below --input-tokens"
            f" ({args.input_tokens})"
        )
    return Call(
        model=args.model,  # a router id names its tier: decide pins it
        max_input_tokens=args.max_input_tokens,
        input_tokens=args.input_tokens,
        cached_input_tokens=args.cached_input_tokens,
        max_output_tokens=args.max_tokens,
        expected_output_tokens=args.expected_output_tokens,
    )


def _within_limits(args: argparse.Namespace, prices: ModelPrices) -> None:
    """`ValueError` naming a token count above what the model takes or writes, as the price
    table gives its limits: the provider would refuse such a call, so there is nothing to
    price."""
    counts = (
        ("--max-tokens", args.max_tokens, True),
        ("--input-tokens", args.input_tokens, False),
        ("--max-input-tokens", args.max_input_tokens, False),
    )
    for option, count, output in counts:
        allowed = prices.beyond(count, output=output)
        if allowed is not None:
            raise ValueError(f"{option} {count:,} is above the model's limit: {allowed}")


def _requirements(args: argparse.Namespace) -> Requirements:
    return Requirements(
        deadline_s=args.deadline,
        max_ttft_s=args.max_ttft,
        min_output_tps=args.min_tps,
        reliability=args.reliability,
        tiers=args.tiers,
        max_cost_usd=args.max_cost,
        best_effort=args.best_effort,
        max_attempts=args.max_attempts,
        hedge=args.hedge,
        watch=args.watch,
    )


def _infeasible(args: argparse.Namespace, model: str, exc: NoFeasibleTier) -> int:
    """Why no tier can serve the call, as JSON or lines; the exit code that says so."""
    if args.json:
        doc = {"feasible": False, "model": model, "reasons": [r.to_dict() for r in exc.reasons]}
        return _print_json(doc, EXIT_INFEASIBLE)
    print(f"no tier of {model} meets the requirements:")
    for r in exc.reasons:
        print(f"  {r}")
    return EXIT_INFEASIBLE


def _print_json(doc: dict[str, Any], code: int) -> int:
    """Print ``doc`` as strict JSON (never ``NaN`` or ``Infinity``, which are not JSON)."""
    try:
        text = json.dumps(doc, indent=2, allow_nan=False)
    except ValueError:
        where = _not_finite(doc) or "a value"
        return fail(
            f"--json: {where} is not a finite number; the call or the price table is out of range"
        )
    sys.stdout.write(text + "\n")
    return code


def _not_finite(value: Any, path: str = "") -> str | None:
    """The key path of the first NaN or infinity in ``value`` (None if there is none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "the value"
    if isinstance(value, dict):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _not_finite(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def _observe(selector: Selector, model: str, tier: str, rate: float, now: float) -> None:
    """Feed the what-if rate as evenly spread observations, so no streak is longer than needed.

    The last one is the likelier answer at that rate (a shed from 0.5 on): the policy leans
    towards a tier's last answer, and a what-if should not tilt that lean on its own.
    """
    key = SignalKey(selector.engine.endpoint, model, tier)
    n = _WHAT_IF_SAMPLES
    sheds = round(rate * n)
    spread = [(i + 1) * sheds // n > i * sheds // n for i in range(n)]  # ends with a shed
    if rate < 0.5:
        spread.reverse()
    for shed in spread:
        selector.signals.record(key, Observation(Outcome.shed if shed else Outcome.ok), now)


def _print(d: Decision) -> None:
    print(f"tier:               {d.tier}")
    print(f"model:              {d.model}")
    print(f"service_tier:       {d.service_tier or '(none)'}")
    print(f"plan:               {d.label}")
    print(
        f"estimated cost:     ${d.estimated_cost_usd:.6f} (worst case ${d.worst_case_cost_usd:.6f})"
    )
    print(f"P(success):         {d.p_success:.4f}")
    print(f"expected latency:   {d.expected_latency_s:.2f} s")
    if d.best_effort:
        print("best effort:        yes (the requirements could not all be met)")
    hedge = d.plan[-1].hedge_s
    watch = d.plan[0].watch_s
    if watch is not None:
        print(
            f"schedule (attempt 1 is watched: its pace is checked {watch:.2f} s after it is sent,"
            " and it is cut if it would end too late; attempt 2 follows then, and each after it"
            " if every one before was refused or failed fast):"
        )
    elif hedge is not None:
        print(
            f"schedule (a hedge: attempt 2 is sent {hedge:.2f} s after attempt 1 unless that has"
            " answered, at once if it fails fast; the loser is cancelled):"
        )
    else:
        print("schedule (each attempt is made if every one before it was refused or failed fast):")
    print("  #  tier         start    time left  P(reached)  P(succeeds)  P(success by then)")
    by_then = 0.0
    for i, s in enumerate(d.plan, 1):
        by_then += s.p_ok
        left = f"{s.budget_s:7.2f} s" if s.budget_s is not None else "        -"
        print(
            f"  {i}  {s.tier:<11} {s.start_s:5.2f} s  {left}  {s.p_reach:10.4f}"
            f"  {s.p_ok:11.4f}  {min(1.0, by_then):18.4f}"
        )
    print("reasons:")
    for r in d.reasons:
        print(f"  {r}")
