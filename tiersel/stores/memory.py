"""The in-memory stores behind the async protocols, so ``memory://`` serves async callers too."""

from __future__ import annotations

from tiersel.budget import MemoryLedger
from tiersel.call import BudgetState
from tiersel.signals import MemorySignalStore, Observation, SignalKey, TierStats

__all__ = ["AsyncMemoryLedger", "AsyncMemorySignalStore"]


class AsyncMemoryLedger:
    """An `AsyncLedger` over a `MemoryLedger` (its operations never wait, so none blocks a loop)."""

    def __init__(self, ledger: MemoryLedger) -> None:
        self.ledger = ledger

    @property
    def limit_usd(self) -> float:
        return self.ledger.limit_usd

    @property
    def reservation_ttl_s(self) -> float | None:
        return self.ledger.reservation_ttl_s

    async def state(self, now: float) -> BudgetState:
        return self.ledger.state(now)

    async def reserve(
        self, call_id: str, amount_usd: float, now: float, ttl_s: float | None = None
    ) -> BudgetState | None:
        return self.ledger.reserve(call_id, amount_usd, now, ttl_s)

    async def settle(self, call_id: str, actual_usd: float, now: float) -> BudgetState:
        return self.ledger.settle(call_id, actual_usd, now)

    async def release(self, call_id: str, now: float) -> BudgetState:
        return self.ledger.release(call_id, now)

    async def aclose(self) -> None:
        """Nothing to close; here so every async store can be closed alike."""

    def __repr__(self) -> str:
        return f"AsyncMemoryLedger({self.ledger!r})"


class AsyncMemorySignalStore:
    """An `AsyncSignalStore` over a `MemorySignalStore`."""

    def __init__(self, store: MemorySignalStore) -> None:
        self.store = store
        self.config = store.config

    async def record(self, key: SignalKey, obs: Observation, now: float) -> TierStats:
        return self.store.record(key, obs, now)

    async def stats(self, key: SignalKey, now: float) -> TierStats:
        return self.store.stats(key, now)

    async def claim_probe(self, key: SignalKey, now: float, interval_s: float) -> bool:
        return self.store.claim_probe(key, now, interval_s)

    async def aclose(self) -> None:
        """Nothing to close; here so every async store can be closed alike."""

    def __repr__(self) -> str:
        return f"AsyncMemorySignalStore({self.store!r})"
