"""The budget ledger's contract, run against every backend (memory, Redis; sync and async).

A second ledger opened on the same Redis budget stands for another process; in memory it is the
same ledger (a memory budget is per process).
"""

from __future__ import annotations

import asyncio
import math
import random
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.stores.conftest import Backend, advance, now
from tiersel.budget import MemoryLedger, OnExpiry
from tiersel.call import BudgetState

approx = pytest.approx


def test_a_reservation_holds_money_until_it_no_longer_fits(backend: Backend) -> None:
    ledger = backend.ledger(1.0)
    held = ledger.reserve("a", 0.75, now())
    assert held == BudgetState(limit_usd=1.0, spent_usd=0.0, reserved_usd=0.75)
    assert ledger.reserve("b", 0.5, now()) is None
    assert ledger.state(now()).reserved_usd == approx(0.75)
    assert ledger.reserve("b", 0.25, now()).remaining_usd == approx(0.0)


def test_settle_charges_the_real_cost_once_and_drops_the_reservation(backend: Backend) -> None:
    ledger = backend.ledger(1.0)
    ledger.reserve("a", 0.6, now())
    after = ledger.settle("a", 0.2, now())
    assert (after.spent_usd, after.reserved_usd) == (approx(0.2), approx(0.0))
    again = ledger.settle("a", 0.2, now())
    assert (again.spent_usd, again.reserved_usd) == (approx(0.2), approx(0.0))


def test_a_settled_call_is_never_charged_twice_across_processes(backend: Backend) -> None:
    first, second = backend.ledger(1.0), backend.ledger(1.0)
    first.reserve("call-7", 0.5, now())
    first.settle("call-7", 0.3, now())
    # Another worker retries the same call id: its new reservation is dropped, nothing charged.
    second.reserve("call-7", 0.5, now())
    state = second.settle("call-7", 0.3, now())
    assert (state.spent_usd, state.reserved_usd) == (approx(0.3), approx(0.0))
    assert first.state(now()) == state


def test_a_charge_past_its_reservation_is_recorded_and_stops_new_reservations(
    backend: Backend,
) -> None:
    ledger = backend.ledger(1.0)
    ledger.reserve("a", 0.6, now())
    ledger.reserve("b", 0.3, now())
    # The provider billed "a" past its bound: the excess is charged and recorded as overrun.
    after = ledger.settle("a", 0.9, now())
    assert (after.spent_usd, after.overrun_usd) == (approx(0.9), approx(0.3))
    after = ledger.settle("b", 0.3, now())
    assert (after.spent_usd, after.overrun_usd) == (approx(1.2), approx(0.3))
    # Spent is past the cap: nothing more is granted, however small.
    assert ledger.reserve("c", 1e-9, now()) is None
    assert ledger.state(now()).overrun_usd == approx(0.3)


def test_release_drops_without_charging_and_unknown_ids_are_harmless(backend: Backend) -> None:
    ledger = backend.ledger(2.0)
    ledger.reserve("a", 1.5, now())
    assert ledger.release("a", now()) == BudgetState(limit_usd=2.0)
    assert ledger.release("a", now()) == BudgetState(limit_usd=2.0)
    assert ledger.release("never-reserved", now()) == BudgetState(limit_usd=2.0)
    assert ledger.settle("never-reserved", 0.1, now()).spent_usd == approx(0.1)


def test_reserving_again_under_one_id_replaces_the_amount(backend: Backend) -> None:
    ledger = backend.ledger(1.0)
    ledger.reserve("a", 0.9, now())
    # 0.9 is replaced, not added to: an escalation re-reserves at the new tier's worst case.
    assert ledger.reserve("a", 0.95, now()).reserved_usd == approx(0.95)
    assert ledger.reserve("a", 1.2, now()) is None
    assert ledger.state(now()).reserved_usd == approx(0.95)


