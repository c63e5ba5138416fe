"""At a budget's end, lines wait for money in flight or a cooldown that ends in time; those the
money left cannot cover end ``budget_exhausted``, never ``failed`` unsent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiersel.batch import run_batch
from tiersel.call import Requirements
from tiersel.clock import FakeClock
from tiersel.sim import AsyncSimTransport

from .conftest import batch_line, body, read_rows, write_jsonl

LINES = 300
BUDGET = 0.50


@pytest.mark.filterwarnings("ignore:model .kimi-k2p6. was retired")
def test_the_budget_is_spent_and_unaffordable_lines_say_so(tmp_path: Path) -> None:
    text = "lorem ipsum dolor sit amet " * 300  # about 2,000 tokens
    src = write_jsonl(
        tmp_path / "in.jsonl",
        (
            batch_line(f"r{i}", body(i, max_tokens=256, text=text, model="kimi-k2p6"))
            for i in range(LINES)
        ),
    )
    out = tmp_path / "out.jsonl"
    clock = FakeClock()
    summary = run_batch(
        src,
        out,
        budget_usd=BUDGET,
        transport=AsyncSimTransport(scenario="peak", clock=clock),
        clock=clock,
        api_key="",
        concurrency=16,
        requirements=Requirements(deadline_s=15),
        progress=False,
    )
    rows = read_rows(out)
    unsent_failures = [r for r in rows if r["status"] == "failed" and r["attempts"] == 0]
    assert unsent_failures == [], unsent_failures[0]["error"]
    assert summary.spent_usd >= 0.97 * BUDGET
    assert summary.spent_usd <= BUDGET
    # The budget ran out before the input did: the rest are budget_exhausted, and say why.
    exhausted = [r for r in rows if r["status"] == "budget_exhausted"]
    assert len(exhausted) == summary.calls_budget_exhausted > 0
    assert all("budget cannot cover" in r["error"]["message"] for r in exhausted)
    assert summary.least_needed_usd is not None
    assert summary.least_needed_usd > summary.remaining_usd
    assert "why left:" in summary.render()
    assert json.loads(json.dumps(summary.to_dict()))["least_needed_usd"] == summary.least_needed_usd
