"""Cost of a call from its token counts, per tier."""

from __future__ import annotations

from dataclasses import dataclass

from tiersel.call import Call
from tiersel.pricing import ModelPrices, TierPrice

__all__ = ["BILLING_DECIMALS", "CostEstimate", "billed", "charge", "estimate_costs", "tier_cost"]

BILLING_DECIMALS = 10
"""Prices are quoted to at most four decimals of a dollar per million tokens, so every bill is a
whole multiple of $1e-10: a cost shown to 10 decimals loses nothing but float noise."""


def billed(usd: float) -> float:
    """``usd`` as a bill shows it: rounded to `BILLING_DECIMALS` (``0.0029372999999999995`` is
    ``0.0029373``). Sums kept by the ledger stay exact; only what is shown is rounded."""
    return round(usd, BILLING_DECIMALS)


@dataclass(frozen=True, slots=True)
class CostEstimate:
    """A call's cost on one tier: the worst case (all of ``max_output_tokens``) and the expected."""

    tier: str
    worst_usd: float
    expected_usd: float


def tier_cost(
    price: TierPrice, input_tokens: int, cached_input_tokens: int, output_tokens: int
) -> float:
    """USD for the given tokens on one tier. Cached input is billed at the cached rate."""
    uncached = max(0, input_tokens - cached_input_tokens)
    return (
        uncached * price.input_per_token
        + cached_input_tokens * price.cached_input_per_token
        + output_tokens * price.output_per_token
    )


def estimate_costs(call: Call, prices: ModelPrices) -> dict[str, CostEstimate]:
    """Worst-case and expected cost of ``call`` on every tier the model offers (the worst case
    counts the prompt at its bound, ``call.input_tokens_bound``).

    >>> from tiersel.pricing import load_pricing
    >>> p = load_pricing().model("kimi-k3")
    >>> c = Call(model="kimi-k3", input_tokens=1_000_000, max_output_tokens=1)
    >>> round(estimate_costs(c, p)["priority"].worst_usd, 6)
    3.750019
    """
    out: dict[str, CostEstimate] = {}
    expected_out = (
        call.expected_output_tokens
        if call.expected_output_tokens is not None
        else call.max_output_tokens
    )
    for name, price in prices.tiers.items():
        base = tier_cost(price, call.input_tokens, call.cached_input_tokens, 0)
        bound = tier_cost(price, call.input_tokens_bound, call.cached_input_tokens, 0)
        out[name] = CostEstimate(
            tier=name,
            worst_usd=bound + call.max_output_tokens * price.output_per_token,
            expected_usd=base + expected_out * price.output_per_token,
        )
    return out


def charge(
    prices: ModelPrices, tier: str, prompt_tokens: int, cached_tokens: int, completion_tokens: int
) -> float:
    """The actual cost of a served call from its reported usage, at the tier that served it."""
    price = (
        prices.tiers.get(tier) or prices.tiers.get("standard") or next(iter(prices.tiers.values()))
    )
    return tier_cost(price, prompt_tokens, min(cached_tokens, prompt_tokens), completion_tokens)