def test_a_reservation_lapses_at_its_expiry(backend: Backend) -> None:
    ledger = backend.ledger(1.0)
    ledger.reserve("dies-holding-it", 0.8, now(), ttl_s=0.5)
    ledger.reserve("lives", 0.1, now())
    assert ledger.reserve("c", 0.5, now()) is None
    advance(0.6)
    assert ledger.state(now()).reserved_usd == approx(0.1)
    assert ledger.reserve("c", 0.5, now()) is not None


def test_reserving_again_under_one_id_restarts_its_expiry(backend: Backend) -> None:
    # How a streamed call keeps its reservation while its stream outlives the expiry
    # (`tiersel.engine.lease`), and what `reservation_ttl_s` tells it.
    ledger = backend.ledger(1.0, reservation_ttl_s=0.5)
    assert ledger.reservation_ttl_s == 0.5
    ledger.reserve("long-stream", 0.8, now())
    for _ in range(3):
        advance(0.3)
        assert ledger.reserve("long-stream", 0.8, now()) is not None
    advance(0.3)  # 1.2 s after it was first made: alive, renewed 0.3 s ago
    assert ledger.state(now()).reserved_usd == approx(0.8)
    assert ledger.reserve("other", 0.5, now()) is None
    advance(0.3)  # 0.6 s after its last renewal: lapsed
    assert ledger.state(now()).reserved_usd == approx(0.0)


def test_the_ledger_default_ttl_applies_to_reservations_without_one(backend: Backend) -> None:
    ledger = backend.ledger(1.0, reservation_ttl_s=0.5)
    ledger.reserve("a", 0.8, now())
    advance(0.6)
    assert ledger.state(now()).reserved_usd == approx(0.0)
    # A call that outlived its reservation is still charged when it settles.
    assert ledger.settle("a", 0.5, now()).spent_usd == approx(0.5)


def test_a_call_that_outlived_its_reservation_reports_what_it_took_past_the_cap(
    backend: Backend,
) -> None:
    # A's reservation lapses while its call still runs; B takes the money it freed; A settles.
    # Spent then passes the limit, and the ledger says by how much (it said 0 before: the cap
    # was passed in silence).
    ledger = backend.ledger(0.005)
    assert ledger.reserve("a", 0.0036, now(), ttl_s=0.5) is not None
    advance(0.6)
    assert ledger.reserve("b", 0.0036, now()) is not None
    ledger.settle("b", 0.00305, now())
    state = ledger.settle("a", 0.00306, now())
    assert state.spent_usd == approx(0.00611)
    assert state.overrun_usd == approx(0.00611 - 0.005)  # past the cap, all of it reported


def test_a_late_settle_within_the_money_free_is_no_overrun(backend: Backend) -> None:
    ledger = backend.ledger(1.0)
    ledger.reserve("c", 0.2, now(), ttl_s=0.5)
    advance(0.6)
    assert ledger.settle("c", 0.1, now()).overrun_usd == 0.0
    assert ledger.settle("c", 0.1, now()).spent_usd == approx(0.1)  # settled once


def test_a_lapsed_reservation_may_be_charged_in_full_instead(backend: Backend) -> None:
    """on_expiry=charge: its holder may have died after the call was billed; the cap holds."""
    ledger = backend.ledger(1.0, reservation_ttl_s=0.5, on_expiry=OnExpiry.charge)
    ledger.reserve("died-after-sending", 0.6, now())
    ledger.reserve("settled-in-time", 0.3, now())
    ledger.settle("settled-in-time", 0.1, now())
    advance(0.6)
    state = ledger.state(now())
    assert (state.spent_usd, state.reserved_usd) == (approx(0.7), approx(0.0))
    # A late settle of the lapsed id (a slow holder, or a resumed job) charges nothing more.
    assert ledger.settle("died-after-sending", 0.2, now()).spent_usd == approx(0.7)
    assert backend.ledger(1.0).state(now()).spent_usd == approx(0.7)


