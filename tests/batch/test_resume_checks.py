"""What ``--resume`` refuses, in one line and without touching the job's files: another budget
than the job started with, and an OUT that is gone while its journal remains."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiersel.batch import JournalError, run_batch
from tiersel.cli import main
from tiersel.clock import FakeClock
from tiersel.sim import AsyncSimTransport

from .conftest import body, read_rows, write_jsonl


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["batch", *args, "--sim", "calm", "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files(out: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in (out, Path(f"{out}.journal")) if p.exists()}


@pytest.fixture
def finished(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """A job of 20 lines run to its end with --budget-usd 2."""
    src = write_jsonl(tmp_path / "in.jsonl", [body(i, max_tokens=40) for i in range(20)])
    out = tmp_path / "out.jsonl"
    code, _, err = cli(capsys, str(src), "--out", str(out), "--budget-usd", "2")
    assert code == 0, err
    return src, out


@pytest.mark.parametrize("budget", ["0.001", "1.5", "3"])
def test_resume_with_another_budget_is_refused_naming_both(
    finished: tuple[Path, Path], capsys: pytest.CaptureFixture[str], budget: str
) -> None:
    src, out = finished
    before = files(out)
    code, stdout, err = cli(capsys, str(src), "--out", str(out), "--budget-usd", budget, "--resume")
    assert (code, stdout) == (2, "")
    assert err == (
        f"tiersel: error: {out} is a job started with --budget-usd 2.0, not {float(budget)!r}:"
        " a resumed job keeps the budget it started with (what it spent so far counts against"
        " it); resume with --budget-usd 2.0, or choose another --out for a new job\n"
    )
    assert files(out) == before  # no run was recorded
    # The same budget resumes (nothing is left to do).
    code, _, err = cli(capsys, str(src), "--out", str(out), "--budget-usd", "2.0", "--resume")
    assert code == 0, err


def test_the_api_refuses_another_budget_too(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [body(i, max_tokens=40) for i in range(3)])
    out = tmp_path / "out.jsonl"
    clock = FakeClock()
    options = {
        "transport": AsyncSimTransport(scenario="calm", clock=clock),
        "clock": clock,
        "base_url": "http://sim/inference/v1",
        "api_key": "",
        "progress": False,
    }
    run_batch(src, out, budget_usd=1, **options)
    with pytest.raises(JournalError, match=r"started with --budget-usd 1\.0, not 0\.5"):
        run_batch(src, out, budget_usd=0.5, resume=True, **options)
    assert run_batch(src, out, budget_usd=1.0, resume=True, **options).complete


@pytest.mark.parametrize("resume", [False, True])
def test_a_missing_out_with_its_journal_left_is_refused_and_says_what_to_do(
    finished: tuple[Path, Path], capsys: pytest.CaptureFixture[str], resume: bool
) -> None:
    src, out = finished
    spent = sum(r["cost_usd"] for r in read_rows(out))
    out.unlink()
    journal = Path(f"{out}.journal")
    before = journal.read_bytes()
    args = [str(src), "--out", str(out), "--budget-usd", "2", *(["--resume"] if resume else [])]
    code, stdout, err = cli(capsys, *args)
    assert (code, stdout) == (2, "")
    assert err == (
        f"tiersel: error: {out} is missing but its journal {journal.name} exists: the journal"
        f" records what earlier runs spent (${spent:.6f}), not their results, so OUT cannot be"
        " rebuilt from it; put OUT back and rerun with --resume, or choose another --out\n"
    )
    assert journal.read_bytes() == before and not out.exists()
