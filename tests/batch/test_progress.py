"""The progress bar: drawn on a terminal, silent elsewhere."""

from __future__ import annotations

import io

from tiersel.batch import Status
from tiersel.batch.progress import ProgressBar
from tiersel.batch.summary import BatchSummary


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def summary() -> BatchSummary:
    s = BatchSummary(input="in.jsonl", out="out.jsonl", budget_usd=2.0, lines=10)
    for tier in ("standard", "standard", "standard", "priority"):
        s.count(Status.ok, tier, 0.25)
    s.count(Status.invalid, None, 0.0)
    return s


def test_a_terminal_gets_lines_done_spend_and_tier_mix() -> None:
    tty = Terminal()
    ticks = iter([0.0, 0.05, 0.2, 0.4])
    bar = ProgressBar(summary(), stream=tty, tick=lambda: next(ticks))
    bar.update()
    bar.update()  # within 0.1 s of the last draw: skipped
    bar.update()
    drawn = tty.getvalue().split("\r")[1:]
    assert len(drawn) == 2
    assert drawn[0].startswith("[############............] 5/10  $1.0000/$2.00")
    assert "ok 4 fail 0 exh 0 inv 1  standard 75% priority 25%" in drawn[0]
    bar.close()
    assert tty.getvalue().endswith("\n")


def test_quiet_when_not_a_terminal() -> None:
    pipe = io.StringIO()
    bar = ProgressBar(summary(), stream=pipe)
    bar.update(force=True)
    bar.close()
    assert pipe.getvalue() == ""