@pytest.mark.parametrize("bad", [-0.01, math.nan, math.inf])
def test_bad_amounts_are_refused_and_change_nothing(backend: Backend, bad: float) -> None:
    ledger = backend.ledger(1.0)
    with pytest.raises(ValueError, match="finite amount >= 0"):
        ledger.reserve("a", bad, now())
    with pytest.raises(ValueError, match="finite amount >= 0"):
        ledger.settle("a", bad, now())
    assert ledger.state(now()) == BudgetState(limit_usd=1.0)


def test_the_cap_holds_with_64_callers_at_once(backend: Backend) -> None:
    """Committed plus reserved never passes the limit, and everything balances in the end."""
    limit = 5.0
    ledger = backend.ledger(limit)
    seen: list[BudgetState] = []
    charged: list[float] = []
    rng = random.Random(7)
    plans = [
        [(f"w{w}-c{c}", rng.uniform(0.01, 0.4), rng.random()) for c in range(20)] for w in range(64)
    ]

    def settle_or_release(cid: str, amount: float, fate: float, state: BudgetState | None) -> None:
        if state is None:
            return
        seen.append(state)
        if fate < 0.7:
            charged.append(amount * fate)
            seen.append(ledger.settle(cid, amount * fate, now()))
        else:
            seen.append(ledger.release(cid, now()))

    if backend.is_async:
        store = ledger.store

        async def worker(plan: list[tuple[str, float, float]]) -> None:
            for cid, amount, fate in plan:
                state = await store.reserve(cid, amount, now())
                if state is None:
                    continue
                seen.append(state)
                if fate < 0.7:
                    charged.append(amount * fate)
                    seen.append(await store.settle(cid, amount * fate, now()))
                else:
                    seen.append(await store.release(cid, now()))

        async def everyone() -> None:
            await asyncio.gather(*(worker(p) for p in plans))

        assert backend.loop is not None
        backend.loop.run_until_complete(everyone())
    else:

        def thread(plan: list[tuple[str, float, float]]) -> None:
            for cid, amount, fate in plan:
                settle_or_release(cid, amount, fate, ledger.reserve(cid, amount, now()))

        threads = [threading.Thread(target=thread, args=(p,)) for p in plans]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    assert seen, "no reservation fitted at all"
    assert max(s.spent_usd + s.reserved_usd for s in seen) <= limit + 1e-9
    final = ledger.state(now())
    assert final.reserved_usd == approx(0.0, abs=1e-9)
    assert final.spent_usd == approx(sum(charged), abs=1e-6)


# -- the same operations give the same states on every backend ----------------------------------

_ids = st.sampled_from(["a", "b", "c", "d"])
# Multiples of 1/512 dollar are exact both as floats and as nano-dollars, so the memory ledger's
# float sums and Redis's integers meet every boundary the same way.
_money = st.integers(0, 300).map(lambda k: k / 512)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), _ids, _money),
        st.tuples(st.just("settle"), _ids, _money),
        st.tuples(st.just("release"), _ids, st.just(0.0)),
        st.tuples(st.just("state"), _ids, st.just(0.0)),
    ),
    max_size=30,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_ops)
def test_every_backend_agrees_with_the_memory_ledger(
    backend: Backend, ops: list[tuple[str, str, float]]
) -> None:
    model = MemoryLedger(1.0)
    with backend.fresh() as fresh:  # a new namespace per example
        ledger = fresh.ledger(1.0)
        for op, cid, amount in ops:
            t = now()
            if op == "reserve":
                got, want = ledger.reserve(cid, amount, t), model.reserve(cid, amount, t)
            elif op == "settle":
                got, want = ledger.settle(cid, amount, t), model.settle(cid, amount, t)
            elif op == "release":
                got, want = ledger.release(cid, t), model.release(cid, t)
            else:
                got, want = ledger.state(t), model.state(t)
            assert got == want, (op, cid, amount)
