"""``tiersel batch``: run a JSONL file of calls under a hard budget, one row per line in OUT.

Exit codes: 0 every line ok; 1 the job ran to its end but some lines are not ok (their rows say
why); 2 bad arguments, or an input or OUT that cannot be used; 4 another job is writing OUT;
5 the shared store (``--store``) does not answer, holds this budget with another limit, or lost
the spend of a shared budget; 6 OUT or its journal could not be written (a full disk): the job
stopped at once, and can be resumed with ``--resume``; 130 interrupted (the job can be resumed
with ``--resume``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from tiersel.batch import JobLocked, JobWriteError, JournalError, run_batch
from tiersel.batch.runner import DEFAULT_CONCURRENCY
from tiersel.batch.sharing import Shard, StoreLostState
from tiersel.call import MAX_ATTEMPTS, Requirements
from tiersel.cli.common import (
    add_pricing_args,
    check_positive,
    check_tiers,
    fail,
    invalid_flag,
    pricing_from,
)
from tiersel.clock import Clock, FakeClock
from tiersel.dialects import check_token_count
from tiersel.errors import TierselError
from tiersel.outgoing import check_base_url
from tiersel.selector import FIREWORKS_BASE_URL, Selector
from tiersel.stores import BudgetConflict, StoreMisconfigured, StoreUnavailable, parse_store_url

EXIT_OK = 0
EXIT_NOT_ALL_OK = 1
EXIT_USAGE = 2
EXIT_LOCKED = 4
EXIT_STORE = 5
EXIT_WRITE = 6
EXIT_INTERRUPTED = 130


def add_parser(subs: Any, help: str) -> None:
    p = subs.add_parser(
        "batch",
        help=help,
        description=(
            "Send every line of IN (an OpenAI batch line or a bare chat-completion body) through"
            " the tier selector, never letting committed plus reserved spend pass --budget-usd,"
            " and write one JSON row per line to OUT."
        ),
    )
    _add_job_args(p)
    _add_destination_args(p.add_argument_group("where calls go"))
    _add_requirement_args(p.add_argument_group("what each line asks for"))
    add_pricing_args(p)
    p.set_defaults(run=run)


def _add_job_args(p: Any) -> None:
    """The job: its input, output, cap, pace, resumption, sharing and report."""
    p.add_argument("input", metavar="IN", help="input JSONL file")
    p.add_argument("--out", required=True, metavar="OUT", help="output JSONL file (one row a line)")
    p.add_argument(
        "--budget-usd", required=True, type=float, metavar="X", help="hard cap on spend, USD"
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"calls in flight at once (default {DEFAULT_CONCURRENCY})",
    )
    p.add_argument("--resume", action="store_true", help="continue the job OUT already holds")
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="send only every N-th line, from the I-th, into OUT's own shard file"
        " (out.jsonl -> out.I-of-N.jsonl); run I = 1..N as separate workers",
    )
    p.add_argument(
        "--store",
        metavar="URL",
        help="where the budget and overload signals live: memory:// (default, this process) or"
        " redis://host:port/db[?budget=NAME], shared by every worker that names it",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress", dest="progress", action="store_true", default=None, help="always draw a bar"
    )
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never draw it")
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help="serve Prometheus metrics on http://127.0.0.1:N/metrics while the job runs"
        " (the tiersel[prometheus] extra)",
    )


def _add_destination_args(g: Any) -> None:
    """Where the calls go: the provider's API, or the simulator."""
    where = g.add_mutually_exclusive_group()
    where.add_argument(
        "--base-url",
        metavar="URL",
        help=f"API base URL (default {FIREWORKS_BASE_URL}, with $FIREWORKS_API_KEY)",
    )
    where.add_argument(
        "--sim",
        metavar="SCENARIO",
        help="send to the in-process simulator under SCENARIO (calm, busy, peak, outage, flapping)",
    )
    g.add_argument("--sim-seed", type=int, default=0, metavar="N", help="simulator seed")
    g.add_argument(
        "--sim-time-scale",
        type=float,
        metavar="S",
        help="with --sim: run on the real clock, one simulated second lasting S seconds"
        " (default: a virtual clock, no real waiting); with --base-url to a simulator server"
        " (tiersel sim serve --time-scale S): read time on its scale, so the job's waits"
        " (backoff, cooldowns) last what the simulator's do",
    )


