"""tiersel: choose the cheapest LLM serving tier that meets each call's requirements.

>>> import tiersel
>>> sel = tiersel.Selector()
>>> call = tiersel.Call(model="kimi-k2p6", input_tokens=1500, max_output_tokens=300)
>>> sel.decide(call, tiersel.Requirements(deadline_s=30)).tier
<Tier.standard: 'standard'>
"""

from tiersel.batch import BatchSummary, arun_batch, run_batch
from tiersel.budget import AsyncLedger, Ledger, MemoryLedger, OnExpiry
from tiersel.call import BudgetState, Call, Requirements
from tiersel.clock import Clock, FakeClock, ScaledClock, SystemClock
from tiersel.cost import CostEstimate, estimate_costs
from tiersel.decision import Decision, Reason, Step, Verdict
from tiersel.dialects import Dialect, Usage
from tiersel.dispatch import AttemptRecord, CallResult
from tiersel.errors import (
    BudgetExhausted,
    ConflictingRequirements,
    NoFeasibleTier,
    PricingError,
    RequestNotUnderstood,
    TierselError,
    UnknownModel,
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
    "RequestNotUnderstood",
    "Requirements",
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
    "UnknownModel",
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
