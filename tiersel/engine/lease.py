"""A streamed call's reservation kept alive while its stream runs.

A reservation expires (a Redis ledger's after ``reservation_ttl_s``, 600 s by default) so that a
dead worker pins no money; a long stream (an agent's answer of many thousand tokens) can outlive
it, and the money its lapse frees can be reserved by other calls while the stream is still being
generated and billed. So while a stream is read, its call's reservation is made again under the
same id, with the same amount, at most every `RENEW_EVERY_S` (a third of the ledger's expiry,
when that is shorter): the ledger contract's re-reserve, which replaces the amount and restarts
the expiry. A dead worker's reservation still lapses, one expiry after its last renewal.

A renewal that is refused (the reservation lapsed already, say while the store was away, and the
money was taken) or meets a lost store is logged on ``tiersel.engine``; the stream goes on, and
its settle reports what it took past the cap as ``overrun_usd``.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING

from tiersel.errors import StoreUnavailable

if TYPE_CHECKING:
    from tiersel.budget import AsyncLedger, Ledger
    from tiersel.call import BudgetState
    from tiersel.clock import Clock
    from tiersel.engine.results import CallResult

__all__ = ["RENEW_EVERY_S", "Lease", "arenew", "lease_for", "renew"]

log = logging.getLogger("tiersel.engine")

RENEW_EVERY_S = 60.0
"""The longest time between two renewals of a streamed call's reservation, in seconds."""

_UNSAID = object()


class Lease:
    """When a stream's reservation is next due for renewal (``every_s`` apart, on ``clock``)."""

    __slots__ = ("clock", "every_s", "next_at")

    def __init__(self, clock: Clock, every_s: float, since: float) -> None:
        self.clock = clock
        self.every_s = every_s
        self.next_at = since + every_s

    def due(self) -> bool:
        """True (and the next renewal set ``every_s`` from now) when a renewal is due."""
        now = self.clock.now()
        if now < self.next_at:
            return False
        self.next_at = now + self.every_s
        return True


def lease_for(ledger: object, clock: Clock, since: float) -> Lease | None:
    """The lease of a stream that began at ``since`` under ``ledger``: None when there is no
    ledger, when its reservations never expire (``reservation_ttl_s`` None), or when it does
    not say how they expire (a ledger of the caller's own: renewing is then its own affair)."""
    if ledger is None:
        return None
    ttl = getattr(ledger, "reservation_ttl_s", _UNSAID)
    if ttl is None or ttl is _UNSAID:
        return None
    assert isinstance(ttl, (int, float))
    return Lease(clock, min(RENEW_EVERY_S, ttl / 3.0), since)


def renew(ledger: Ledger, result: CallResult, now: float) -> None:
    """Reserve again what ``result``'s streamed attempt holds (see the module's docstring)."""
    try:
        state = ledger.reserve(result.call_id, _held(result), now)
    except StoreUnavailable as exc:
        _lost(result, exc)
        return
    _refused(result, state)


async def arenew(ledger: Ledger | AsyncLedger, result: CallResult, now: float) -> None:
    """The async twin of `renew`, for sync and async ledgers alike."""
    try:
        done = ledger.reserve(result.call_id, _held(result), now)
        state = await done if inspect.isawaitable(done) else done
    except StoreUnavailable as exc:
        _lost(result, exc)
        return
    _refused(result, state)


def _held(result: CallResult) -> float:
    """What the streamed attempt reserved: its step's worst case."""
    return result.steps[-1].worst_cost_usd


def _lost(result: CallResult, exc: StoreUnavailable) -> None:
    log.warning(
        "tiersel: could not renew the reservation of streaming call %s (%s); it lapses at its"
        " expiry if the store stays away",
        result.call_id,
        exc,
    )


def _refused(result: CallResult, state: BudgetState | None) -> None:
    if state is None:
        log.warning(
            "tiersel: the reservation of streaming call %s lapsed and its money was taken; its"
            " settle reports what it takes past the cap as overrun_usd",
            result.call_id,
        )
