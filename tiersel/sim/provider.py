"""The simulated Fireworks provider as a pure, deterministic model.

`Provider.admit(request, now)` says what the provider does with one request arriving at scenario
time ``now`` (seconds): status, the tier that served or refused it, time to first token, total
duration, usage. It keeps the state a real provider would (our in-flight requests, rate-limit
buckets, the prompt-prefix cache, counters), reads no clock and does no I/O; randomness comes from
``random.Random`` seeded with the provider's seed and the request's key, so the same seed and the
same requests give the same answers.

What happens to a request, in order:

1. Its model id must be a full model id (``accounts/fireworks/models/<name>``) or a router id from
   the price table; anything else is a 404 (a short name gets a hint). ``service_tier`` must be
   absent, ``default``, ``auto``, ``standard`` or ``priority`` (else 400); priority on a router
   id is a 400. Priority on a model with no priority tier is served at standard. A prompt longer
   than the model reads, or a ``max_tokens`` above what it writes (the price table's limits), is
   a 400.
2. Past the model's rate limit (a token bucket per model; standard and priority share one, each
   router tier has its own): 429 with ``Retry-After``.
3. In a scenario outage window for its tier: the outage's status (503).
4. Shed (503) with the probability the scenario's curve gives for the tier at the pool's
   utilisation: background load at ``now`` plus our in-flight requests in that pool / slots
   (over every replica of the pool: ``slots * replicas``).
   One uniform draw per request decides, compared with each tier's probability, so a request
   that priority would shed standard would shed too (common random numbers).
5. Rarely, a 500 (``errors.error_rate``).
6. Served: latency from `tiersel.sim.latency`; completion tokens = ``max_tokens`` (or the
   scenario's ``default_max_tokens``), at most the scenario's ``answer_tokens`` (where a model
   stops on its own); cached tokens = those of the request's longest prompt prefix (taken at
   message boundaries, `tiersel.prompts.prompt_prefixes`) that a request admitted to this model
   within ``cache_ttl_s`` had too, as a provider's prefix cache serves them.
"""

from __future__ import annotations

import enum
import functools
import heapq
import random
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tiersel.cost import tier_cost
from tiersel.dialects import Dialect
from tiersel.errors import UnknownModel
from tiersel.pricing import ModelPrices, Pricing, load_pricing
from tiersel.sim.scenarios import (
    ROUTER_POOL,
    SHARED_POOL,
    RateLimit,
    Scenario,
    ScenarioError,
    load_scenario,
)
from tiersel.sim.stats import SimStats

__all__ = ["Provider", "ResultKind", "SimRequest", "SimResult"]

