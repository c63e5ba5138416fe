"""``tiersel sim``: the simulated Fireworks provider.

``tiersel sim serve --port P --scenario NAME [--host 127.0.0.1] [--seed N] [--time-scale X]``
serves it over HTTP on loopback; ``tiersel sim scenarios`` lists the bundled scenarios.
``python -m tiersel.sim ...`` runs the same subcommands without loading the rest of the CLI.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from tiersel.cli.common import check_positive, fail


def add_parser(subs: Any, help: str) -> None:
    p = subs.add_parser("sim", help=help)
    p.set_defaults(run=lambda _args: fail("choose a sim command: serve or scenarios"))
    sim = p.add_subparsers(dest="sim_command", metavar="SIM_COMMAND")

    serve = sim.add_parser(
        "serve",
        help="serve the simulator over HTTP on loopback",
        description="Serve the simulated provider: POST /inference/v1/chat/completions, "
        "/inference/v1/completions, /inference/v1/responses and /inference/v1/messages; "
        "GET /sim/stats (what it saw); POST /sim/reset (forget every request; optional JSON "
        "body {seed, time_s}); POST /sim/hold (answer no generation request until released) "
        "and POST /sim/release (answer the held ones, each after its simulated latency).",
    )
    serve.add_argument(
        "--port", type=int, default=8787, help="TCP port; 0 picks a free one (default 8787)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    serve.add_argument(
        "--scenario",
        default="calm",
        metavar="NAME|PATH",
        help="a bundled scenario (see `tiersel sim scenarios`) or a YAML file (default calm)",
    )
    serve.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    serve.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="multiply every simulated duration by X (0.01: 100x faster; default 1)",
    )
    serve.set_defaults(run=run_serve)

    scenarios = sim.add_parser("scenarios", help="list the bundled scenarios")
    scenarios.add_argument("--json", action="store_true", help="print JSON")
    scenarios.set_defaults(run=run_scenarios)


def run_serve(args: argparse.Namespace) -> int:
    from tiersel.sim.scenarios import ScenarioError, load_scenario
    from tiersel.sim.server import is_loopback, serve

    if not 0 <= args.port <= 65535:
        return fail(f"--port must be between 0 and 65535, got {args.port}")
    if problem := check_positive("--time-scale", args.time_scale):
        return fail(problem)
    if not is_loopback(args.host):
        return fail(f"--host {args.host!r} is not a loopback address; the simulator binds loopback")
    try:
        scenario = load_scenario(args.scenario)
        serve(scenario, host=args.host, port=args.port, seed=args.seed, time_scale=args.time_scale)
    except ScenarioError as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", 1)
    except RuntimeError as exc:
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        pass
    return 0


def run_scenarios(args: argparse.Namespace) -> int:
    from tiersel.sim.scenarios import list_scenarios

    found = list_scenarios()
    if args.json:
        json.dump(found, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    width = max(len(n) for n in found)
    for name, description in found.items():
        print(f"{name.ljust(width)}  {description}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tiersel.sim``: the ``sim`` subcommands alone."""
    from tiersel.cli import COMMANDS, Parser

    parser = Parser(prog="python -m tiersel.sim", description="The simulated Fireworks provider.")
    holder = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    add_parser(holder, COMMANDS["sim"])
    args = parser.parse_args(["sim", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.run(args)
    return code
