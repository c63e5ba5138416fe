"""What a routed call did, for logs and metrics: the record handed to ``on_call`` hooks, and the
response headers that carry the decision back to the caller."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tiersel.call import Requirements
from tiersel.decision import Decision, Step
from tiersel.dialects import Usage
from tiersel.engine.results import CallResult

__all__ = ["CallRecord", "CostBasis", "response_headers"]


class CostBasis(str, enum.Enum):
    """Where a call's ``cost_usd`` comes from."""

    actual = "actual"  # the usage the provider reported, at the tier that served
    estimate = "estimate"  # estimated: a stream's expected cost (in its headers), usage
    # estimated from a stream that ended before reporting it, or a call charged what its
    # attempts given up on (a timeout, a hedge's cancelled loser, a cut) are billed
    worst_case = "worst_case"  # served without reported usage: charged at its worst case
    none = "none"  # not served: nothing billed


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call routed by a `TierTransport`, as it ended. Frozen; safe to keep and log.

    ``tier`` and ``model_id`` say what the last attempt asked for (``tier`` is the tier that
    served, when the response says so); ``cost_usd`` is what the call was charged, with
    ``cost_basis`` saying how it is known; ``status`` is the HTTP status the caller got (a
    stand-in's, such as a budget stop's 402, where tiersel answered). For a stream, the record
    is made when the stream ends, with its time to first token and output rate. ``decisions``
    holds the policy's `Decision` each attempt followed and ``steps`` the step of its plan each
    attempt sent, in order (empty when no tier could be chosen: ``attempts`` is then 0 and
    ``detail`` says why).
    Holds no request headers, so no credential.
    """

    call_id: str
    ok: bool
    path: str
    model: str | None
    model_id: str | None
    tier: str | None
    status: int
    attempts: int
    cost_usd: float
    cost_basis: CostBasis
    estimated_cost_usd: float | None
    requirements: Requirements
    decisions: tuple[Decision, ...]
    usage: Usage | None
    streamed: bool
    elapsed_s: float
    ttft_s: float | None = None
    output_tps: float | None = None
    detail: str = ""
    steps: tuple[Step, ...] = ()

    @property
    def decision(self) -> Decision | None:
        """The decision the last attempt followed."""
        return self.decisions[-1] if self.decisions else None

    @property
    def tried(self) -> tuple[str, ...]:
        """The tier of each attempt, in order (``("standard", "priority")`` after a climb)."""
        return tuple(str(s.tier) for s in self.steps)


def response_headers(
    result: CallResult, cost_usd: float, basis: CostBasis
) -> list[tuple[bytes, bytes]]:
    """The ``x-tiersel-*`` headers added to the response handed back to the caller:
    ``-tier``, ``-model``, ``-attempts``, ``-tried`` (each attempt's tier), ``-cost-usd`` and
    ``-cost-basis`` (how the cost is known, a `CostBasis`), ``-call-id``; and ``-max-tokens``
    when tiersel capped the output of a request that set no cap (under a budget)."""
    tried = result.tried
    out = [
        (b"x-tiersel-call-id", result.call_id.encode()),
        (b"x-tiersel-attempts", str(len(tried)).encode()),
        (b"x-tiersel-tried", ",".join(tried).encode()),
        (b"x-tiersel-cost-usd", f"{cost_usd:.9f}".encode()),
        (b"x-tiersel-cost-basis", basis.value.encode()),
    ]
    if result.tier is not None:
        out.append((b"x-tiersel-tier", result.tier.encode()))  # a `Tier` is a str: its value
    step = result.step
    if step is not None:
        out.append((b"x-tiersel-model", step.model.encode()))
    if result.max_tokens_set is not None:
        out.append((b"x-tiersel-max-tokens", str(result.max_tokens_set).encode()))
    return out
