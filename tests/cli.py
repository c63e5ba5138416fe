"""The command line run in this process, as the console script would run it: the same `main`, its
exit code, its stdout and stderr. (Each area keeps one test that runs the real ``tiersel`` or
``python -m tiersel`` in a subprocess; the rest run here, without a new interpreter's second of
imports each.)"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import warnings

from tiersel.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        warnings.catch_warnings(),
    ):
        # A new process shows each warning once; this one may have shown it already, and
        # pytest's -W options do not reach a real `tiersel`.
        warnings.simplefilter("always")
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's own exits: --help, a bad argument
            code, message = exc.code, None
            if not isinstance(code, int):  # as the interpreter does: a message goes to stderr
                code, message = (0, None) if code is None else (1, str(code))
            if message is not None:
                print(message, file=sys.stderr)
    return subprocess.CompletedProcess(["tiersel", *args], code, out.getvalue(), err.getvalue())
