"""A spending budget: reserve the worst case before a call, settle to the real cost after.

Every operation is atomic and returns the state it leaves, so committed plus reserved spend can
never pass the limit, however many calls run at once.
"""

from __future__ import annotations

import enum
import math
import numbers
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cachetools import LRUCache

from tiersel.call import BudgetState

__all__ = [
    "AsyncLedger",
    "Ledger",
    "ListsReservations",
    "MemoryLedger",
    "OnExpiry",
    "Reservation",
    "Standing",
    "Whereabouts",
]


class OnExpiry(str, enum.Enum):
    """What becomes of a reservation that outlives its expiry (its holder died or hung).

    - ``release`` (the default): the money comes free, as if the call had never been sent.
    - ``charge``: it is charged in full, as settled at its worst case (a later settle of its id
      charges nothing). The call may have been billed before its holder died, so this keeps the
      cap even then, at the price of money that may not have been spent.
    """

    release = "release"
    charge = "charge"


class Whereabouts(str, enum.Enum):
    """Where a reservation id stands in a ledger (`MemoryLedger.whereabouts`): ``held`` now;
    ``settled``: charged (settled, or charged in full at its expiry); ``lapsed``: freed at its
    expiry; ``unknown``: never reserved there, or settled so long ago it is forgotten."""

    held = "held"
    settled = "settled"
    lapsed = "lapsed"
    unknown = "unknown"


@dataclass(frozen=True, slots=True)
class Standing:
    """Where a reservation id stands (``where``) and, held, what it holds, or, settled, what it
    was charged (``usd``; None when that is not known)."""

    where: Whereabouts
    usd: float | None = 0.0


@dataclass(frozen=True, slots=True)
class Reservation:
    call_id: str
    amount_usd: float
    expires_at: float | None


@runtime_checkable
class ListsReservations(Protocol):
    """A sync ledger that can say which reservations it holds and where an id stands: what a
    resumed batch job reads to close the reservations its killed run left
    (`tiersel.batch.sharing.SharedStores.close_left_open`). `MemoryLedger` and the Redis
    ledger are."""

    def reservations(self, prefix: str, now: float) -> dict[str, float]: ...

    def whereabouts(self, call_ids: Iterable[str], now: float) -> dict[str, Standing]: ...


@runtime_checkable
class Ledger(Protocol):
    """Where a budget's state lives. Each method is one atomic operation."""

    def state(self, now: float) -> BudgetState:
        """The budget now (expired reservations no longer count)."""
        ...

    def reserve(
        self, call_id: str, amount_usd: float, now: float, ttl_s: float | None = None
    ) -> BudgetState | None:
        """Hold ``amount_usd`` for ``call_id``; None (and nothing held) if it does not fit."""
        ...

    def settle(self, call_id: str, actual_usd: float, now: float) -> BudgetState:
        """Charge the real cost and drop the reservation; settling an id again is a no-op."""
        ...

    def release(self, call_id: str, now: float) -> BudgetState:
        """Drop the reservation without charging (the call was shed or failed unbilled)."""
        ...


@runtime_checkable
class AsyncLedger(Protocol):
    """The async twin of `Ledger`, for budgets kept across a network (same operations, same rules).

    `Selector.asend` awaits it; `Selector.send` needs a `Ledger`.
    """

    async def state(self, now: float) -> BudgetState: ...

    async def reserve(
        self, call_id: str, amount_usd: float, now: float, ttl_s: float | None = None
    ) -> BudgetState | None: ...

    async def settle(self, call_id: str, actual_usd: float, now: float) -> BudgetState: ...

    async def release(self, call_id: str, now: float) -> BudgetState: ...


