"""The budget's part of a call: the output cap a body with none is sent with, and how long a
call the budget turned down waits for money in flight."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tiersel.call import BudgetState, Call, Requirements
from tiersel.dialects import (
    Dialect,
    max_output_tokens,
)
from tiersel.engine.state import FlowHost, Progress
from tiersel.errors import NoFeasibleTier, RequestNotUnderstood
from tiersel.pricing import ModelPrices


def output_cap(sel: FlowHost, body: Mapping[str, Any], dialect: Dialect, call: Call) -> int | None:
    """The ``max_tokens`` to put in a body that states no output cap, or None to send it as it is.

    Under a budget, a reservation bounds a call's cost only if its output is bounded, so a body
    with no cap gets one, as the selector's ``unbounded_output`` says: ``"share"`` sizes it to
    the call's share of the money left (`shared_cap`, at most ``default_max_output_tokens``,
    which this returns as the ceiling); ``"cap"`` sends ``default_max_output_tokens``
    (``call.max_output_tokens``); ``"refuse"`` refuses the call. Without a budget the body goes
    as the caller wrote it.
    """
    if not sel.ledger_enabled or max_output_tokens(body, dialect) is not None:
        return None
    if sel.unbounded_output == "refuse":
        raise RequestNotUnderstood(
            "the request sets no max_tokens: under a budget tiersel needs an output cap to bound"
            " its cost (set max_tokens, or Selector(unbounded_output='share') to have tiersel"
            " set one)"
        )
    return call.max_output_tokens


OUTPUT_SHARE = 0.25
"""The share of the money left that a call with no output cap may reserve (``"share"``)."""
OUTPUT_FLOOR = 256
"""The least output cap ``"share"`` sets: below it a call waits for money or is refused."""


def shared_cap(
    ceiling: int, budget: BudgetState, prices: ModelPrices, call: Call, req: Requirements
) -> int:
    """The output cap for a call that states none: the most tokens `OUTPUT_SHARE` of the money
    left buys on the allowed tier with the cheapest output, after the prompt's bound, between
    `OUTPUT_FLOOR` and ``ceiling``. Each call in flight takes a share of what the ones before it
    left, so many calls at once each get a smaller cap rather than most being refused."""
    names = prices.default_tiers if req.tiers is None else req.tiers
    allowed = [p for name, p in prices.tiers.items() if name in names]
    if not allowed:
        return ceiling
    price = min(allowed, key=lambda p: p.output_per_token)
    if price.output_per_token <= 0:
        return ceiling
    share = budget.remaining_usd * OUTPUT_SHARE - call.input_tokens_bound * price.input_per_token
    affordable = int(share / price.output_per_token) if share > 0 else 0
    return max(min(ceiling, OUTPUT_FLOOR), min(ceiling, affordable))


_FIRST_POLL_S = 0.05


def money_wait(
    sel: FlowHost,
    need: float,
    budget: BudgetState,
    req: Requirements,
    max_wait: Callable[[], float | None] | None,
    prog: Progress,
) -> float | None:
    """How long a call the budget turned down waits before it looks again, or None to refuse.

    It waits only while other calls hold reservations whose settling would free enough (their
    bound is what they reserved; what they are billed is usually far less), within the
    selector's ``budget_wait_s``, the client's timeout (``max_wait()``) and half the time its
    deadline leaves. Polls start at 50 ms and double up to 1 s. Each wait is recorded in ``prog``.
    """
    if budget.reserved_usd <= 0 or need > budget.limit_usd - budget.spent_usd:
        return None  # nothing in flight, or not enough even once all of it comes back
    bound = sel.budget_wait_s
    if req.deadline_s is not None:
        bound = min(bound, prog.money_waited + req.deadline_s / 2)
    elif max_wait is not None:
        timeout = max_wait()
        if timeout is not None:
            bound = min(bound, timeout)
    room = bound - prog.money_waited
    if room < _FIRST_POLL_S:
        return None  # too little time left for a look that could change anything
    pause: float = min(_FIRST_POLL_S * 2.0 ** min(prog.money_polls, 5), 1.0, room)
    prog.money_waited += pause
    prog.money_polls += 1
    prog.waited = True
    return pause


def only_budget(exc: NoFeasibleTier, *, cooldowns_too_long: bool = False) -> bool:
    """Whether the budget is all that bars the call: every tier not excluded by name was
    rejected for its cost against the money left (or, with ``cooldowns_too_long``, for a cooldown
    the call cannot wait out)."""
    ignored = {"not_allowed", "not_offered", "opt_in"}
    if cooldowns_too_long:
        ignored.add("cooldown")
    codes = {r.code for r in exc.reasons} - ignored
    return codes == {"budget"}
