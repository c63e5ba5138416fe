"""A call the budget turns down while other calls hold reservations waits for them to settle
(a reservation is a worst case; what a call is billed is usually far less), within its deadline,
the client's timeout and ``budget_wait_s``; a call with no output cap gets a share of the money
left, not the whole default cap. All on virtual time: concurrent waits overlap."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import tiersel
from tiersel.budget import MemoryLedger
from tiersel.call import BudgetState
from tiersel.clock import FakeClock
from tiersel.dialects import Dialect
from tiersel.sim import AsyncSimTransport, load_scenario
from tiersel.virtual_time import run_virtual
from tiersel.wrap import AsyncTierTransport

MODEL = "kimi-k3"
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 1000,
}


def provider(clock: FakeClock, hold_s: float, completion_tokens: int = 10) -> httpx.MockTransport:
    """Answers after ``hold_s`` virtual seconds, billing ``completion_tokens`` of output."""

    async def handler(request: httpx.Request) -> httpx.Response:
        await clock.asleep(hold_s)
        usage = {"prompt_tokens": 5, "completion_tokens": completion_tokens}
        choice = {"index": 0, "message": {"role": "assistant", "content": "."}}
        return httpx.Response(
            200, json={"id": "x", "model": MODEL, "choices": [choice], "usage": usage}
        )

    return httpx.MockTransport(handler)


def selector(clock: FakeClock, budget: float, hold_s: float, **kw: Any) -> tiersel.Selector:
    return tiersel.Selector(
        clock=clock,
        ledger=MemoryLedger(budget),
        async_transport=provider(clock, hold_s),
        api_key="",
        requirements=tiersel.Requirements(tiers=("standard",)),
        **kw,
    )


def worst(sel: tiersel.Selector) -> float:
    """The worst case of one `BODY` on standard, as the selector reserves it."""
    call = sel.engine.call_for(BODY, Dialect.openai)[0]
    return sel.decide(call, tiersel.Requirements(tiers=("standard",))).plan[0].worst_cost_usd


async def two_calls(
    sel: tiersel.Selector, second: tiersel.Requirements | None = None
) -> tuple[tiersel.CallResult, tiersel.CallResult | BaseException, float]:
    """One call, then a second 0.1 s later; the result of each and when the second ended."""
    first = asyncio.ensure_future(sel.asend(dict(BODY)))
    await sel.clock.asleep(0.1)  # type: ignore[attr-defined]
    try:
        other: tiersel.CallResult | BaseException = await sel.asend(dict(BODY), requirements=second)
    except tiersel.BudgetExhausted as exc:
        other = exc
    ended = sel.clock.now()
    return await first, other, ended


def test_a_call_waits_for_the_reservation_in_flight_and_is_served() -> None:
    clock = FakeClock()
    probe = selector(clock, 1.0, 5.0)
    # Room for one worst case, not two; what a call is billed (10 tokens) is far less.
    sel = selector(clock, 1.5 * worst(probe), 5.0)
    first, second, ended = run_virtual(two_calls(sel), clock)
    assert first.ok and isinstance(second, tiersel.CallResult) and second.ok
    # It waited for the first call to settle (at t = 5 s) and was then served in 5 s more.
    assert 10.0 <= ended < 11.5
    state = sel.ledger.state(clock.now())  # type: ignore[union-attr]
    assert state.reserved_usd == 0 and state.spent_usd == pytest.approx(first.cost_usd * 2)


def test_no_wait_when_money_in_flight_could_not_cover_it() -> None:
    clock = FakeClock()
    sel = selector(clock, 0.9 * worst(selector(clock, 1.0, 5.0)), 5.0)
    with pytest.raises(tiersel.BudgetExhausted):
        run_virtual(sel.asend(dict(BODY)), clock)
    assert clock.now() == 0.0  # refused at once: nothing in flight could free enough


def test_the_wait_is_bounded_by_the_deadline_and_by_budget_wait_s() -> None:
    clock = FakeClock()
    need = worst(selector(clock, 1.0, 5.0))
    # Deadline 2 s: it gives up within it, while the first call still holds its reservation.
    sel = selector(clock, 1.5 * need, 30.0)
    _, second, ended = run_virtual(two_calls(sel, tiersel.Requirements(deadline_s=2.0)), clock)
    assert isinstance(second, tiersel.BudgetExhausted)
    assert 0.1 < ended < 2.1
    # budget_wait_s bounds a call with no deadline; 0 refuses at once.
    for wait_s, lo, hi in [(3.0, 3.0, 3.2), (0.0, 0.1, 0.1)]:
        clock = FakeClock()
        sel = selector(clock, 1.5 * need, 30.0, budget_wait_s=wait_s)
        _, second, ended = run_virtual(two_calls(sel), clock)
        assert isinstance(second, tiersel.BudgetExhausted)
        assert lo <= ended <= hi + 1e-9, (wait_s, ended)
        # The refusal says how long it waited (helper-29: it read as a refusal at once).
        assert second.waited_s == pytest.approx(ended - 0.1)
        said = f", after waiting {second.waited_s:.3g} s for money in flight to come back"
        assert str(second).endswith(said) == (wait_s > 0), str(second)


def test_budget_wait_s_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="budget_wait_s must be >= 0, got -1"):
        tiersel.Selector(budget_wait_s=-1)


def test_sixty_calls_with_no_max_tokens_share_five_cents(tmp_path: Path) -> None:
    """The issue's run: 60 concurrent openai SDK calls on $0.05 with no max_tokens, against a
    simulator whose answers stop at 200 tokens. With a fixed 4,096-token cap and no wait, one
    call is served and most of the budget is left; with a share of the money left and waits for
    money in flight, the budget is spent on as many calls as it can pay for."""
    (tmp_path / "short.yaml").write_text("description: short answers\nanswer_tokens: 200\n")
    scenario = load_scenario(str(tmp_path / "short.yaml"))

    def run(**kw: Any) -> tuple[int, BudgetState, set[str]]:
        clock = FakeClock()
        sim = AsyncSimTransport(scenario=scenario, clock=clock)
        ledger = MemoryLedger(0.05)
        sel = tiersel.Selector(clock=clock, ledger=ledger, api_key="", **kw)
        caps: set[str] = set()

        async def main() -> int:
            http = httpx.AsyncClient(transport=AsyncTierTransport(sel, sim))
            client = openai.AsyncOpenAI(
                api_key="sk-test",
                base_url="http://sim/inference/v1",
                http_client=http,
                max_retries=0,
            )

            async def one() -> bool:
                try:
                    raw = await client.chat.completions.with_raw_response.create(
                        model=MODEL, messages=[{"role": "user", "content": "Say hi."}]
                    )
                except tiersel.BudgetExhausted:
                    return False
                caps.add(raw.headers["x-tiersel-max-tokens"])
                return True

            served = await asyncio.gather(*(one() for _ in range(60)))
            await http.aclose()
            return sum(served)

        served = run_virtual(main(), clock)
        return served, ledger.state(clock.now()), caps

    old_served, old_state, _ = run(unbounded_output="cap", budget_wait_s=0)
    served, state, caps = run()
    assert old_served <= 2 and old_state.spent_usd < 0.5 * 0.05
    assert state.spent_usd <= 0.05 and state.reserved_usd == 0
    # A 200-token answer costs about $0.003 on kimi-k3's standard tier: $0.05 pays for about 16.
    assert served >= 12 and state.spent_usd >= 0.9 * 0.05, (served, state)
    assert len(caps) > 1 and all(256 <= int(c) <= 4096 for c in caps)
