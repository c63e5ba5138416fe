"""The end of a call whose reply was a stream: its timings recorded, its usage charged, its
budget settled."""

from __future__ import annotations

from dataclasses import replace

from tiersel.cost import charge
from tiersel.engine.billing import generated_by_close, served_tier
from tiersel.engine.effects import Flow, Notify, Record, Release, Settle
from tiersel.engine.results import AttemptRecord, CallResult, StreamEnd
from tiersel.engine.state import FlowHost
from tiersel.signals import (
    Observation,
    Outcome,
    SignalKey,
)


def stream_flow(sel: FlowHost, result: CallResult, end: StreamEnd) -> Flow:
    """Complete a call whose reply was a stream (``result.pending_stream``), once it has ended.

    Records the stream's timings into the signals, charges the usage that arrived (the worst case
    when a complete stream reported none), settles the budget and notifies, as `call_flow` does
    for a reply that was read whole.
    """
    decision = result.decisions[-1]
    step = result.steps[-1]
    prices = sel.pricing.model(step.model)
    key = SignalKey(sel.endpoint, prices.name, step.tier)
    if end.usage_estimated and end.usage is not None and end.outcome is Outcome.ok:
        # Closed by its caller before its end (a stream that broke stopped generating then).
        priors = prices.tiers[step.tier].spec.priors
        end = replace(end, usage=generated_by_close(end.usage, end, priors, result.output_cap))
    ttft = end.ttft_s
    if ttft is not None:  # the signals learn a TTFT less its prompt's prefill
        usage = end.usage
        uncached = usage.uncached_tokens if usage is not None else result.uncached_input_tokens
        ttft = prices.tiers[step.tier].spec.priors.base_ttft(ttft, uncached)
    yield Record(
        key,
        Observation(
            end.outcome,
            latency_s=end.elapsed_s,
            ttft_s=ttft,
            output_tps=end.output_tps,
        ),
        None if end.usage_estimated else end.usage,  # an estimate says nothing of the cache
        result.prompt,  # read before the stream began, however it ended
    )
    served = step.tier
    cost = result.cost_usd  # what the call was billed before its stream (a hedge's loser)
    if end.usage is not None:
        served = served_tier(end.usage, step.tier, prices.tiers)
        cost += charge(
            prices,
            served,
            end.usage.prompt_tokens,
            end.usage.cached_tokens,
            end.usage.completion_tokens,
        )
    elif end.outcome is Outcome.ok:
        cost += step.worst_cost_usd
    if sel.ledger_enabled:
        if cost > 0 or end.outcome is Outcome.ok:
            yield Settle(result.call_id, cost - result.sunk_usd)  # (charged already)
        else:
            yield Release(result.call_id)
    status = result.reply.status if result.reply is not None else 0
    yield Notify(
        AttemptRecord(
            result.call_id,
            result.attempts,
            prices.name,
            served,
            decision,
            end.outcome,
            status,
            end.elapsed_s,
            cost,
            end.detail,
        )
    )
    return replace(
        result,
        ok=end.outcome is Outcome.ok,
        cost_usd=cost,
        usage=end.usage,
        tier=served,
        detail=end.detail,
        pending_stream=False,
    )
