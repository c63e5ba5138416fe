"""`Selector`: the door for callers that hand tiersel a request body and get a `CallResult`
back; it builds each attempt's ``httpx.Request`` and sends it through the transport given."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Unpack

from tiersel.budget import AsyncLedger, Ledger
from tiersel.call import BudgetState, Call, Requirements
from tiersel.clock import Clock
from tiersel.decision import Decision
from tiersel.engine.checks import check_requirements
from tiersel.engine.core import Engine, EngineSettings, Started, check_setting_names
from tiersel.engine.results import CallResult, StreamEnd
from tiersel.outgoing import (
    FIREWORKS_BASE_URL,
    AsyncTransport,
    Outgoing,
    SyncTransport,
)
from tiersel.policy import Policy
from tiersel.pricing import Pricing
from tiersel.signals import (
    AsyncSignalStore,
    Observation,
    SignalStore,
    TierHealth,
    TierStats,
)

if TYPE_CHECKING:
    from tiersel.http.route import Route

__all__ = ["FIREWORKS_BASE_URL", "Selector"]


class Selector:
    """Chooses a tier for each call and sends it.

    ``Selector()`` works out of the box: the bundled Fireworks prices, the default policy,
    in-memory signals and the system clock. Everything is injectable:

    - ``pricing``: a `Pricing` (see `load_pricing`).
    - ``policy``: any callable ``(call, requirements, budget, prices, signals, now) -> Decision``.
    - ``signals``: a `SignalStore` (default `MemorySignalStore`), or an `AsyncSignalStore`
      (e.g. `tiersel.stores.open_async_signal_store`), which only `asend` can use.
    - ``clock``: a `Clock` (`FakeClock` in tests).
    - ``transport`` / ``async_transport``: where `send` / `asend` go (an httpx transport or
      client, or a plain function from ``httpx.Request`` to ``httpx.Response``), at
      ``base_url``.
    - ``api_key``: sent as a bearer token when a request has no ``Authorization`` header
      (defaults to ``$FIREWORKS_API_KEY``); never logged, shown or stored elsewhere.
    - the engine's settings, as keywords (`tiersel.engine.EngineSettings`): ``ledger`` (a
      budget), ``requirements`` (the defaults), ``max_attempts``, ``backoff_s``,
      ``default_max_output_tokens``, ``unbounded_output``, ``budget_wait_s``, ``on_attempt``,
      ``on_result`` and the rest.

    >>> from tiersel import Call, Requirements
    >>> sel = Selector()
    >>> d = sel.decide(Call(model="kimi-k3", input_tokens=2000, max_output_tokens=500),
    ...                Requirements(min_output_tps=100))
    >>> d.tier, d.model
    (<Tier.fast: 'fast'>, 'accounts/fireworks/routers/kimi-k3-fast')
    """

    def __init__(
        self,
        pricing: Pricing | None = None,
        policy: Policy | None = None,
        signals: SignalStore | AsyncSignalStore | None = None,
        clock: Clock | None = None,
        *,
        transport: SyncTransport | None = None,
        async_transport: AsyncTransport | None = None,
        base_url: str = FIREWORKS_BASE_URL,
        api_key: str | None = None,
        **settings: Unpack[EngineSettings],
    ) -> None:
        check_setting_names(type(self), settings)
        self.engine = Engine(pricing, policy, signals, clock, **settings)
        key = api_key if api_key is not None else os.environ.get("FIREWORKS_API_KEY")
        self.outgoing = Outgoing(base_url, transport, async_transport, key)
        """Where calls go: the base URL, the API key (never shown) and the transports."""

    def __repr__(self) -> str:
        e = self.engine
        return (
            f"Selector(pricing={e.pricing!r}, policy={e.policy!r}, signals={e.signals!r},"
            f" clock={e.clock!r}, ledger={e.ledger!r}, base_url={self.outgoing.base_url!r})"
        )

    def __reduce__(self) -> Any:
        raise TypeError(
            "a Selector holds clients, stores and locks and is not pickled: build one in each"
            " process (its API key never leaves the process: it pickles as nothing)"
        )

    # -- the engine's parts, as a caller reads them ------------------------------------------------

    @property
    def pricing(self) -> Pricing:
        return self.engine.pricing

    @property
    def policy(self) -> Policy:
        return self.engine.policy

    @property
    def signals(self) -> SignalStore | AsyncSignalStore:
        return self.engine.signals

    @property
    def clock(self) -> Clock:
        return self.engine.clock

    @property
    def ledger(self) -> Ledger | AsyncLedger | None:
        return self.engine.ledger

    @property
    def requirements(self) -> Requirements:
        return self.engine.requirements

    def decide(
        self,
        call: Call,
        requirements: Requirements | None = None,
        *,
        budget: BudgetState | None = None,
    ) -> Decision:
        """The policy's decision for ``call`` now (see `Engine.decide`). Sends nothing."""
        return self.engine.decide(call, requirements, budget=budget)

    def health(self, model: str, now: float | None = None) -> dict[str, TierHealth]:
        """What the signals say now about each tier of ``model``."""
        return self.engine.health(model, now)

    def record(
        self,
        model: str,
        tier: str,
        observation: Observation,
        now: float | None = None,
        *,
        uncached_input_tokens: int = 0,
    ) -> TierStats:
        """Feed one observation into the signals (for callers that dispatch on their own); see
        `Engine.record` (``uncached_input_tokens``: the prompt behind its ``ttft_s``)."""
        return self.engine.record(
            model, tier, observation, now, uncached_input_tokens=uncached_input_tokens
        )

    def finish_stream(self, result: CallResult, end: StreamEnd) -> CallResult:
        """Complete a `send` whose streamed reply ended (see `Engine.finish_stream`)."""
        return self.engine.finish_stream(result, end)

    async def afinish_stream(self, result: CallResult, end: StreamEnd) -> CallResult:
        """The async twin of `finish_stream`."""
        return await self.engine.afinish_stream(result, end)

    # -- sending ---------------------------------------------------------------------------------

    def send(
        self,
        body: Mapping[str, Any],
        *,
        requirements: Requirements | None = None,
        path: str = "/chat/completions",
        headers: Mapping[str, str] | None = None,
        transport: SyncTransport | None = None,
        call_id: str | None = None,
    ) -> CallResult:
        """Choose a tier for ``body`` and send it, escalating after sheds within the deadline.

        The request is read as `TierTransport` reads one: ``requirements`` (default: the
        selector's), then a `tiersel.requirements` block around the call, then any
        ``x-tiersel-*`` hint headers in ``headers`` (never sent upstream).

        Returns a `CallResult` whatever the outcome (``result.ok``; ``result.response`` is the
        last ``httpx.Response``, its body read). Raises `NoFeasibleTier` or `BudgetExhausted`
        before any send when no plan is possible.
        """
        engine = self.engine
        engine.check_sync("send")
        route, started = self._open(body, requirements, path, headers, call_id)
        attempt = self.outgoing.attempter(route, started.call_id, engine.clock, transport)
        return engine.run(started, attempt)

    async def asend(
        self,
        body: Mapping[str, Any],
        *,
        requirements: Requirements | None = None,
        path: str = "/chat/completions",
        headers: Mapping[str, str] | None = None,
        transport: AsyncTransport | None = None,
        call_id: str | None = None,
    ) -> CallResult:
        """The async twin of `send`."""
        route, started = self._open(body, requirements, path, headers, call_id)
        clock = self.engine.clock
        attempt = self.outgoing.async_attempter(route, started.call_id, clock, transport)
        return await self.engine.arun(started, attempt)

    def _open(
        self,
        body: Mapping[str, Any],
        requirements: Requirements | None,
        path: str,
        headers: Mapping[str, str] | None,
        call_id: str | None,
    ) -> tuple[Route, Started]:
        """The call's request read into a route (as the transport reads one), and its start."""
        engine = self.engine
        check_requirements("send", requirements)
        defaults = requirements if requirements is not None else engine.requirements
        route = self.outgoing.route(body, path, headers, defaults, engine.pricing.tiers)
        started = engine.start(
            route.body,
            requirements=route.requirements,
            path=path,
            call_id=call_id,
            dialect=route.dialect,
        )
        return route, started

    def close(self) -> None:
        self.outgoing.close()

    async def aclose(self) -> None:
        await self.outgoing.aclose()

    def __enter__(self) -> Selector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Selector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
