"""A simulated Fireworks provider: one model, served over real HTTP or in-process.

The pure model (no I/O, no clock: time is passed in; deterministic for a seed)::

    from tiersel.sim import Provider, SimRequest

    provider = Provider("peak", seed=7)          # a bundled scenario name or a YAML path
    req = SimRequest(
        model="accounts/fireworks/models/kimi-k3",   # full id, or a router id for fast
        prompt_tokens=1500, max_tokens=300,            # completion = max_tokens
        service_tier="priority",                       # or None
    )
    result = provider.admit(req, now=120.0)      # scenario seconds; keeps in-flight load etc.
    result.status          # 200, 503 (shed/outage), 429 (rate limit), 500, 400, 404
    result.kind            # ResultKind.served / shed / rate_limited / error / rejected
    result.tier            # tier that served or refused it ("standard" if priority downgraded)
    result.ttft_s, result.duration_s   # seconds from arrival: first token, last token / error
    result.prompt_tokens, result.cached_tokens, result.completion_tokens
    result.retry_after_s   # on 429 (and 503 if the scenario sets shed_retry_after_s)
    result.utilisation, result.shed_probability   # the pool's state when it arrived
    provider.preview(req, now=120.0)   # the same answer without changing any state (oracles)
    provider.admit(req, 120.0, key="call-17/attempt-1")  # name the random draws (same luck
                                                         # for the same call across policies)
    provider.stats()       # counts by tier, model, status; hinted; priority_with_router
    provider.background("standard", now)  # other tenants' load on a tier's pool

Requests arriving at the same provider must come in non-decreasing ``now`` for in-flight load to
be exact; use one `Provider` per replay. `Provider` is thread-safe.

Served two ways, both through `SimService` (HTTP routing, scenario clock, ``time_scale``):

- in-process, for fast tests: ``SimTransport`` / ``AsyncSimTransport`` (httpx) and, in
  `tiersel.sim.transport_httpx2`, ``SimTransport2`` / ``AsyncSimTransport2`` (httpx2). Default
  clock: a `tiersel.clock.FakeClock`, whose sleeps advance it, so simulated latency passes with
  no real waiting and is seen by anything reading the same clock. ``transport.stats()``.
- over real HTTP: ``tiersel sim serve --port P --scenario NAME [--time-scale 0.01]``, or from
  Python ``with serve_in_subprocess("peak", time_scale=0.01) as server: server.base_url``
  (`tiersel.sim.server`); ``GET /sim/stats``, ``POST /sim/reset``. Needs ``tiersel[sim]``.

Endpoints: ``POST /inference/v1/chat/completions`` (OpenAI) and ``POST /inference/v1/messages``
(Anthropic), streaming or not. Scenarios: `load_scenario`, `list_scenarios` (``calm``, ``busy``,
``peak``, ``outage``, ``flapping``). The latency model and its calibration: `tiersel.sim.latency`.
"""

from tiersel.sim.latency import LatencyParams
from tiersel.sim.provider import Provider, ResultKind, SimRequest, SimResult
from tiersel.sim.scenarios import Scenario, ScenarioError, list_scenarios, load_scenario
from tiersel.sim.service import SimService
from tiersel.sim.stats import SimStats
from tiersel.sim.transport import AsyncSimTransport, SimTransport
from tiersel.sim.wire import Rendered, parse_request, render

__all__ = [
    "AsyncSimTransport",
    "LatencyParams",
    "Provider",
    "Rendered",
    "ResultKind",
    "Scenario",
    "ScenarioError",
    "SimRequest",
    "SimResult",
    "SimService",
    "SimStats",
    "SimTransport",
    "list_scenarios",
    "load_scenario",
    "parse_request",
    "render",
]
