"""The ``tiersel`` command. Each subcommand lives in its own module of this package, with
``add_parser(subparsers, help)`` to declare its arguments and ``run(args) -> int`` to carry it out.

Only the subcommand named on the command line is imported (``tiersel --help`` imports none), so
a command loads what it uses and nothing else: ``tiersel explain`` never loads the batch runner,
the simulator or the replay.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# Subcommand modules and their one-line help, in the order `tiersel --help` lists them.
COMMANDS = {
    "prices": "show the price table, per model and tier",
    "explain": "show which tier the policy would choose for a call, and why",
    "demo": "run a mixed workload with tiersel, always-standard and always-priority, side by side",
    "sim": "run the simulated Fireworks provider (no API key needed)",
    "batch": "run a JSONL file of calls under a hard budget, one result row per line",
    "simulate": "replay a request trace through each policy against the simulated provider",
}

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INFEASIBLE = 3


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The command's parser, with the full parser of the subcommand ``argv`` names (if any) and
    a one-line entry for each of the others."""
    from tiersel import __version__

    parser = Parser(
        prog="tiersel",
        description="Choose the cheapest LLM serving tier that meets each call's requirements.",
    )
    parser.add_argument("--version", action="version", version=f"tiersel {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subs.required = True
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, summary in COMMANDS.items():
        if name == chosen:
            importlib.import_module(f"tiersel.cli.{name}").add_parser(subs, summary)
        else:
            subs.add_parser(name, help=summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    import warnings

    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        # As Python's defaults have it: a socket another part of the process left for the
        # garbage collector is no warning of the command's (pytest turns these on).
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            code: int = args.run(args)
        except BrokenPipeError:
            # The reader went away (`tiersel prices | head`): not an error of ours.
            sys.stderr.close()
            return EXIT_OK
    return code


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """A warning as one line, as the CLI's errors are (`tiersel: warning: ...`), not Python's
    file-and-source-line form."""
    print(f"tiersel: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
