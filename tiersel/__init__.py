"""tiersel: choose the cheapest LLM serving tier that meets each call's requirements.

>>> import tiersel
>>> sel = tiersel.Selector()
>>> call = tiersel.Call(model="kimi-k3", input_tokens=1500, max_output_tokens=300)
>>> sel.decide(call, tiersel.Requirements(deadline_s=30)).tier
<Tier.standard: 'standard'>

These names are the user's API: the doors (`Selector`, `TierTransport`, `AsyncTierTransport`,
`requirements`, `run_batch`), what a call states and gets back (`Call`, `Requirements`,
`Decision`, `CallResult`, `CallRecord`), the policies, the errors, and the stores' openers. The rest
lives in named submodules: `tiersel.signals` (observations, health, signal stores),
`tiersel.pricing` and `tiersel.tiers` (price tables), `tiersel.budget` (ledgers), `tiersel.clock`,
`tiersel.dialects`, `tiersel.schedule` and `tiersel.hedge` (the model).

``import tiersel`` loads nothing but this module: each public name loads its own module the first
time it is used (``tiersel.Selector`` the decision and the send path; ``tiersel.TierTransport`` the
wrapper, and httpx2 where installed; ``tiersel.run_batch`` the batch runner). The simulator and the
replay live in `tiersel.sim` and `tiersel.replay`, loaded when imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tiersel.batch import BatchSummary, arun_batch, run_batch
    from tiersel.budget import MemoryLedger
    from tiersel.call import Call, Requirements
    from tiersel.clock import FakeClock
    from tiersel.decision import (
        Decision,
        Reason,
        ReasonCode,
        Step,
    )
    from tiersel.engine.results import AttemptRecord, CallResult
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
    from tiersel.http.context import current_requirements, requirements
    from tiersel.http.hints import InvalidHint
    from tiersel.policy import CheapestFeasible, FixedTier
    from tiersel.pricing import load_pricing
    from tiersel.selector import Selector
    from tiersel.stores import open_ledger, open_signal_store
    from tiersel.wrap import AsyncTierTransport, CallRecord, TierTransport

# The user's API, and the module each name lives in: loaded on first use (PEP 562), so `import
# tiersel` costs next to nothing and a program loads only what it uses. Everything else lives in
# its named submodule (`tiersel.signals`, `tiersel.pricing`, `tiersel.budget`, ...).
_LAZY = {
    "Selector": "tiersel.selector",
    "AsyncTierTransport": "tiersel.wrap",
    "CallRecord": "tiersel.wrap",
    "InvalidHint": "tiersel.http.hints",
    "TierTransport": "tiersel.wrap",
    "current_requirements": "tiersel.http.context",
    "requirements": "tiersel.http.context",
    "BatchSummary": "tiersel.batch",
    "arun_batch": "tiersel.batch",
    "run_batch": "tiersel.batch",
    "Call": "tiersel.call",
    "Requirements": "tiersel.call",
    "Decision": "tiersel.decision",
    "Reason": "tiersel.decision",
    "ReasonCode": "tiersel.decision",
    "Step": "tiersel.decision",
    "AttemptRecord": "tiersel.engine.results",
    "CallResult": "tiersel.engine.results",
    "CheapestFeasible": "tiersel.policy",
    "FixedTier": "tiersel.policy",
    "MemoryLedger": "tiersel.budget",
    "FakeClock": "tiersel.clock",
    "load_pricing": "tiersel.pricing",
    "open_ledger": "tiersel.stores",
    "open_signal_store": "tiersel.stores",
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
    "AsyncTierTransport",
    "AttemptRecord",
    "BatchSummary",
    "BudgetExhausted",
    "Call",
    "CallRecord",
    "CallResult",
    "CheapestFeasible",
    "ConflictingRequirements",
    "Decision",
    "FakeClock",
    "FixedTier",
    "InvalidHint",
    "MemoryLedger",
    "NoFeasibleTier",
    "PricingError",
    "Reason",
    "ReasonCode",
    "RequestNotUnderstood",
    "Requirements",
    "RetiredTier",
    "Selector",
    "Step",
    "TierTransport",
    "TierselError",
    "TierselWarning",
    "UnknownModel",
    "UnpricedModel",
    "arun_batch",
    "current_requirements",
    "load_pricing",
    "open_ledger",
    "open_signal_store",
    "requirements",
    "run_batch",
]
