"""What one attempt's reply means and costs: its outcome for the signals, the tier that
served it, and its charge."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from tiersel.cost import charge
from tiersel.decision import Step
from tiersel.dialects import (
    Classified,
    Usage,
    classify,
)
from tiersel.engine.results import Reply, StreamEnd
from tiersel.pricing import ModelPrices
from tiersel.signals import (
    Outcome,
    SignalKey,
)
from tiersel.tiers import TierPriors


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


_PACE_SEEN = 20
"""Tokens a stream must have shown for its own pace to be taken as the provider's."""

_PACE_MOST = 4.0
"""The most a stream's own pace is taken as, in times the tier's expected pace: a reader that
takes in buffered chunks in a burst sees a pace no provider made."""


def generated_by_close(usage: Usage, end: StreamEnd, priors: TierPriors, cap: int) -> Usage:
    """The usage a stream the caller closed before its end is billed (its transport's close
    too): the provider generates at its own pace whether or not the caller reads, until the
    close, so at least the tokens seen and at most ``cap`` (0: no cap known; the tokens seen,
    counted from bytes, are held to it too). Generation is taken to begin at the tier's
    expected first token (or the one seen, if sooner: a reader that began reading late saw it
    late) and to run at the stream's own pace over `_PACE_SEEN` tokens or more (at most
    `_PACE_MOST` times the tier's expected pace), else at the expected pace, until the close.
    A caller that read a few chunks, paused while the rest was generated, then closed the
    stream, was charged the few."""
    expected = priors.ttft_s + priors.prefill_s(usage.uncached_tokens)
    ttft = expected if end.ttft_s is None else min(end.ttft_s, expected)
    pace = priors.output_tps
    if end.output_tps is not None and usage.completion_tokens >= _PACE_SEEN:
        pace = min(end.output_tps, _PACE_MOST * priors.output_tps)
    made = max(usage.completion_tokens, int(pace * max(0.0, end.elapsed_s - ttft)))
    if cap > 0:
        made = min(made, cap)
    if made == usage.completion_tokens:
        return usage
    return replace(usage, completion_tokens=made)
