"""Helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Iterable

from pydantic import ValidationError

from tiersel.pricing import Pricing, load_pricing

EXIT_USAGE = 2


def add_pricing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pricing", metavar="PATH", help="a price table to use instead of the bundled one"
    )
    p.add_argument(
        "--overlay",
        metavar="PATH",
        action="append",
        default=[],
        help="a partial price table laid over the base one (repeatable)",
    )


# The command-line flag of each field of `Call` and `Requirements`, for error messages.
FLAGS = {
    "deadline_s": "--deadline",
    "max_ttft_s": "--max-ttft",
    "min_output_tps": "--min-tps",
    "reliability": "--reliability",
    "tiers": "--tiers",
    "max_cost_usd": "--max-cost",
    "input_tokens": "--input-tokens",
    "cached_input_tokens": "--cached-input-tokens",
    "max_output_tokens": "--max-tokens",
    "expected_output_tokens": "--expected-output-tokens",
    "max_attempts": "--max-attempts",
}


def invalid_flag(exc: ValidationError) -> str:
    """A validation error of a value given on the command line, in the command line's words:
    ``--deadline -5: must be greater than 0``."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    msg = str(err["msg"]).replace("Input should be", "must be").removeprefix("Value error, ")
    flag = FLAGS.get(loc[0]) if loc else None
    if flag is None:  # a rule across fields: name the flags it is about
        for field, option in FLAGS.items():
            msg = re.sub(rf"\b{field}\b", option, msg)
        return f"{'.'.join(loc) or 'the options'}: {msg}" if loc else msg
    value = err.get("input")
    shown = f"{value:g}" if isinstance(value, float) else value
    return f"{flag} {shown}: {msg}"


def pricing_from(args: argparse.Namespace) -> Pricing:
    return load_pricing(args.pricing, overlay=args.overlay or None)


def fail(message: str, code: int = EXIT_USAGE) -> int:
    """Print a one-line error to stderr and return the exit code."""
    sys.stderr.write(f"tiersel: error: {message.splitlines()[0] if message else 'failed'}\n")
    return code


def check_positive(option: str, value: float) -> str | None:
    """Why ``value`` cannot be ``option``, which takes a finite number > 0 (a time scale, say);
    None when it can. (``inf`` would make a scaled clock sleep forever.)"""
    if math.isfinite(value) and value > 0:
        return None
    return f"{option} must be a finite number > 0, got {value}"


def check_tiers(option: str, tiers: Iterable[str] | None, pricing: Pricing) -> None:
    """Raise `ValueError` ("OPTION: unknown tier ...") when ``tiers`` names a tier the price table
    does not declare: a job-wide tier list with a typo would otherwise drop it silently, or fail
    every call."""
    if tiers is None:
        return
    try:
        pricing.check_tiers(tiers)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from None
