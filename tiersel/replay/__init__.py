"""Trace replay: real request traffic through tiersel and its alternatives, on a virtual clock.

>>> from tiersel.replay import compare, load_trace
>>> result = compare(load_trace("azure-code").head(200), policies=["tiersel", "always-priority"])
>>> [m.policy for m in result.policies]
['tiersel', 'always-priority']

- `load_trace` reads the Azure LLM trace CSV (its 2023 and 2024 releases), BurstGPT's CSV, or
  a plain ``timestamp_s,input_tokens,output_tokens[,deadline_s][,reliability][,prefix,
  prefix_tokens]`` CSV; ``azure-code`` and ``azure-conv`` are shipped.
- `parse_mix` / `DEFAULT_MIX` give calls without requirements a deadline and a reliability.
- `compare` replays a trace through several policies (`POLICY_NAMES`, or your own `Contender`)
  against the simulated provider (`tiersel.sim.Provider`), each call through the core's own
  attempt loop; `replay` runs one. `PolicyMetrics` holds the figures, `timeline` bins them.
- ``tiersel simulate`` is the command-line face; ``notebooks/tier_tradeoffs.ipynb`` the picture.
"""

from tiersel.replay.baselines import POLICY_NAMES, Contender, Cooldown, Ladder, contender
from tiersel.replay.capacity import DEFAULT_TENANT_SHARE, sized
from tiersel.replay.harness import (
    DEFAULT_MODEL,
    DEFAULT_SCENARIO,
    Comparison,
    ReplayResult,
    Workload,
    compare,
    replay,
)
from tiersel.replay.metrics import (
    AttemptEvent,
    CallRecord,
    PolicyMetrics,
    TimeBin,
    dominates,
    pareto_front,
    timeline,
)
from tiersel.replay.mix import DEFAULT_MIX, PRESETS, Mix, MixError, RequirementClass, parse_mix
from tiersel.replay.sources import load_trace
from tiersel.replay.traces import (
    SHIPPED_TRACES,
    Trace,
    TraceError,
    TraceRequest,
    parse_trace,
    shipped_trace,
)

__all__ = [
    "DEFAULT_MIX",
    "DEFAULT_MODEL",
    "DEFAULT_SCENARIO",
    "DEFAULT_TENANT_SHARE",
    "POLICY_NAMES",
    "PRESETS",
    "SHIPPED_TRACES",
    "AttemptEvent",
    "CallRecord",
    "Comparison",
    "Contender",
    "Cooldown",
    "Ladder",
    "Mix",
    "MixError",
    "PolicyMetrics",
    "ReplayResult",
    "RequirementClass",
    "TimeBin",
    "Trace",
    "TraceError",
    "TraceRequest",
    "Workload",
    "compare",
    "contender",
    "dominates",
    "load_trace",
    "pareto_front",
    "parse_mix",
    "parse_trace",
    "replay",
    "shipped_trace",
    "sized",
    "timeline",
]
