"""What an engine is built from, checked when it is built: a part of the wrong kind is a
`TypeError` and a setting out of its range a `ValueError`, each naming the parameter. A wrong
part failed later, at the first call, as an ``AttributeError`` that named neither (``'float'
object has no attribute 'state'`` for ``ledger=5.0``)."""

from __future__ import annotations

import numbers
from typing import Any

from tiersel.budget import AsyncLedger, Ledger
from tiersel.call import MAX_ATTEMPTS, Call, Requirements
from tiersel.clock import Clock
from tiersel.errors import shown
from tiersel.pricing import Pricing
from tiersel.signals import AsyncSignalStore, SignalStore

__all__ = ["check_call", "check_parts", "check_requirements", "check_settings"]


def check_parts(
    pricing: object, policy: object, signals: object, clock: object, ledger: object
) -> None:
    """`TypeError` naming the first part that is not of its kind (None is each one's default)."""
    wanted: tuple[tuple[str, object, bool, str], ...] = (
        ("pricing", pricing, isinstance(pricing, Pricing), "a Pricing (tiersel.load_pricing())"),
        ("policy", policy, callable(policy), "a Policy: a callable, such as CheapestFeasible()"),
        (
            "signals",
            signals,
            isinstance(signals, (SignalStore, AsyncSignalStore)),
            "a signal store (record, stats, claim_probe), such as MemorySignalStore()",
        ),
        ("clock", clock, isinstance(clock, Clock), "a Clock (now, sleep, asleep): FakeClock()"),
        (
            "ledger",
            ledger,
            isinstance(ledger, (Ledger, AsyncLedger)),
            "a ledger (state, reserve, settle, release), such as MemoryLedger(limit_usd)",
        ),
    )  # fmt: skip
    for name, value, ok, kind in wanted:
        if value is not None and not ok:
            raise TypeError(f"{name}={shown(value)} is not {kind}")


def check_settings(
    max_attempts: Any,
    backoff_s: Any,
    unbounded_output: Any,
    budget_wait_s: Any,
    default_max_output_tokens: Any,
    bytes_per_token: Any,
) -> None:
    """`TypeError` for a setting of the wrong type, `ValueError` for one out of its range."""
    for name, value in (
        ("max_attempts", max_attempts),
        ("default_max_output_tokens", default_max_output_tokens),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {shown(value)}")
    for name, value in (
        ("backoff_s", backoff_s),
        ("budget_wait_s", budget_wait_s),
        ("bytes_per_token", bytes_per_token),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number, got {shown(value)}")
    if not 1 <= max_attempts <= MAX_ATTEMPTS:
        raise ValueError(f"max_attempts must be 1 to {MAX_ATTEMPTS}, got {max_attempts}")
    if not backoff_s >= 0:
        raise ValueError(f"backoff_s must be >= 0, got {backoff_s}")
    if unbounded_output not in ("share", "cap", "refuse"):
        raise ValueError(
            f"unbounded_output must be 'share', 'cap' or 'refuse', got {unbounded_output!r}"
        )
    if not budget_wait_s >= 0:
        raise ValueError(f"budget_wait_s must be >= 0, got {budget_wait_s!r}")
    if default_max_output_tokens < 1:
        raise ValueError(f"default_max_output_tokens must be >= 1, got {default_max_output_tokens}")
    if not bytes_per_token > 0:
        raise ValueError(f"bytes_per_token must be > 0, got {bytes_per_token!r}")


def check_requirements(where: str, requirements: object) -> None:
    """`TypeError` unless ``requirements`` is a `Requirements` (or None)."""
    if requirements is not None and not isinstance(requirements, Requirements):
        raise TypeError(
            f"{where}: requirements={shown(requirements)} is not a tiersel.Requirements"
            " (Requirements(**fields) builds one from a dict)"
        )


def check_call(where: str, call: object) -> None:
    """`TypeError` unless ``call`` is a `Call`."""
    if not isinstance(call, Call):
        raise TypeError(
            f"{where}: call={shown(call)} is not a tiersel.Call (Call(**fields) builds one)"
        )
