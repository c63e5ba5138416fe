"""A streamed call's reservation kept alive while its stream is read.

A reservation expires (a Redis ledger's after ``reservation_ttl_s``, 600 s by default) so that a
dead worker pins no money; a long stream (an agent's answer of many thousand tokens) can outlive
it, and the money its lapse frees can be reserved by other calls while the stream is still being
generated and billed. So while a stream is read, its call's reservation is made again under the
same id, with the amount it holds, at most every `RENEW_EVERY_S` (a third of the ledger's
expiry, when that is shorter): the ledger contract's re-reserve, which replaces the amount and
restarts the expiry. A dead worker's reservation still lapses, one expiry after its last renewal.

Renewals happen as chunks are read, and while none is, from the transport's watchdog thread
(`tiersel.wrap.watchdog`). A renewal that is refused (it lapsed already and the money was taken, or
spending is past the limit) or fails (a lost store) is logged on ``tiersel.engine``, once per
stream; the stream goes on, and its settle reports what it took past the cap as
``overrun_usd``.
"""

from __future__ import annotations

import inspect
import logging
import numbers
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tiersel.budget import AsyncLedger, Ledger
    from tiersel.call import BudgetState
    from tiersel.clock import Clock
    from tiersel.engine.results import CallResult

__all__ = ["RENEW_EVERY_S", "Renewal", "renewal_for"]

log = logging.getLogger("tiersel.engine")

RENEW_EVERY_S = 60.0
"""The longest time between two renewals of a streamed call's reservation, in seconds."""


class Renewal:
    """The renewals of one streamed call's reservation (``result``'s, on ``ledger``): due every
    ``every_s`` on ``clock``, from ``since``."""

    __slots__ = ("clock", "every_s", "ledger", "next_at", "result", "told")

    def __init__(
        self,
        ledger: Ledger | AsyncLedger,
        result: CallResult,
        clock: Clock,
        every_s: float,
        since: float,
    ) -> None:
        self.ledger, self.result, self.clock = ledger, result, clock
        self.every_s = every_s
        self.next_at = since + every_s
        self.told = False  # a failed renewal was logged

    @property
    def held_usd(self) -> float:
        """What the reservation covers while the stream runs: its attempt's worst case (a won
        race's loser was charged apart when the stream began)."""
        return self.result.steps[-1].worst_cost_usd

    def due(self) -> bool:
        """True (and the next renewal set ``every_s`` from now) when a renewal is due."""
        now = self.clock.now()
        if now < self.next_at:
            return False
        self.next_at = now + self.every_s
        return True

    def renew(self) -> None:
        """Reserve again what the call holds (a sync ledger's)."""
        try:
            state = self._reserve()
            assert not inspect.isawaitable(state)  # (a sync call's ledger is sync)
        except Exception as exc:
            self._failed(exc)
            return
        self._refused(state)

    async def arenew(self) -> None:
        """The async twin of `renew`, for sync and async ledgers alike."""
        try:
            done = self._reserve()
            state = await done if inspect.isawaitable(done) else done
        except Exception as exc:
            self._failed(exc)
            return
        self._refused(state)

    def _reserve(self) -> Any:
        return self.ledger.reserve(self.result.call_id, self.held_usd, self.clock.now())

    def _failed(self, exc: Exception) -> None:
        if not self.told:
            self.told = True
            log.warning(
                "tiersel: could not renew the reservation of streaming call %s (%s: %s); it"
                " lapses at its expiry unless a later renewal succeeds",
                self.result.call_id,
                type(exc).__name__,
                exc,
            )

    def _refused(self, state: BudgetState | None) -> None:
        if state is None and not self.told:
            self.told = True
            log.warning(
                "tiersel: the budget refused to renew the reservation of streaming call %s (it"
                " lapsed and its money was taken, or spending is past the limit); its settle"
                " reports what it takes past the cap as overrun_usd",
                self.result.call_id,
            )


def renewal_for(
    ledger: Ledger | AsyncLedger | None, result: CallResult, clock: Clock, since: float
) -> Renewal | None:
    """The renewals of a stream that began at ``since``: None when there is no ledger, when its
    reservations never expire (``reservation_ttl_s`` None), or when it does not say how they
    expire (a ledger of the caller's own: renewing is then its own affair)."""
    if ledger is None:
        return None
    ttl = getattr(ledger, "reservation_ttl_s", None)
    if not isinstance(ttl, numbers.Real) or not float(ttl) > 0:
        return None
    return Renewal(ledger, result, clock, min(RENEW_EVERY_S, float(ttl) / 3.0), since)