class MemoryLedger:
    """A budget in this process's memory. Thread-safe.

    ``reservation_ttl_s`` is the expiry of a reservation made without a ``ttl_s`` of its own
    (None: it is held until settled or released); ``on_expiry`` says what an expired one becomes
    (`OnExpiry`).

    >>> ledger = MemoryLedger(1.00)
    >>> ledger.reserve("a", 0.75, now=0.0) is not None, ledger.reserve("b", 0.50, now=0.0)
    (True, None)
    >>> ledger.settle("a", 0.10, now=1.0).remaining_usd
    0.9
    """

    def __init__(
        self,
        limit_usd: float,
        *,
        spent_usd: float = 0.0,
        settled_memory: int = 1_000_000,
        reservation_ttl_s: float | None = None,
        on_expiry: OnExpiry = OnExpiry.release,
    ) -> None:
        for name, value in (("limit_usd", limit_usd), ("spent_usd", spent_usd)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        ttl = reservation_ttl_s
        if ttl is not None and (
            isinstance(ttl, bool)
            or not isinstance(ttl, numbers.Real)
            or not 0 < float(ttl) < math.inf
        ):
            raise ValueError(f"reservation_ttl_s must be a number > 0 or None, got {ttl!r}")
        self.limit_usd = float(limit_usd)
        self.reservation_ttl_s = float(ttl) if ttl is not None else None
        self.on_expiry = OnExpiry(on_expiry)
        self._spent = float(spent_usd)
        self._overrun = 0.0
        self._held: dict[str, Reservation] = {}
        self._reserved = 0.0
        # Ids already settled, so a repeated settle charges nothing; bounded, oldest dropped first.
        self._settled: LRUCache[str, float] = LRUCache(maxsize=settled_memory)  # id: charged
        # Ids whose reservation lapsed (freed at its expiry): a late settle of one is a charge
        # no reservation covered (see `settle`).
        self._lapsed: LRUCache[str, bool] = LRUCache(maxsize=settled_memory)
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        gone = [r for r in self._held.values() if r.expires_at is not None and r.expires_at <= now]
        for r in gone:
            del self._held[r.call_id]
            self._reserved -= r.amount_usd
            if self.on_expiry is OnExpiry.charge and r.call_id not in self._settled:
                self._spent += r.amount_usd
                self._settled[r.call_id] = r.amount_usd
            else:
                self._lapsed[r.call_id] = True
        if not self._held:
            self._reserved = 0.0

    def _state(self) -> BudgetState:
        return BudgetState(
            limit_usd=self.limit_usd,
            spent_usd=self._spent,
            reserved_usd=max(0.0, self._reserved),
            overrun_usd=self._overrun,
        )

    def state(self, now: float) -> BudgetState:
        with self._lock:
            self._expire(now)
            return self._state()

    def reservations(self, prefix: str, now: float) -> dict[str, float]:
        """The reservations held at ``now`` whose ids start with ``prefix``: id to amount."""
        with self._lock:
            self._expire(now)
            return {i: r.amount_usd for i, r in self._held.items() if i.startswith(prefix)}

    def whereabouts(self, call_ids: Iterable[str], now: float) -> dict[str, Standing]:
        """Where each of ``call_ids`` stands at ``now`` (a `Standing`)."""
        with self._lock:
            self._expire(now)
            return {i: self._standing(i) for i in call_ids}

    def _standing(self, call_id: str) -> Standing:
        held = self._held.get(call_id)
        if held is not None:
            return Standing(Whereabouts.held, held.amount_usd)
        charged = self._settled.get(call_id)
        if charged is not None:
            return Standing(Whereabouts.settled, charged)
        if call_id in self._lapsed:
            return Standing(Whereabouts.lapsed)
        return Standing(Whereabouts.unknown)

    def reserve(
        self, call_id: str, amount_usd: float, now: float, ttl_s: float | None = None
    ) -> BudgetState | None:
        if not math.isfinite(amount_usd) or amount_usd < 0:
            raise ValueError(f"reservation must be a finite amount >= 0, got {amount_usd!r}")
        with self._lock:
            self._expire(now)
            previous = self._held.get(call_id)
            held = self._reserved - (previous.amount_usd if previous else 0.0)
            if self._spent + held + amount_usd > self.limit_usd:
                return None
            ttl = ttl_s if ttl_s is not None else self.reservation_ttl_s
            expires = now + ttl if ttl is not None else None
            self._held[call_id] = Reservation(call_id, amount_usd, expires)
            self._reserved = held + amount_usd
            return self._state()

    def settle(self, call_id: str, actual_usd: float, now: float) -> BudgetState:
        if not math.isfinite(actual_usd) or actual_usd < 0:
            raise ValueError(f"actual cost must be a finite amount >= 0, got {actual_usd!r}")
        with self._lock:
            self._expire(now)
            held = self._held.pop(call_id, None)
            if held is not None:
                self._reserved -= held.amount_usd
            if call_id in self._settled:
                # Charged already; a reservation made again under its id is only dropped.
                return self._state()
            if held is not None and actual_usd > held.amount_usd:
                self._overrun += actual_usd - held.amount_usd
            elif held is None and self._lapsed.pop(call_id, False):
                # Its reservation lapsed while the call ran, and others may have taken the
                # money: what this charge takes past the money free now is an overrun too.
                free = max(0.0, self.limit_usd - self._spent - self._reserved)
                self._overrun += max(0.0, actual_usd - free)
            self._spent += actual_usd
            self._settled[call_id] = actual_usd
            return self._state()

    def release(self, call_id: str, now: float) -> BudgetState:
        with self._lock:
            self._expire(now)
            held = self._held.pop(call_id, None)
            if held is not None:
                self._reserved -= held.amount_usd
            return self._state()

    def __repr__(self) -> str:
        s = self._state()
        return (
            f"MemoryLedger(limit_usd={s.limit_usd}, spent_usd={s.spent_usd:.6f},"
            f" reserved_usd={s.reserved_usd:.6f})"
        )
