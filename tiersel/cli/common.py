"""Helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import sys

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


def pricing_from(args: argparse.Namespace) -> Pricing:
    return load_pricing(args.pricing, overlay=args.overlay or None)


def fail(message: str, code: int = EXIT_USAGE) -> int:
    """Print a one-line error to stderr and return the exit code."""
    sys.stderr.write(f"tiersel: error: {message.splitlines()[0] if message else 'failed'}\n")
    return code
