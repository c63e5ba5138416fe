"""`Selector`: the door for callers that hand tiersel a request body and get a `CallResult`
back; it builds each attempt's ``httpx.Request`` and sends it through the transport given."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from tiersel.budget import AsyncLedger, Ledger
from tiersel.call import BudgetState, Call, Requirements
from tiersel.clock import Clock
from tiersel.decision import Decision
from tiersel.dialects import dialect_for_path
from tiersel.engine.core import Engine, Started
from tiersel.engine.effects import Send
from tiersel.engine.results import AttemptRecord, CallResult, Reply, StreamEnd
from tiersel.errors import RequestNotUnderstood, shown
from tiersel.outgoing import (
    FIREWORKS_BASE_URL,
    AsyncTransport,
    Outgoing,
    SyncTransport,
    attempt_request,
)
from tiersel.policy import Policy
from tiersel.pricing import Pricing
from tiersel.signals import (
    AsyncSignalStore,
    Observation,
    SignalConfig,
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
    - ``ledger``: a budget `Ledger`; when set, each attempt reserves its worst case first.
      An `AsyncLedger` works with `asend` only.
    - ``transport`` / ``async_transport``: where `send` / `asend` go (an httpx transport or
      client, or a plain function from ``httpx.Request`` to ``httpx.Response``).
    - ``default_max_output_tokens``: the output cap assumed for a body that states none (4096,
      or the model's own output limit from the price table when that is smaller).
    - ``unbounded_output``: under a budget, what a body with no output cap is sent with, so that
      its reservation bounds what it can cost (the cap set is reported in the
      ``x-tiersel-max-tokens`` response header): ``"share"`` (the default), what a quarter of
      the money left buys, at least 256 tokens and at most ``default_max_output_tokens``;
      ``"cap"``, ``default_max_output_tokens`` itself; ``"refuse"``, no send
      (`RequestNotUnderstood`).
    - ``budget_wait_s``: how long a call the budget turns down while other calls hold
      reservations waits for them to settle before `BudgetExhausted` (30 s; never past half the
      time its deadline leaves, nor the client's timeout; 0 refuses at once). A reservation is
      a call's worst case, so money in flight usually comes back.
    - ``on_attempt`` / ``on_result``: called with each attempt's `AttemptRecord`, and with each
      call's final `CallResult` (a stream's once it ends), whichever door the call came through.
    - ``api_key``: sent as a bearer token when a request has no ``Authorization`` header
      (defaults to ``$FIREWORKS_API_KEY``); never logged, shown or stored elsewhere.

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
        ledger: Ledger | AsyncLedger | None = None,
        transport: SyncTransport | None = None,
        async_transport: AsyncTransport | None = None,
        base_url: str = FIREWORKS_BASE_URL,
        endpoint: str = "fireworks",
        requirements: Requirements | None = None,
        signal_config: SignalConfig | None = None,
        max_attempts: int = 4,
        backoff_s: float = 0.2,
        default_max_output_tokens: int = 4096,
        bytes_per_token: float = 3.0,
        unbounded_output: str = "share",
        budget_wait_s: float = 30.0,
        on_attempt: Callable[[AttemptRecord], None] | None = None,
        on_result: Callable[[CallResult], None] | None = None,
        api_key: str | None = None,
    ) -> None:
        self.engine = Engine(
            pricing,
            policy,
            signals,
            clock,
            ledger=ledger,
            endpoint=endpoint,
            requirements=requirements,
            signal_config=signal_config,
            max_attempts=max_attempts,
            backoff_s=backoff_s,
            default_max_output_tokens=default_max_output_tokens,
            bytes_per_token=bytes_per_token,
            unbounded_output=unbounded_output,
            budget_wait_s=budget_wait_s,
            on_attempt=on_attempt,
            on_result=on_result,
        )
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
        self, model: str, tier: str, observation: Observation, now: float | None = None
    ) -> TierStats:
        """Feed one observation into the signals (for callers that dispatch on their own)."""
        return self.engine.record(model, tier, observation, now)

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
        # The wire code (httpx2's too, when installed) loads with the first send, not with
        # `import tiersel`: deciding needs none of it.
        from tiersel.http.reply import no_reply, read_body, reply

        engine = self.engine
        engine.check_sync("send")
        route, started = self._open(body, requirements, path, headers, call_id)
        send = self.outgoing.sender(transport)
        clock = engine.clock

        def attempt(effect: Send) -> Reply:
            request = attempt_request(route, effect, started.call_id)
            at = clock.now()
            try:
                response = send(request)
                content = read_body(response, keep=True)
            except httpx.TransportError as exc:
                return no_reply(exc, at, clock.now())
            return reply(response, content, clock.now() - at)

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
        from tiersel.http.reply import aread_body, no_reply, reply

        route, started = self._open(body, requirements, path, headers, call_id)
        send = self.outgoing.async_sender(transport)
        clock = self.engine.clock

        async def attempt(effect: Send) -> Reply:
            request = attempt_request(route, effect, started.call_id)
            at = clock.now()
            try:
                response = await send(request)
                return reply(response, await aread_body(response, keep=True), clock.now() - at)
            except httpx.TransportError as exc:
                return no_reply(exc, at, clock.now())

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
        from tiersel.http.flavours import HTTPX
        from tiersel.http.route import read_route

        engine = self.engine
        dialect = dialect_for_path(path)
        if dialect is None:
            raise RequestNotUnderstood(
                f"{shown(path)} is not a generation path (chat completions, responses,"
                " completions or messages)"
            )
        request = self.outgoing.request(path, headers, body)
        defaults = requirements if requirements is not None else engine.requirements
        route = read_route(request, HTTPX, path, dialect, defaults, engine.pricing.tiers)
        started = engine.start(
            route.body,
            requirements=route.requirements,
            path=path,
            call_id=call_id,
            dialect=dialect,
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
