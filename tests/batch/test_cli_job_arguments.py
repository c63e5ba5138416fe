"""``tiersel batch``: job-wide arguments the price table or the simulator would choke on are
refused up front (exit 2, one line), before OUT is created and before any call is sent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tiersel.cli import main

from .conftest import batch_line, body, read_rows, write_jsonl

TIERSEL = [sys.executable, "-m", "tiersel"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--tiers", "standrd,priority"],
            "--tiers: unknown tier 'standrd' (known: standard, priority, fast, fast_us, flex,"
            " spot, ultrafast, us, us_priority)",
        ),
        (
            ["--tiers", "standard,bogus"],
            "--tiers: unknown tier 'bogus' (known: standard, priority, fast, fast_us, flex,"
            " spot, ultrafast, us, us_priority)",
        ),
        (
            # Each shard held the whole budget in its own memory: two spent twice the budget.
            ["--shard", "1/2"],
            "--shard 1/2: the shards must share one budget: give --store redis://host:port/db,"
            " named by every shard (in each worker's own memory, the default, each shard would"
            " spend the whole budget)",
        ),
        (
            ["--shard", "2/3", "--store", "memory://"],
            "--shard 2/3: the shards must share one budget: give --store redis://host:port/db,"
            " named by every shard (in each worker's own memory, the default, each shard would"
            " spend the whole budget)",
        ),
        (["--sim-time-scale", "nan"], "--sim-time-scale must be a finite number > 0, got nan"),
        (["--sim-time-scale", "-1"], "--sim-time-scale must be a finite number > 0, got -1.0"),
        (
            ["--default-max-tokens", "1" + "0" * 400],
            "--default-max-tokens must be at most 9007199254740992 (2**53), got a 401-digit number",
        ),
    ],
)
def test_bad_job_arguments_exit_2_before_out_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [batch_line("q", body(1, max_tokens=None))])
    out = tmp_path / "out.jsonl"
    code = main(["batch", str(src), "--out", str(out), "--budget-usd", "1", "--sim", "calm", *args])
    err = capsys.readouterr().err
    assert code == 2 and err == f"tiersel: error: {message}\n"
    assert list(tmp_path.iterdir()) == [src]  # nothing written, nothing to resume


def test_a_known_job_wide_tier_list_is_honoured(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [batch_line(f"q{i}", body(i)) for i in range(3)])
    out = tmp_path / "out.jsonl"
    args = ["--budget-usd", "1", "--sim", "calm", "--tiers", "standard,priority"]
    assert main(["batch", str(src), "--out", str(out), *args]) == 0
    assert {r["tier"] for r in read_rows(out)} == {"standard"}


def test_an_infinite_time_scale_does_not_hang_the_job(tmp_path: Path) -> None:
    """Run apart, with a timeout: a job that took it would sleep forever."""
    src = write_jsonl(tmp_path / "in.jsonl", [body(1, max_tokens=10)])
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [*TIERSEL, "batch", str(src), "--out", str(out), "--budget-usd", "1", "--sim", "calm",
         "--sim-time-scale", "inf"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr == "tiersel: error: --sim-time-scale must be a finite number > 0, got inf\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
