"""On the simulator's virtual clock, concurrency changes how fast a job runs, not its outcome."""

from __future__ import annotations

from pathlib import Path

from tiersel.batch import run_batch
from tiersel.call import Requirements
from tiersel.clock import FakeClock
from tiersel.sim import AsyncSimTransport

from .conftest import batch_line, body, write_jsonl

LINES = 300


def failures(tmp_path: Path, concurrency: int) -> int:
    """Lines of a deadline-bound job under peak load that did not end ok."""
    text = "lorem ipsum dolor sit amet " * 300  # about 2,000 tokens
    src = write_jsonl(
        tmp_path / "in.jsonl",
        (batch_line(f"r{i}", body(i, max_tokens=256, text=text)) for i in range(LINES)),
    )
    clock = FakeClock()
    summary = run_batch(
        src,
        tmp_path / f"out-{concurrency}.jsonl",
        budget_usd=100.0,
        transport=AsyncSimTransport(scenario="peak", clock=clock),
        clock=clock,
        api_key="",
        concurrency=concurrency,
        requirements=Requirements(deadline_s=15),
        progress=False,
    )
    assert summary.complete and summary.lines == LINES
    return summary.lines - summary.calls_ok


def test_concurrent_lines_fail_about_as_often_as_one_at_a_time(tmp_path: Path) -> None:
    alone = failures(tmp_path, 1)
    crowded = failures(tmp_path, 64)
    # Before the virtual-time loop, 64 concurrent waits added up on the shared clock and about
    # a third of these lines timed out after one attempt.
    assert abs(crowded - alone) <= 0.03 * LINES, (alone, crowded)
