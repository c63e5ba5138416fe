"""The ``tiersel`` command. Each subcommand lives in its own module of this package, with
``add_parser(subparsers)`` to declare its arguments and ``run(args) -> int`` to carry it out.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# Subcommand modules, in the order `tiersel --help` lists them.
_COMMANDS = ("prices", "explain", "demo", "sim", "batch", "simulate")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INFEASIBLE = 3


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tiersel",
        description="Choose the cheapest LLM serving tier that meets each call's requirements.",
    )
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subs.required = True
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"tiersel.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"tiersel.cli.{name}":
                raise
            continue
        module.add_parser(subs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except BrokenPipeError:
        # The reader went away (`tiersel prices | head`): not an error of ours.
        sys.stderr.close()
        return EXIT_OK
    return code


if __name__ == "__main__":
    raise SystemExit(main())
