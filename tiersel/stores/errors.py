"""What can go wrong with a shared store, and what a store does when its server does not answer."""

from __future__ import annotations

import enum

from tiersel.errors import StoreUnavailable, TierselError

__all__ = [
    "BudgetConflict",
    "LedgerFallback",
    "SignalFallback",
    "StoreClock",
    "StoreMisconfigured",
    "StoreUnavailable",
]


class LedgerFallback(str, enum.Enum):
    """What a shared budget does when its server does not answer.

    - ``fail_closed`` (the default): the operation raises `StoreUnavailable`, so no call is sent
      that the budget has not covered.
    - ``fail_open``: reservations are granted unchecked and nothing is charged while the server is
      away (one warning in the log): calls keep flowing, but the cap does not hold meanwhile.
    """

    fail_closed = "fail_closed"
    fail_open = "fail_open"


class SignalFallback(str, enum.Enum):
    """What shared overload signals do when their server does not answer.

    - ``local_memory`` (the default): this process keeps its own signals in memory meanwhile
      (one warning in the log), and goes back to the server once it answers again.
    - ``fail_closed``: the operation raises `StoreUnavailable`.
    """

    local_memory = "local_memory"
    fail_closed = "fail_closed"


class StoreClock(str, enum.Enum):
    """Whose time a Redis store's windows, cooldowns and expiries run on.

    - ``server`` (the default): Redis's own clock, so processes on different machines agree;
      the ``now`` its callers pass is not used.
    - ``caller``: the ``now`` each call passes. Every process must share one clock (a test's
      `FakeClock`, a replay's virtual time).
    """

    server = "server"
    caller = "caller"


class BudgetConflict(TierselError, ValueError):
    """A shared budget already exists under this name with another limit."""

    def __init__(self, name: str, url: str, stored_usd: float, asked_usd: float) -> None:
        self.name = name
        self.stored_usd = stored_usd
        self.asked_usd = asked_usd
        super().__init__(
            f"budget {name!r} at {url} already has a limit of ${stored_usd:.6f}, not the"
            f" ${asked_usd:.6f} asked for: give the same limit, or another budget name"
            " (?budget=NAME in the store URL)"
        )


class StoreMisconfigured(TierselError, ValueError):
    """A shared store's server answered, and refused what its URL asks for (a database it does
    not have, say): a mistake in the URL, which waiting will not mend.

    ``url`` is the store's URL without its password.
    """

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"store URL {url!r}: {problem}")
