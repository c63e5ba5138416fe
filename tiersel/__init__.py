"""tiersel: choose the cheapest LLM serving tier that meets each call's requirements.

>>> import tiersel
>>> sel = tiersel.Selector()
>>> call = tiersel.Call(model="kimi-k3", input_tokens=1500, max_output_tokens=300)
>>> sel.decide(call, tiersel.Requirements(deadline_s=30)).tier
<Tier.standard: 'standard'>

``import tiersel`` loads nothing but this module: each public name loads its own module the first
time it is used (``tiersel.Selector`` the decision and the send path; ``tiersel.TierTransport`` the
wrapper, and httpx2 where installed; ``tiersel.run_batch`` the batch runner). The simulator and the
replay live in `tiersel.sim` and `tiersel.replay`, loaded when imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tiersel.batch import BatchSummary, arun_batch, run_batch
    from tiersel.budget import AsyncLedger, Ledger, MemoryLedger, OnExpiry
    from tiersel.call import BudgetState, Call, Requirements
    from tiersel.clock import Clock, FakeClock, ScaledClock, SystemClock
    from tiersel.cost import CostEstimate, estimate_costs
    from tiersel.decision import Decision, Reason, ReasonCode, Step, Verdict
    from tiersel.dialects import Dialect, Usage
    from tiersel.dispatch import AttemptRecord, CallResult
    from tiersel.errors import (
        BudgetExhausted,
        ConflictingRequirements,
        NoFeasibleTier,
        PricingError,
        RequestNotUnderstood,
        RetiredTier,
        TierselError,
        TierselWarning,
        UnknownModel,
        UnpricedModel,
    )
    from tiersel.policy import CheapestFeasible, FixedTier, Policy, Signals
    from tiersel.pricing import ModelPrices, Pricing, TierPrice, load_pricing
    from tiersel.selector import FIREWORKS_BASE_URL, Selector
    from tiersel.signals import (
        AsyncSignalStore,
        CircuitState,
        MemorySignalStore,
        Observation,
        Outcome,
        SignalConfig,
        SignalKey,
        SignalStore,
        TierHealth,
        TierStats,
    )
    from tiersel.tiers import Tier, TierPriors, TierSpec
    from tiersel.wrap import (
        HINT_HEADERS,
        AsyncTierTransport,
        CallHook,
        CallRecord,
        CostBasis,
        InvalidHint,
        TierTransport,
        current_requirements,
        requirements,
    )

# Every public name, and the module it lives in: loaded on first use (PEP 562), so `import tiersel`
# costs next to nothing and a program loads only what it uses.
_LAZY = {
    "AsyncLedger": "tiersel.budget",
    "Ledger": "tiersel.budget",
    "MemoryLedger": "tiersel.budget",
    "OnExpiry": "tiersel.budget",
    "BudgetState": "tiersel.call",
    "Call": "tiersel.call",
    "Requirements": "tiersel.call",
    "Clock": "tiersel.clock",
    "FakeClock": "tiersel.clock",
    "ScaledClock": "tiersel.clock",
    "SystemClock": "tiersel.clock",
    "CostEstimate": "tiersel.cost",
    "estimate_costs": "tiersel.cost",
    "Decision": "tiersel.decision",
    "Reason": "tiersel.decision",
    "ReasonCode": "tiersel.decision",
    "Step": "tiersel.decision",
    "Verdict": "tiersel.decision",
    "Dialect": "tiersel.dialects",
    "Usage": "tiersel.dialects",
    "AttemptRecord": "tiersel.dispatch",
    "CallResult": "tiersel.dispatch",
    "BudgetExhausted": "tiersel.errors",
    "ConflictingRequirements": "tiersel.errors",
    "NoFeasibleTier": "tiersel.errors",
    "PricingError": "tiersel.errors",
    "RequestNotUnderstood": "tiersel.errors",
    "RetiredTier": "tiersel.errors",
    "TierselError": "tiersel.errors",
    "TierselWarning": "tiersel.errors",
    "UnknownModel": "tiersel.errors",
    "UnpricedModel": "tiersel.errors",
    "CheapestFeasible": "tiersel.policy",
    "FixedTier": "tiersel.policy",
    "Policy": "tiersel.policy",
    "Signals": "tiersel.policy",
    "ModelPrices": "tiersel.pricing",
    "Pricing": "tiersel.pricing",
    "TierPrice": "tiersel.pricing",
    "load_pricing": "tiersel.pricing",
    "FIREWORKS_BASE_URL": "tiersel.selector",
    "Selector": "tiersel.selector",
    "AsyncSignalStore": "tiersel.signals",
    "CircuitState": "tiersel.signals",
    "MemorySignalStore": "tiersel.signals",
    "Observation": "tiersel.signals",
    "Outcome": "tiersel.signals",
    "SignalConfig": "tiersel.signals",
    "SignalKey": "tiersel.signals",
    "SignalStore": "tiersel.signals",
    "TierHealth": "tiersel.signals",
    "TierStats": "tiersel.signals",
    "Tier": "tiersel.tiers",
    "TierPriors": "tiersel.tiers",
    "TierSpec": "tiersel.tiers",
    "BatchSummary": "tiersel.batch",
    "arun_batch": "tiersel.batch",
    "run_batch": "tiersel.batch",
    "HINT_HEADERS": "tiersel.wrap",
    "AsyncTierTransport": "tiersel.wrap",
    "CallHook": "tiersel.wrap",
    "CallRecord": "tiersel.wrap",
    "CostBasis": "tiersel.wrap",
    "InvalidHint": "tiersel.wrap",
    "TierTransport": "tiersel.wrap",
    "current_requirements": "tiersel.wrap.context",
    "requirements": "tiersel.wrap.context",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tiersel' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "FIREWORKS_BASE_URL",
    "HINT_HEADERS",
    "AsyncLedger",
    "AsyncSignalStore",
    "AsyncTierTransport",
    "AttemptRecord",
    "BatchSummary",
    "BudgetExhausted",
    "BudgetState",
    "Call",
    "CallHook",
    "CallRecord",
    "CallResult",
    "CheapestFeasible",
    "CircuitState",
    "Clock",
    "ConflictingRequirements",
    "CostBasis",
    "CostEstimate",
    "Decision",
    "Dialect",
    "FakeClock",
    "FixedTier",
    "InvalidHint",
    "Ledger",
    "MemoryLedger",
    "MemorySignalStore",
    "ModelPrices",
    "NoFeasibleTier",
    "Observation",
    "OnExpiry",
    "Outcome",
    "Policy",
    "Pricing",
    "PricingError",
    "Reason",
    "ReasonCode",
    "RequestNotUnderstood",
    "Requirements",
    "RetiredTier",
    "ScaledClock",
    "Selector",
    "SignalConfig",
    "SignalKey",
    "SignalStore",
    "Signals",
    "Step",
    "SystemClock",
    "Tier",
    "TierHealth",
    "TierPrice",
    "TierPriors",
    "TierSpec",
    "TierStats",
    "TierTransport",
    "TierselError",
    "TierselWarning",
    "UnknownModel",
    "UnpricedModel",
    "Usage",
    "Verdict",
    "__version__",
    "arun_batch",
    "current_requirements",
    "estimate_costs",
    "load_pricing",
    "requirements",
    "run_batch",
]