def _add_requirement_args(g: Any) -> None:
    """The requirements every line gets, unless it states its own."""
    g.add_argument("--deadline", type=float, metavar="S", help="each call's deadline, seconds")
    g.add_argument("--reliability", type=float, metavar="P", help="P(success within deadline)")
    g.add_argument("--tiers", metavar="T1,T2", help="allowed tiers, comma-separated")
    g.add_argument("--max-cost", type=float, metavar="USD", help="max worst-case cost of one call")
    g.add_argument(
        "--strict",
        action="store_true",
        help="do not send a line whose requirements no tier can meet, nor carry one on at best"
        " effort when they no longer can after a failed attempt (default: best effort)",
    )
    g.add_argument(
        "--default-max-tokens",
        type=int,
        metavar="N",
        help="output cap for lines that set no max_tokens (default: such lines are invalid)",
    )
    g.add_argument("--max-attempts", type=int, default=4, metavar="N", help="attempts per call")


def _failed(exc: Exception, *, began: bool) -> int:
    """Say why the job stopped (and how to go on, where it can), and the exit code for it
    (``began``: OUT was written, so a rerun resumes it)."""
    if isinstance(exc, JobLocked):
        return fail(str(exc), EXIT_LOCKED)
    if isinstance(exc, StoreUnavailable):
        again = "rerun with --resume" if began else "run it again"
        return fail(f"{exc}; {again} once it answers", EXIT_STORE)
    if isinstance(exc, (BudgetConflict, StoreLostState)):
        return fail(str(exc), EXIT_STORE)
    if isinstance(exc, JobWriteError):
        return fail(
            f"{exc}; the rows written so far are kept: make room, then rerun with --resume",
            EXIT_WRITE,
        )
    if isinstance(exc, StoreMisconfigured):
        return fail(f"--store: {exc}")
    return fail(str(exc))  # JournalError, OSError: the message says it all


def _check(args: argparse.Namespace) -> str | None:
    if not (math.isfinite(args.budget_usd) and args.budget_usd >= 0):
        return f"--budget-usd must be a finite amount >= 0, got {args.budget_usd}"
    if args.concurrency < 1:
        return f"--concurrency must be >= 1, got {args.concurrency}"
    if args.default_max_tokens is not None and args.default_max_tokens < 1:
        return f"--default-max-tokens must be >= 1, got {args.default_max_tokens}"
    if not 1 <= args.max_attempts <= MAX_ATTEMPTS:
        return f"--max-attempts must be 1 to {MAX_ATTEMPTS}, got {args.max_attempts}"
    if args.sim_time_scale is not None:
        if not (args.sim or args.base_url):
            return "--sim-time-scale needs --sim, or --base-url to a simulator server"
        if problem := check_positive("--sim-time-scale", args.sim_time_scale):
            return problem
    if args.metrics_port is not None and not 0 < args.metrics_port < 65536:
        return f"--metrics-port must be a port number from 1 to 65535, got {args.metrics_port}"
    if os.path.isdir(args.input):
        return f"{args.input}: is a folder, not an input file"
    if not os.path.isfile(args.input):
        return f"{args.input}: no such input file"
    if os.path.exists(args.out) and os.path.samefile(args.input, args.out):
        return f"--out {args.out} is the input file: choose another"
    if args.base_url is not None:
        try:
            check_base_url(args.base_url, sends_key=bool(os.environ.get("FIREWORKS_API_KEY")))
        except ValueError as exc:
            return f"--base-url: {exc}"
    for option, value, parse in (
        ("--shard", args.shard, Shard.parse),
        ("--store", args.store, parse_store_url),
    ):
        try:
            if value is not None:
                parse(value)
        except ValueError as exc:
            return f"{option}: {exc}"
    if args.shard is not None and Shard.parse(args.shard).alone_with(args.store):
        return (
            f"--shard {args.shard}: the shards must share one budget: give --store"
            " redis://host:port/db, named by every shard (in each worker's own memory, the"
            " default, each shard would spend the whole budget)"
        )
    return None


