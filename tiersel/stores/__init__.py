"""Where signals and budgets live: chosen by URL, ``memory://`` (default) or ``redis://...``.

>>> from tiersel.stores import open_ledger, open_signal_store
>>> signals = open_signal_store("memory://")
>>> ledger = open_ledger("memory://", limit_usd=10.0)

With ``redis://host:port/db`` (the extra ``tiersel[redis]``), every process and machine that
opens the same URL shares one budget and one picture of overload. The Redis stores themselves
are in `tiersel.stores.redis_ledger` and `tiersel.stores.redis_signals`.
"""

from tiersel.stores.errors import (
    BudgetConflict,
    LedgerFallback,
    SignalFallback,
    StoreClock,
    StoreMisconfigured,
    StoreUnavailable,
)
from tiersel.stores.memory import AsyncMemoryLedger, AsyncMemorySignalStore
from tiersel.stores.url import (
    StoreURL,
    aclose_store,
    close_store,
    open_async_ledger,
    open_async_signal_store,
    open_ledger,
    open_signal_store,
    parse_store_url,
)

__all__ = [
    "AsyncMemoryLedger",
    "AsyncMemorySignalStore",
    "BudgetConflict",
    "LedgerFallback",
    "SignalFallback",
    "StoreClock",
    "StoreMisconfigured",
    "StoreURL",
    "StoreUnavailable",
    "aclose_store",
    "close_store",
    "open_async_ledger",
    "open_async_signal_store",
    "open_ledger",
    "open_signal_store",
    "parse_store_url",
]
