"""tiersel: choose the cheapest LLM serving tier that meets each call's requirements.

>>> import tiersel
>>> sel = tiersel.Selector()
>>> call = tiersel.Call(model="kimi-k3", input_tokens=1500, max_output_tokens=300)
>>> sel.decide(call, tiersel.Requirements(deadline_s=30)).tier
<Tier.standard: 'standard'>

These names are the user's API: the doors (`Selector`, `TierTransport`, `AsyncTierTransport`,
`requirements`, `run_batch`, `arun_batch`), what a call states and gets back (`Call`,
`Requirements`, `Decision`, `CallResult`, `CallRecord`), the errors, and the stores' openers
(`open_ledger`, `open_signal_store`). The rest lives in named submodules:

- `tiersel.decision`: a decision's parts (`Step`, `Reason`, `ReasonCode`);
- `tiersel.policy`: the policies (`CheapestFeasible`, the default, and `FixedTier`);
- `tiersel.pricing` and `tiersel.tiers`: price tables (`load_pricing`);
- `tiersel.budget`: ledgers (`MemoryLedger`); `tiersel.signals`: observations, health, stores;
- `tiersel.clock`: clocks (`FakeClock`, `ScaledClock`);
- `tiersel.engine`: one call's attempts (`Engine`, `AttemptRecord`);
- `tiersel.wrap`: the transports and `current_requirements`; `tiersel.batch`: `BatchSummary`;
- `tiersel.dialects`, `tiersel.schedule` and `tiersel.hedge`: the model.

``import tiersel`` loads nothing but this module: each public name loads its own module the first
time it is used (``tiersel.Selector`` the decision and the send path; ``tiersel.TierTransport`` the
wrapper, and httpx2 where installed; ``tiersel.run_batch`` the batch runner). The simulator and the
replay live in `tiersel.sim` and `tiersel.replay`, loaded when imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tiersel.batch import arun_batch, run_batch
    from tiersel.call import Call, Requirements
    from tiersel.decision import Decision
    from tiersel.engine.results import CallResult
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
    from tiersel.http.context import requirements
    from tiersel.http.hints import InvalidHint
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
    "requirements": "tiersel.http.context",
    "arun_batch": "tiersel.batch",
    "run_batch": "tiersel.batch",
    "Call": "tiersel.call",
    "Requirements": "tiersel.call",
    "Decision": "tiersel.decision",
    "CallResult": "tiersel.engine.results",
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


# Names that left the top level for their submodules (0.1.0's last commits): an error that says
# where each lives now.
_MOVED = {
    "Step": "tiersel.decision",
    "Reason": "tiersel.decision",
    "ReasonCode": "tiersel.decision",
    "AttemptRecord": "tiersel.engine",
    "current_requirements": "tiersel.wrap",
    "load_pricing": "tiersel.pricing",
    "FakeClock": "tiersel.clock",
    "MemoryLedger": "tiersel.budget",
    "CheapestFeasible": "tiersel.policy",
    "FixedTier": "tiersel.policy",
    "BatchSummary": "tiersel.batch",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        moved = _MOVED.get(name)
        where = f": it lives in {moved} (from {moved} import {name})" if moved else ""
        raise AttributeError(f"module 'tiersel' has no attribute {name!r}{where}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The user's API and the module's own dunders, not the helpers this module imports.
    return sorted({n for n in globals() if n.startswith("__")} | set(__all__))


__version__ = "0.1.0"

__all__ = [
    "AsyncTierTransport",
    "BudgetExhausted",
    "Call",
    "CallRecord",
    "CallResult",
    "ConflictingRequirements",
    "Decision",
    "InvalidHint",
    "NoFeasibleTier",
    "PricingError",
    "RequestNotUnderstood",
    "Requirements",
    "RetiredTier",
    "Selector",
    "TierTransport",
    "TierselError",
    "TierselWarning",
    "UnknownModel",
    "UnpricedModel",
    "arun_batch",
    "open_ledger",
    "open_signal_store",
    "requirements",
    "run_batch",
]
