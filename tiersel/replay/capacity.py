"""How big the simulated provider is next to the replayed traffic.

The simulator counts our own in-flight requests as load on a pool (``1/(slots*replicas)`` each).
A real provider serves many tenants, so a replay sizes the pools to the trace: enough replicas
that the trace, at speedup 1, keeps about ``tenant_share`` of a pool's slots busy. Compressing
the trace (``--speedup K``) then makes it K times that share, on top of the scenario's own
background load. A pool whose ``replicas`` the scenario file sets is left as it is.

The estimate of the trace's busy slots uses the simulator's own latency model
(`tiersel.sim.LatencyParams`) at a half-busy pool: the sum of every request's duration over
the trace's span.
"""

from __future__ import annotations

import math

from tiersel.replay.traces import Trace
from tiersel.sim import Scenario

__all__ = ["DEFAULT_TENANT_SHARE", "busy_slots", "sized"]

DEFAULT_TENANT_SHARE = 0.1
"""The share of a pool's capacity the replayed trace takes at speedup 1, unless told."""

_NOMINAL_UTILISATION = 0.5


def busy_slots(trace: Trace, scenario: Scenario, pool: str = "shared") -> float:
    """The mean number of the trace's requests in flight in ``pool``, if all were served there."""
    if len(trace) < 2 or trace.duration_s <= 0:
        return 0.0
    lat = scenario.latency.params()
    p = scenario.pools[pool]
    batch = lat.batch(_NOMINAL_UTILISATION, p.slots)
    token = lat.token_s(batch, speedup=p.speedup)
    busy = 0.0
    for r in trace:
        ttft = lat.ttft_s(r.input_tokens, batch, queue_share=1.0, speedup=p.speedup)
        busy += ttft + token * max(0, r.output_tokens - 1)
    return busy / trace.duration_s


def sized(
    scenario: Scenario, trace: Trace, tenant_share: float = DEFAULT_TENANT_SHARE
) -> tuple[Scenario, int]:
    """``scenario`` with its pools sized to ``trace`` (see the module docstring), and the replicas.

    ``tenant_share`` 0 keeps the scenario's own sizes (replicas 1 unless the file says).
    """
    if not (math.isfinite(tenant_share) and 0 <= tenant_share <= 1):
        raise ValueError(f"tenant share must be between 0 and 1, got {tenant_share!r}")
    if tenant_share == 0:
        return scenario, 1
    shared = scenario.pools["shared"]
    replicas = max(1, math.ceil(busy_slots(trace, scenario) / (tenant_share * shared.slots)))
    pools = {
        name: pool
        if "replicas" in pool.model_fields_set
        else pool.model_copy(update={"replicas": replicas})
        for name, pool in scenario.pools.items()
    }
    return scenario.model_copy(update={"pools": pools}), replicas
