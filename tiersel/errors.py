"""Exceptions raised by tiersel. All derive from `TierselError`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tiersel.decision import Reason


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters: a value a client
    sent may be megabytes long, and the message may be sent back to it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}...{text[-8:]} ({len(text)} chars)"


class TierselError(Exception):
    """Base class of every error tiersel raises."""


class PricingError(TierselError, ValueError):
    """A price table could not be loaded: names the file, the key path and the problem."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + problem)


class TierselWarning(UserWarning):
    """Something a user should know that does not stop the call: a retired model, a stale price
    table, a model sent unpriced. Each is warned once per process and table."""


class UnknownModel(TierselError, KeyError):
    """The model id is in no loaded price table; ``closest`` holds the nearest ids it has."""

    def __init__(self, model: str, table: str, closest: Sequence[str] = ()) -> None:
        self.model = model
        self.table = table
        self.closest = tuple(closest)
        super().__init__(model)

    @property
    def table_name(self) -> str:
        # The table by file name only: this message may reach a remote client (a refusal's
        # body), which has no business knowing where the server keeps its files.
        return "+".join(
            part.replace("\\", "/").rsplit("/", 1)[-1] for part in self.table.split("+")
        )

    def __str__(self) -> str:
        hint = f" (closest: {', '.join(self.closest)})" if self.closest else ""
        return f"unknown model {shown(self.model)}: not in the price table {self.table_name}{hint}"


class UnpricedModel(UnknownModel):
    """Under a budget, a call to a model the price table cannot price (unknown, or known with
    no price) is not sent: every call is reserved before it goes, and this one cannot be."""

    def __init__(
        self, model: str, table: str, closest: Sequence[str] = (), *, known: bool = False
    ) -> None:
        super().__init__(model, table, closest)
        self.known = known

    def __str__(self) -> str:
        if self.known:
            what = f"model {shown(self.model)} has no price in the price table {self.table_name}"
        else:
            what = super().__str__()
        return (
            f"{what}; under a budget every call is reserved before it is sent, so it is not"
            " sent (price the model with an overlay to route it)"
        )


class RetiredTier(UnknownModel):
    """The id names a tier the provider has retired and whose model id is no stand-in for it
    (a US-only or spot router: sending the global model would drop what the id asked for)."""

    def __init__(
        self, model: str, tier: str, name: str, date: object, successor: str | None
    ) -> None:
        super().__init__(model, "")
        self.tier = tier
        self.name = name
        self.date = date
        self.successor = successor

    def __str__(self) -> str:
        when = f" on {self.date}" if self.date else ""
        instead = f"; its successor is {self.successor!r}" if self.successor else ""
        return (
            f"{shown(self.model)} ({self.tier} of {self.name}) was retired{when}{instead};"
            f" it is not sent as {self.name}, which is not {self.tier} capacity"
        )


class NoFeasibleTier(TierselError):
    """No plan meets the call's requirements; ``reasons`` says why each tier was rejected."""

    def __init__(self, model: str, reasons: Sequence[Reason]) -> None:
        self.model = model
        self.reasons = tuple(reasons)
        lines = "; ".join(str(r) for r in self.reasons)
        super().__init__(f"no tier of {model} meets the requirements: {lines}")


class BudgetExhausted(NoFeasibleTier):
    """The budget cannot cover the worst-case cost of any allowed tier for this call.

    ``waited_s``: how long the call waited for other calls' reservations to settle first (the
    selector's ``budget_wait_s``), 0.0 when it did not."""

    def __init__(self, model: str, reasons: Sequence[Reason], *, waited_s: float = 0.0) -> None:
        super().__init__(model, reasons)
        self.waited_s = waited_s
        message = f"the budget cannot cover a call to {model} on any allowed tier"
        if waited_s > 0:
            message += f", after waiting {waited_s:.3g} s for money in flight to come back"
        self.args = (message,)


class RequestNotUnderstood(TierselError, ValueError):
    """A request body tiersel was asked to route is not one it can read (see `tiersel.dialects`)."""


class UnknownTier(TierselError, ValueError):
    """A call's requirements allow a tier, by name, that the price table does not declare (a
    misspelling: ``tiers=["priorty"]``)."""


class ConflictingRequirements(TierselError, ValueError):
    """A call's requirements, merged from the selector's defaults and the enclosing
    ``tiersel.requirements(...)`` blocks, contradict each other (each was valid on its own)."""


class StoreUnavailable(TierselError):
    """A shared store's server did not answer, so the operation may not have taken effect.

    ``store`` is ``"budget"`` or ``"signals"``; ``url`` is the store's URL without its password.
    """

    def __init__(self, store: str, url: str, cause: BaseException, consequence: str) -> None:
        self.store = store
        self.url = url
        self.cause = cause
        super().__init__(
            f"the {store} store at {url} is unreachable ({type(cause).__name__}: {cause});"
            f" {consequence}"
        )
