"""Hundreds of calls in flight at once against the simulator under `peak`: the cap holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tiersel.batch import arun_batch
from tiersel.clock import ScaledClock
from tiersel.pricing import load_pricing
from tiersel.sim import AsyncSimTransport, SimService

from .conftest import CappedLedger, body, read_rows, write_jsonl

LINES = 1200
IN_FLIGHT = 600


@pytest.mark.slow
def test_six_hundred_in_flight_under_peak_never_pass_the_cap(tmp_path: Path) -> None:
    pricing = load_pricing()
    src = write_jsonl(
        tmp_path / "in.jsonl", [body(i, max_tokens=64, text="y" * 200) for i in range(LINES)]
    )
    # Real time, scaled so calls really overlap: one simulated second lasts 4 ms, for the
    # provider and the selector alike. Start in the peak, where the shared pool is at 140% and
    # standard is shed about 90% of the time.
    clock = ScaledClock(0.004)
    service = SimService("peak", seed=3, clock=clock, start_s=95, pricing=pricing)
    transport = AsyncSimTransport(service)
    # A budget that runs out before the input does: about 900 calls at their worst case.
    budget = 1.25
    ledger = CappedLedger(budget)
    summary = asyncio.run(
        arun_batch(
            src,
            tmp_path / "out.jsonl",
            budget_usd=budget,
            transport=transport,
            clock=clock,
            concurrency=IN_FLIGHT,
            ledger=ledger,
            api_key="",
            pricing=pricing,
            progress=False,
        )
    )
    assert summary.peak_in_flight >= 500
    assert not ledger.violations and ledger.ops > LINES
    assert ledger.peak_committed <= budget
    state = ledger.state(clock.now())
    assert state.reserved_usd == 0 and state.spent_usd <= budget
    rows = read_rows(tmp_path / "out.jsonl")
    assert sorted(r["line"] for r in rows) == list(range(1, LINES + 1))
    assert abs(sum(r["cost_usd"] for r in rows) - state.spent_usd) < 1e-9
    # The shed standard traffic climbed to priority; nothing unsafe reached the provider.
    stats = transport.stats()
    assert stats["by_status"].get("503", 0) > 100 and summary.escalations > 100
    assert summary.by_tier["priority"].ok > 100
    assert stats["hinted"] == 0 and stats["priority_with_router"] == 0
    assert summary.calls_ok + summary.calls_budget_exhausted + summary.calls_failed == LINES