_STANDARD_NAMES = frozenset({"default", "auto", "standard"})


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One generation request, as the provider model sees it.

    ``model`` is the id as sent; ``prompt_tokens`` the provider's count of the prompt (see
    `tiersel.sim.wire` for how it is estimated from a body); ``prefixes`` are its prompt's
    cacheable prefixes, shortest first, each a key naming it and its tokens (none: nothing
    cacheable).
    """

    model: str
    prompt_tokens: int
    max_tokens: int | None = None
    service_tier: str | None = None
    dialect: Dialect = Dialect.openai
    stream: bool = False
    include_usage: bool = False
    hinted: bool = False
    prefixes: tuple[tuple[str | bytes, int], ...] = ()

    def __post_init__(self) -> None:
        if self.prompt_tokens < 0:
            raise ValueError(f"prompt_tokens must be >= 0, got {self.prompt_tokens}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


class ResultKind(str, enum.Enum):
    """What became of a request."""

    served = "served"
    shed = "shed"
    rate_limited = "rate_limited"
    error = "error"
    rejected = "rejected"


@dataclass(frozen=True, slots=True)
class SimResult:
    """The provider's answer to one request (times in scenario seconds from its arrival).

    For a served request ``ttft_s`` is when the first token is out and ``duration_s`` when the
    last one is; for a refusal both are when the error response arrives. ``tier`` is the tier
    that served or refused it (a downgraded priority request says ``standard``); None when the
    request was refused before a tier applied (bad body, unknown model, priority on a router).
    """

    status: int
    kind: ResultKind
    model_id: str
    model: str | None
    tier: str | None
    ttft_s: float
    duration_s: float
    token_s: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    utilisation: float = 0.0
    shed_probability: float = 0.0
    error_type: str | None = None
    error_code: str | None = None
    message: str | None = None
    retry_after_s: float | None = None
    rate_limit: RateLimit | None = None
    downgraded: bool = False
    priority_with_router: bool = False
    stream_breaks: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def output_tps(self) -> float | None:
        """Generation rate after the first token (None when fewer than two tokens)."""
        return 1.0 / self.token_s if self.token_s > 0 and self.completion_tokens > 1 else None


@dataclass(slots=True)
class _Bucket:
    prompt: float
    generated: float
    at: float


@dataclass(slots=True)
class _State:
    seq: int = 0
    inflight: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    buckets: dict[tuple[str, str], _Bucket] = field(default_factory=dict)
    cache: dict[tuple[str, str | bytes], float] = field(default_factory=dict)
    stats: SimStats = field(default_factory=SimStats)


class Provider:
    """The simulated provider for one scenario and seed. Thread-safe; time is passed in.

    >>> p = Provider("calm", seed=1)
    >>> r = p.admit(SimRequest("accounts/fireworks/models/kimi-k3", 1000, max_tokens=100), 0.0)
    >>> r.status, r.tier, r.completion_tokens
    (200, 'standard', 100)
    """

    def __init__(
        self,
        scenario: Scenario | str | Path = "calm",
        *,
        seed: int = 0,
        pricing: Pricing | None = None,
    ) -> None:
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.seed = seed
        self.pricing = pricing if pricing is not None else _bundled_pricing()
        self._latency = self.scenario.latency.params()
        self._check_names()
        self._lock = threading.Lock()
        self._state = _State()

    def __repr__(self) -> str:
        return f"Provider(scenario={self.scenario.name!r}, seed={self.seed})"

    # -- public ----------------------------------------------------------------------------------

    def admit(self, request: SimRequest, now: float, *, key: str | None = None) -> SimResult:
        """Decide what happens to ``request`` arriving at scenario time ``now``, and keep it.

        ``key`` names the request's random draws (default: its arrival order). Passing the same
        key for the same call under different policies gives them the same luck.
        """
        with self._lock:
            result = self._decide(request, now, key, commit=True)
            self._state.stats.record(
                status=result.status,
                tier=result.tier,
                model=result.model_id if result.model is not None else None,
                hinted=request.hinted,
                priority_with_router=result.priority_with_router,
                downgraded=result.downgraded,
                streamed=request.stream,
                billed_usd=self._bill(result),
            )
            return result

    def cancel(self, result: SimResult, after_s: float) -> None:
        """The client of ``result`` went away ``after_s`` (scenario seconds) after sending it:
        generation stopped then, so it is billed its prompt and the output generated by then,
        not the whole answer `admit` billed."""
        if result.kind is not ResultKind.served:
            return
        made = generated_by(result, after_s)
        if made >= result.completion_tokens:
            return
        with self._lock:
            unbilled = self._bill(result) - self._bill(replace(result, completion_tokens=made))
            self._state.stats.billed_usd -= unbilled

    def _bill(self, result: SimResult) -> float:
        """What the provider bills for ``result``: a served request's tokens at its tier's price."""
        if result.kind is not ResultKind.served or result.model is None or result.tier is None:
            return 0.0
        price = self.pricing.model(result.model).tiers.get(result.tier)
        if price is None:
            return 0.0
        return tier_cost(
            price, result.prompt_tokens, result.cached_tokens, result.completion_tokens
        )

    def preview(self, request: SimRequest, now: float, *, key: str | None = None) -> SimResult:
        """What `admit` would answer now, without changing any state (for an oracle)."""
        with self._lock:
            return self._decide(request, now, key, commit=False)

    def record_unparsed(self, status: int, *, hinted: bool) -> None:
        """Count a request refused before it could be read (bad JSON, wrong path)."""
        with self._lock:
            self._state.stats.record(status=status, tier=None, model=None, hinted=hinted)

    def stats(self) -> dict[str, Any]:
        """Counts by tier, model and status (see `SimStats.snapshot`)."""
        with self._lock:
            return self._state.stats.snapshot()

    def reset(self, *, seed: int | None = None) -> None:
        """Forget every request (in-flight, buckets, cache, counters); optionally reseed."""
        with self._lock:
            if seed is not None:
                self.seed = seed
            self._state = _State()

    def utilisation(self, model: str, tier: str, now: float) -> float:
        """The utilisation of the pool serving ``model`` on ``tier`` at ``now`` (load + ours)."""
        mp = self.pricing.model(model)
        spec = self.pricing.tiers[tier]
        pool_name = self.scenario.pool_name(tier, spec.uses_router)
        with self._lock:
            return self._utilisation(mp.name, pool_name, now, purge=False)

    def background(self, tier: str, now: float) -> float:
        """Other tenants' load on the pool serving ``tier`` at ``now``."""
        spec = self.pricing.tiers[tier]
        pool = self.scenario.pools[self.scenario.pool_name(tier, spec.uses_router)]
        return pool.background.at(now)

    # -- the model -------------------------------------------------------------------------------

    def _decide(self, req: SimRequest, now: float, key: str | None, commit: bool) -> SimResult:
        st = self._state
        resolved = self._resolve(req)
        if isinstance(resolved, SimResult):
            return resolved
        mp, tier, uses_router, downgraded = resolved
        too_big = _past_limits(req, mp)
        if too_big is not None:
            return too_big
        lat = self._latency
        rng = random.Random(f"{self.seed}:{key if key is not None else st.seq}")
        if commit:
            st.seq += 1
        u_shed, u_error, u_break, j_ttft, j_token = (rng.random() for _ in range(5))

        group = tier if uses_router else SHARED_POOL
        limit = self.scenario.rate_limit.for_model(mp.model_id)
        completion = req.max_tokens or self.scenario.default_max_tokens
        if self.scenario.answer_tokens is not None:
            completion = min(completion, self.scenario.answer_tokens)
        base = _unanswered(req, mp.name, tier, downgraded, limit)
        wait = self._rate_wait(mp.name, group, limit, req.prompt_tokens, completion, now, commit)
        if wait is not None:
            return self._rate_limited(base, req.model, wait)

        pool_name = self.scenario.pool_name(tier, uses_router)
        pool = self.scenario.pools[pool_name]
        u = self._utilisation(mp.name, pool_name, now, purge=commit)
        p_shed = self.scenario.shed_curve(tier, uses_router).probability(u)
        refused = self._refused(mp, tier, u, p_shed, u_shed, u_error, now, base)
        if refused is not None:
            return refused

        cached = self._cached(mp.name, req, now, commit)
        batch = lat.batch(u, pool.slots)
        share = lat.priority_queue_share if tier == "priority" else 1.0
        ttft = lat.ttft_s(
            req.prompt_tokens - cached, batch, queue_share=share, speedup=pool.speedup
        ) * (1 + lat.jitter * (2 * j_ttft - 1))
        token_s = lat.token_s(batch, speedup=pool.speedup) * (1 + lat.jitter * (2 * j_token - 1))
        duration = ttft + token_s * (completion - 1)
        if commit:
            self._take(mp.name, group, limit, req.prompt_tokens, completion, now)
            heapq.heappush(st.inflight.setdefault((mp.name, pool_name), []), now + duration)
        return replace(
            base,
            status=200,
            kind=ResultKind.served,
            ttft_s=ttft,
            duration_s=duration,
            token_s=token_s,
            prompt_tokens=req.prompt_tokens,
            cached_tokens=cached,
            completion_tokens=completion,
            finish_reason="length" if completion == req.max_tokens else "stop",
            utilisation=u,
            shed_probability=p_shed,
            stream_breaks=req.stream and u_break < self.scenario.errors.stream_break_rate,
        )

    def _refused(
        self,
        mp: ModelPrices,
        tier: str,
        u: float,
        p_shed: float,
        u_shed: float,
        u_error: float,
        now: float,
        base: SimResult,
    ) -> SimResult | None:
        """The refusal an attempt gets (an outage's status, a shed, a server error), given its
        pool's utilisation ``u`` and the call's draws; None when it is served."""
        for outage in self.scenario.outages:
            if outage.covers(now, tier, mp.model_id) or outage.covers(now, tier, mp.name):
                return self._refusal(outage.status, u, 1.0, base)
        if u_shed < p_shed:
            return self._refusal(503, u, p_shed, base)
        if u_error < self.scenario.errors.error_rate:
            return self._refusal(500, u, p_shed, base)
        return None

    def _rate_limited(self, base: SimResult, model: str, wait: float) -> SimResult:
        """A 429 with its Retry-After, answered at once."""
        answered = self._latency.rate_limited_ms / 1000
        return replace(
            base,
            status=429,
            kind=ResultKind.rate_limited,
            ttft_s=answered,
            duration_s=answered,
            error_type="rate_limit_error",
            error_code="rate_limit_exceeded",
            message=f"Rate limit exceeded for {model}; retry after {wait:g} s.",
            retry_after_s=wait,
        )

    def _resolve(self, req: SimRequest) -> tuple[ModelPrices, str, bool, bool] | SimResult:
        try:
            mp, implied = self.pricing.resolve(req.model)
        except UnknownModel:
            return _rejected(req, 404, "model_not_found", _not_found(req.model))
        if implied is None and req.model != mp.model_id:
            return _rejected(
                req,
                404,
                "model_not_found",
                f"{_not_found(req.model)} Did you mean {mp.model_id!r}?",
            )
        st = req.service_tier
        if st is not None and st != "priority" and st not in _STANDARD_NAMES:
            return _rejected(
                req,
                400,
                "invalid_request",
                f"Invalid service_tier {st!r}: expected 'priority' or omitted.",
            )
        if implied is not None:
            if st == "priority":
                # Only where the table sells priority on this router (a US-only router).
                both = f"{implied}_priority"
                if both in mp.tiers and mp.tiers[both].model_id == req.model:
                    return mp, both, True, False
                return _rejected(
                    req,
                    400,
                    "invalid_request",
                    f"service_tier 'priority' cannot be used with router model {req.model!r}.",
                    model=mp.name,
                    priority_with_router=True,
                )
            return mp, implied, True, False
        if st == "priority":
            if mp.offers("priority"):
                return mp, "priority", False, False
            return mp, "standard", False, True
        return mp, "standard", False, False

    def _refusal(self, status: int, u: float, p_shed: float, base: SimResult) -> SimResult:
        if status == 503:
            return replace(
                base,
                status=status,
                kind=ResultKind.shed,
                ttft_s=self._latency.shed_ms / 1000,
                duration_s=self._latency.shed_ms / 1000,
                utilisation=u,
                shed_probability=p_shed,
                error_type="service_unavailable",
                error_code="server_overloaded",
                message="The server is overloaded, please try again later.",
                retry_after_s=self.scenario.shed_retry_after_s,
            )
        return replace(
            base,
            status=status,
            kind=ResultKind.error,
            ttft_s=self._latency.error_ms / 1000,
            duration_s=self._latency.error_ms / 1000,
            utilisation=u,
            shed_probability=p_shed,
            error_type="internal_server_error",
            error_code="internal_error",
            message="An internal error occurred, please try again.",
        )

    def _utilisation(self, model: str, pool_name: str, now: float, *, purge: bool) -> float:
        pool = self.scenario.pools[pool_name]
        ends = self._state.inflight.get((model, pool_name), [])
        if purge:
            while ends and ends[0] <= now:
                heapq.heappop(ends)
            busy = len(ends)
        else:
            busy = sum(1 for e in ends if e > now)
        return pool.background.at(now) + busy / (pool.slots * pool.replicas)

    def _cached(self, model: str, req: SimRequest, now: float, commit: bool) -> int:
        prefixes = req.prefixes
        if not prefixes:
            return 0
        cache = self._state.cache
        ttl = self.scenario.cache_ttl_s
        hit = 0
        for key, tokens in reversed(prefixes):
            seen = cache.get((model, key))
            if seen is not None and now - seen <= ttl:
                hit = tokens
                break
        if commit:
            if len(cache) > 50_000:
                for k in [k for k, t in cache.items() if now - t > ttl]:
                    del cache[k]
            for key, _ in prefixes:
                cache[(model, key)] = now
        return min(hit, req.prompt_tokens)

    def _bucket(self, model: str, group: str, limit: RateLimit, now: float) -> _Bucket:
        full_p = (limit.prompt_tokens_per_s or 0.0) * limit.burst_s
        full_g = (limit.generated_tokens_per_s or 0.0) * limit.burst_s
        b = self._state.buckets.get((model, group))
        if b is None:
            return _Bucket(full_p, full_g, now)
        dt = max(0.0, now - b.at)
        return _Bucket(
            min(full_p, b.prompt + dt * (limit.prompt_tokens_per_s or 0.0)),
            min(full_g, b.generated + dt * (limit.generated_tokens_per_s or 0.0)),
            max(now, b.at),
        )

    def _rate_wait(
        self,
        model: str,
        group: str,
        limit: RateLimit,
        prompt: int,
        completion: int,
        now: float,
        commit: bool,
    ) -> float | None:
        """Seconds until the request fits the model's rate limit, or None if it fits now."""
        if not _limited(limit):
            return None
        b = self._bucket(model, group, limit, now)
        if commit:
            self._state.buckets[(model, group)] = b
        waits = []
        for level, need, rate in (
            (b.prompt, prompt, limit.prompt_tokens_per_s),
            (b.generated, completion, limit.generated_tokens_per_s),
        ):
            if rate is None:
                continue
            # A request larger than the bucket passes when the bucket is full, else it never would.
            need_now = min(float(need), rate * limit.burst_s)
            if level < need_now:
                waits.append((need_now - level) / rate)
        if not waits:
            return None
        return float(max(1, -int(-max(waits) // 1)))

    def _take(
        self, model: str, group: str, limit: RateLimit, prompt: int, completion: int, now: float
    ) -> None:
        if not _limited(limit):
            return
        b = self._bucket(model, group, limit, now)
        b.prompt -= prompt if limit.prompt_tokens_per_s else 0
        b.generated -= completion if limit.generated_tokens_per_s else 0
        self._state.buckets[(model, group)] = b

    def _check_names(self) -> None:
        sc, tiers = self.scenario, self.pricing.tiers
        routers = {name for name, spec in tiers.items() if spec.uses_router}
        for name in sc.pools:
            if name not in (SHARED_POOL, ROUTER_POOL) and name not in routers:
                raise ScenarioError(
                    sc.origin,
                    f"pools.{name}",
                    f"unknown pool (use {SHARED_POOL}, {ROUTER_POOL} or a router tier:"
                    f" {', '.join(sorted(routers))})",
                )
        for name in sc.shedding:
            if name not in ("standard", "priority", ROUTER_POOL) and name not in routers:
                raise ScenarioError(
                    sc.origin,
                    f"shedding.{name}",
                    f"unknown tier (use standard, priority, {ROUTER_POOL} or a router tier)",
                )
        for i, outage in enumerate(sc.outages):
            for t in outage.tiers:
                if t not in tiers:
                    raise ScenarioError(
                        sc.origin,
                        f"outages.{i}.tiers",
                        f"unknown tier {t!r} (known: {', '.join(tiers)})",
                    )
            for m in outage.models or ():
                self._check_model(m, f"outages.{i}.models")
        for m in sc.rate_limit.models:
            self._check_model(m, f"rate_limit.models.{m}")

    def _check_model(self, model: str, key: str) -> None:
        try:
            self.pricing.model(model)
        except UnknownModel:
            raise ScenarioError(
                self.scenario.origin, key, f"unknown model {model!r} (not in {self.pricing.origin})"
            ) from None


@functools.lru_cache(maxsize=1)
def _bundled_pricing() -> Pricing:
    # A loaded table is immutable: one parse serves every Provider in the process.
    return load_pricing()


def _limited(limit: RateLimit) -> bool:
    return limit.prompt_tokens_per_s is not None or limit.generated_tokens_per_s is not None


def _not_found(model: str) -> str:
    return f"Model not found, inaccessible, and/or not deployed: {model!r}."


def _past_limits(req: SimRequest, mp: ModelPrices) -> SimResult | None:
    """A 400 for a request past what the model reads or writes (as the API refuses it), else
    None."""
    allowed = mp.beyond(req.prompt_tokens, output=False)
    if allowed is not None:
        message = f"The prompt is {req.prompt_tokens:,} tokens long; {allowed}."
        return _rejected(req, 400, "context_length_exceeded", message, model=mp.name)
    allowed = mp.beyond(req.max_tokens, output=True)
    if allowed is not None:
        message = f"max_tokens {req.max_tokens:,} is more than the model allows: {allowed}."
        return _rejected(req, 400, "invalid_request", message, model=mp.name)
    return None


def _rejected(
    req: SimRequest,
    status: int,
    code: str,
    message: str,
    *,
    model: str | None = None,
    priority_with_router: bool = False,
) -> SimResult:
    return SimResult(
        status=status,
        kind=ResultKind.rejected,
        model_id=req.model,
        model=model,
        tier=None,
        ttft_s=0.0,
        duration_s=0.0,
        error_type="invalid_request_error",
        error_code=code,
        message=message,
        priority_with_router=priority_with_router,
    )


def _unanswered(
    req: SimRequest, model: str, tier: str, downgraded: bool, limit: RateLimit
) -> SimResult:
    """A result with what is known before the model answers, filled in by each outcome."""
    return SimResult(
        status=0,
        kind=ResultKind.served,
        model_id=req.model,
        model=model,
        tier=tier,
        ttft_s=0.0,
        duration_s=0.0,
        downgraded=downgraded,
        rate_limit=limit if _limited(limit) else None,
    )


def generated_by(result: SimResult, after_s: float) -> int:
    """The output tokens ``result`` had generated ``after_s`` seconds after it was sent: none
    before its first token, then one every ``token_s``."""
    if after_s < result.ttft_s:
        return 0
    if result.token_s <= 0:
        return result.completion_tokens
    return min(result.completion_tokens, 1 + int((after_s - result.ttft_s) / result.token_s))
