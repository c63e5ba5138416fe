"""``tiersel demo``: a mixed workload through the openai SDK, with tiersel and without.

Against the simulator (default; no API key, no network) or, with ``--live``, the real API.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any

from tiersel.cli.common import fail

EXIT_OK = 0
EXIT_USAGE = 2
_SIM_API_KEY = "sk-simulator"  # the simulator accepts any key; this one is no secret


def add_parser(subs: Any, help: str) -> None:
    p = subs.add_parser(
        "demo",
        help=help,
        description=(
            "Send a mixed workload (interactive calls with tight deadlines, background calls with"
            " loose ones) through the openai SDK three ways: with tiersel choosing tiers, always"
            " standard, always priority. By default against the simulator under the 'peak'"
            " scenario, started on loopback (no API key, no network)."
        ),
    )
    p.add_argument(
        "--calls",
        type=int,
        metavar="N",
        help="calls per arm (default 80 against the simulator, 12 with --live)",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=0.02,
        metavar="X",
        help="simulated time runs 1/X times faster (default 0.02: 50x)",
    )
    p.add_argument("--seed", type=int, default=7, help="the simulator's seed (default 7)")
    p.add_argument("--scenario", default="peak", help="simulator scenario (default peak)")
    p.add_argument(
        "--start",
        type=float,
        default=240.0,
        metavar="S",
        help="scenario time each arm starts at, seconds (default 240: the last minute of the"
        " peak, which in 'peak' runs from 90 s to 300 s, then its end and the calm after)",
    )
    p.add_argument(
        "--span",
        type=float,
        default=300.0,
        metavar="S",
        help="simulated seconds the workload's calls are spread over (default 300)",
    )
    p.add_argument("--model", default="kimi-k3", help="model (default kimi-k3)")
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="also draw the tiers bought over the run beside the load and the refusals, as PNG"
        " (needs matplotlib)",
    )
    p.add_argument(
        "--live",
        action="store_true",
        help="send the workload, spread over 30 s, to the real Fireworks API with"
        " $FIREWORKS_API_KEY (costs a little money)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.calls is None:
        args.calls = 12 if args.live else 80
    if args.calls < 1:
        return fail(f"--calls must be >= 1, got {args.calls}")
    if not (math.isfinite(args.time_scale) and args.time_scale > 0):
        return fail(f"--time-scale must be a number > 0, got {args.time_scale}")
    try:
        import openai  # noqa: F401  (checked here so the error says what to install)
    except ModuleNotFoundError:
        return fail("the demo needs the openai package: pip install openai")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ModuleNotFoundError:
            return fail("--plot needs matplotlib: pip install matplotlib")
        folder = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(folder):
            return fail(f"--plot {args.plot}: no such folder {folder}")
        if os.path.isdir(args.plot) or not args.plot.lower().endswith(".png"):
            return fail(f"--plot {args.plot}: name a .png file")
    if args.live:
        return _live(args)
    return _simulated(args)


def _say(line: str) -> None:
    print(line, flush=True)


def _simulated(args: argparse.Namespace) -> int:
    from tiersel.clock import ScaledClock
    from tiersel.demo import format_report, run_demo, workload
    from tiersel.errors import TierselError
    from tiersel.pricing import load_pricing

    try:
        from tiersel.sim.server import serve_in_subprocess

        model_id = load_pricing().model(args.model).model_id
        calls = workload(args.calls, span_s=args.span, seed=args.seed)
    except (TierselError, ValueError) as exc:
        return fail(str(exc))
    _say(
        f"tiersel demo: {len(calls)} calls per arm against the simulator, scenario"
        f" {args.scenario!r} from {args.start:g} s, time {1 / args.time_scale:g}x fast"
    )
    started = time.monotonic()
    seen = {"requests": 0, "hinted": 0, "priority_with_router": 0}

    def count(stats: dict[str, Any]) -> None:
        for k in seen:
            seen[k] += int(stats.get(k, 0))

    try:
        with serve_in_subprocess(args.scenario, seed=args.seed, time_scale=args.time_scale) as sv:
            _say(f"simulator listening on {sv.base_url}")
            arms = run_demo(
                calls,
                base_url=sv.openai_base_url,
                api_key=_SIM_API_KEY,
                clock=ScaledClock(args.time_scale),
                model=model_id,
                before_arm=lambda _: sv.reset(seed=args.seed, time_s=args.start),
                after_arm=lambda _: count(sv.stats()),
                progress=_say,
            )
    except (RuntimeError, TierselError, ValueError) as exc:
        return fail(str(exc))
    _say("")
    _say(format_report(arms, start_s=args.start))
    _say("")
    if args.plot is not None:
        from tiersel.demo_plot import plot
        from tiersel.sim import load_scenario

        scenario = load_scenario(args.scenario)
        try:
            _say(f"picture: {plot(arms, args.plot, scenario=scenario, start_s=args.start)}")
        except OSError as exc:
            return fail(f"--plot {args.plot}: {exc.strerror or exc}")
    _say(
        f"the simulator saw {seen['requests']} requests; with tiersel hint headers:"
        f" {seen['hinted']}; asking priority on a fast model: {seen['priority_with_router']}"
    )
    _say(f"done in {time.monotonic() - started:.1f} s (times above are simulated seconds)")
    return EXIT_OK


def _live(args: argparse.Namespace) -> int:
    from tiersel.clock import SystemClock
    from tiersel.demo import format_report, run_demo, workload
    from tiersel.errors import TierselError
    from tiersel.pricing import load_pricing
    from tiersel.selector import FIREWORKS_BASE_URL

    key = os.environ.get("FIREWORKS_API_KEY", "")
    if not key:
        return fail("--live needs FIREWORKS_API_KEY in the environment")
    try:
        model_id = load_pricing().model(args.model).model_id
        calls = workload(args.calls, span_s=30.0, seed=args.seed)
    except (TierselError, ValueError) as exc:
        return fail(str(exc))
    _say(f"tiersel demo --live: {len(calls)} calls per arm to {FIREWORKS_BASE_URL}")
    arms = run_demo(
        calls,
        base_url=FIREWORKS_BASE_URL,
        api_key=key,
        clock=SystemClock(),
        model=model_id,
        progress=_say,
    )
    _say("")
    _say(format_report(arms, unit="s"))
    return EXIT_OK
