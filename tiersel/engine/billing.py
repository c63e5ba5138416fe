"""What one attempt's reply means and costs: its outcome for the signals, the tier that
served it, and its charge."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tiersel.cost import charge
from tiersel.decision import Step
from tiersel.dialects import (
    Classified,
    Usage,
    classify,
)
from tiersel.engine.results import Reply
from tiersel.pricing import ModelPrices
from tiersel.signals import (
    Outcome,
    SignalKey,
)


def bill(prices: ModelPrices, step: Step, usage: Usage | None) -> tuple[float, str]:
    """What a served attempt is charged, and the tier it is billed at: its usage at the tier
    that served (when the response says), or with no usage its worst case."""
    if usage is None:
        return step.worst_cost_usd, step.tier  # charge the worst case rather than nothing
    served = served_tier(usage, step.tier, prices.tiers)
    cost = charge(prices, served, usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens)
    return cost, served


def key_of(keys: tuple[SignalKey, ...], tier: str) -> SignalKey:
    for key in keys:
        if key.tier == tier:
            return key
    raise KeyError(tier)


def classify_reply(reply: Reply) -> Classified:
    """What one attempt's reply means: its outcome for the signals, and whether to try again."""
    if reply.timed_out:
        return Classified(Outcome.timeout, True, None, False, "timed out")
    if reply.error is not None:
        return Classified(Outcome.error, True, None, False, reply.error)
    return classify(reply.status, reply.headers, reply.payload, wall_now=reply.wall_s)


def reply_tps(usage: Usage | None, elapsed: float, ttft: float | None) -> float | None:
    """The output rate of a reply read whole: its tokens over the time after the first token.

    That time is not seen, so the tier's expected TTFT (``ttft``) is taken off the call's time,
    but at most half of it. Tokens over the whole call would understate the rate, most for short
    outputs, and a latency estimate built on it (TTFT plus tokens over rate) would count the TTFT
    twice: replays of the bundled traces then put a 400-token call on standard at 16 s where it
    took 12, and bought fast for it.
    """
    if usage is None or usage.completion_tokens <= 0 or elapsed <= 0:
        return None
    generating = elapsed - ttft if ttft is not None else elapsed
    return usage.completion_tokens / max(generating, 0.5 * elapsed)


def served_tier(usage: Usage, asked: str, offered: Mapping[str, Any]) -> str:
    """Bill by the tier that served, when the response says so and it is one of the model's."""
    served = usage.served_tier
    if served is None or served == asked or asked not in ("standard", "priority"):
        return asked
    return served if served in offered else asked
