"""``tiersel sim`` (run as ``python -m tiersel.sim``): arguments are checked before serving."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tiersel.cli.sim import main


def test_scenarios_lists_the_bundled_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenarios", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"calm", "busy", "peak", "outage", "flapping"} <= set(listed)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--port", "70000"], "--port must be between 0 and 65535"),
        (["serve", "--time-scale", "0"], "--time-scale must be a finite number > 0, got 0.0"),
        (["serve", "--time-scale", "nan"], "--time-scale must be a finite number > 0, got nan"),
        (["serve", "--host", "0.0.0.0"], "not a loopback address"),
        (["serve", "--scenario", "stormy"], "stormy: no such scenario"),
        ([], "choose a sim command"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_an_infinite_time_scale_is_refused_before_serving() -> None:
    """Run apart, with a timeout: a server that took it would serve (answering 500) forever."""
    done = subprocess.run(
        [sys.executable, "-m", "tiersel.sim", "serve", "--port", "0", "--time-scale", "inf"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == "tiersel: error: --time-scale must be a finite number > 0, got inf\n"