def _requirements(args: argparse.Namespace) -> Requirements:
    return Requirements(
        deadline_s=args.deadline,
        reliability=args.reliability,
        tiers=args.tiers,
        max_cost_usd=args.max_cost,
        best_effort=not args.strict,
    )


def _where(args: argparse.Namespace, pricing: Any) -> dict[str, Any]:
    """Transport, base URL, key and clock: the simulator, a given URL, or Fireworks."""
    if args.sim:
        from tiersel.sim import AsyncSimTransport

        # One clock for the simulator and the selector, so both read simulated seconds.
        clock: Clock
        if args.sim_time_scale is None:
            clock = FakeClock()
        else:
            from tiersel.clock import ScaledClock

            clock = ScaledClock(args.sim_time_scale)
        transport = AsyncSimTransport(
            scenario=args.sim, seed=args.sim_seed, clock=clock, pricing=pricing
        )
        return {
            "transport": transport,
            "base_url": "http://sim/inference/v1",
            "api_key": "",
            "clock": clock,
        }
    if args.base_url:
        if args.sim_time_scale is not None:  # a simulator server's time scale
            from tiersel.clock import ScaledClock

            return {"base_url": args.base_url, "clock": ScaledClock(args.sim_time_scale)}
        return {"base_url": args.base_url}
    if not os.environ.get("FIREWORKS_API_KEY"):
        raise ValueError("set FIREWORKS_API_KEY, or pass --base-url URL or --sim SCENARIO")
    return {"base_url": FIREWORKS_BASE_URL}


def _metrics(port: int) -> Callable[[Selector], object]:
    """Serve Prometheus metrics on loopback ``port``; what attaches them to the job's selector."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server

        from tiersel.prometheus import TierselMetrics
    except ImportError:
        raise ValueError(
            "--metrics-port needs prometheus_client: pip install 'tiersel[prometheus]'"
        ) from None
    registry = CollectorRegistry()
    try:
        start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as exc:
        raise ValueError(f"--metrics-port {port}: {exc.strerror or exc}") from None
    return lambda selector: TierselMetrics(selector, registry=registry)


def run(args: argparse.Namespace) -> int:
    problem = _check(args)
    if problem is not None:
        return fail(problem)
    try:
        pricing = pricing_from(args)
        requirements = _requirements(args)
        check_tiers("--tiers", requirements.tiers, pricing)
        if args.default_max_tokens is not None:
            check_token_count("--default-max-tokens", args.default_max_tokens)
        where = _where(args, pricing)
        instrument = _metrics(args.metrics_port) if args.metrics_port is not None else None
    except ValidationError as exc:
        return fail(invalid_flag(exc))
    except (TierselError, ValueError) as exc:
        return fail(str(exc))
    # What is loaded so far (modules, the price table) lives as long as this process: keep the
    # garbage collector from scanning it again and again during the job (a large share of a
    # long job's CPU otherwise; benchmarks/batch_throughput.py).
    gc.freeze()
    shard = Shard.parse(args.shard) if args.shard is not None else None
    out = shard.out_path(args.out) if shard is not None else args.out
    try:
        summary = run_batch(
            args.input,
            args.out,
            budget_usd=args.budget_usd,
            concurrency=args.concurrency,
            requirements=requirements,
            default_max_tokens=args.default_max_tokens,
            resume=args.resume,
            pricing=pricing,
            max_attempts=args.max_attempts,
            carry_on=not args.strict,
            progress=args.progress,
            store=args.store,
            shard=shard,
            instrument=instrument,
            **where,
        )
    except (JobLocked, StoreUnavailable, BudgetConflict, StoreLostState, JobWriteError) as exc:
        return _failed(exc, began=os.path.exists(out))
    except (StoreMisconfigured, JournalError, OSError) as exc:
        return _failed(exc, began=os.path.exists(out))
    except KeyboardInterrupt:
        sys.stderr.write(
            f"tiersel: interrupted; every finished line is in {out}: rerun with --resume\n"
        )
        return EXIT_INTERRUPTED
    if args.json:
        json.dump(summary.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(summary.render())
    return EXIT_OK if summary.all_ok else EXIT_NOT_ALL_OK
