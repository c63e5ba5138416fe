"""The rows a batch writes to OUT: one JSON object per input line, whatever became of it.

Every row has ``custom_id``, ``line``, ``status``, ``tier``, ``attempts``, ``usage``, ``cost_usd``
and either ``response`` (``{"status_code", "body"}``) or ``error`` (``{"code", "message"}``).
``cost_usd`` is everything the line was charged against the budget, over all its attempts and
runs; ``unconfirmed_usd`` is the part charged at the worst case because whether the provider
billed it is unknown (an attempt that timed out, or was in flight when a job crashed). Both are
shown to the provider's billing precision (`tiersel.cost.billed`). ``tiers_tried`` lists each
attempt's tier (empty for a line never sent) and ``escalated`` says whether they differ.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from tiersel.cost import billed
from tiersel.engine.results import CallResult

__all__ = ["Charges", "Status", "call_row", "invalid_row", "unsent_row"]


class Status(str, enum.Enum):
    """What became of a line."""

    ok = "ok"
    failed = "failed"  # sent (or refused by the policy) and did not succeed
    budget_exhausted = "budget_exhausted"  # not sent: the budget could not cover it
    invalid = "invalid"  # not a request tiersel can send


@dataclass(frozen=True, slots=True)
class Charges:
    """What one line cost the budget: the total, and the part charged without confirmation."""

    cost_usd: float = 0.0
    unconfirmed_usd: float = 0.0


def _dump(row: dict[str, Any]) -> bytes:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def call_row(
    custom_id: str, line: int, result: CallResult, charges: Charges
) -> tuple[Status, bytes]:
    """The row of a line that went through the selector (served or not)."""
    step = result.step
    reply = result.reply
    usage = result.usage
    tiers = result.tried
    row: dict[str, Any] = {
        "custom_id": custom_id,
        "line": line,
        "status": Status.ok.value if result.ok else Status.failed.value,
        "tier": str(result.tier) if result.tier is not None else None,
        "model": step.model if step is not None else None,
        "attempts": result.attempts,
        "tiers_tried": [str(t) for t in tiers],
        "escalated": len(set(tiers)) > 1,
        "best_effort": any(d.best_effort for d in result.decisions),
        "usage": (
            {
                "prompt_tokens": usage.prompt_tokens,
                "cached_tokens": usage.cached_tokens,
                "completion_tokens": usage.completion_tokens,
            }
            if usage is not None
            else None
        ),
        "cost_usd": billed(charges.cost_usd),
        "unconfirmed_usd": billed(charges.unconfirmed_usd),
    }
    if result.ok and reply is not None:
        row["response"] = {"status_code": reply.status, "body": reply.payload}
        row["error"] = None
    else:
        status_code = reply.status if reply is not None and reply.status else None
        row["response"] = None
        row["error"] = {
            "code": f"http_{status_code}" if status_code else "no_response",
            "message": result.detail or "failed",
            "status_code": status_code,
            "body": reply.payload if reply is not None else None,
        }
    status = Status.ok if result.ok else Status.failed
    return status, _dump(row)


def unsent_row(
    custom_id: str, line: int, status: Status, code: str, message: str, charges: Charges
) -> bytes:
    """The row of a valid line that was never sent (budget exhausted, no feasible tier, ...)."""
    return _dump(
        {
            "custom_id": custom_id,
            "line": line,
            "status": status.value,
            "tier": None,
            "model": None,
            "attempts": 0,
            "tiers_tried": [],
            "escalated": False,
            "best_effort": False,
            "usage": None,
            "cost_usd": billed(charges.cost_usd),
            "unconfirmed_usd": billed(charges.unconfirmed_usd),
            "response": None,
            "error": {"code": code, "message": message},
        }
    )


def invalid_row(custom_id: str, line: int, reason: str, charges: Charges = Charges()) -> bytes:
    """The row of a line that is not a request: its number and what is wrong with it.

    ``charges`` are non-zero only for a line an earlier run sent (with other settings) and lost.
    """
    message = f"line {line}: {reason}"
    return unsent_row(custom_id, line, Status.invalid, "invalid_line", message, charges)
