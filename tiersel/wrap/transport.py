"""`TierTransport` / `AsyncTierTransport`: tier selection for any client built on httpx or httpx2.

Mount one on the client an SDK already takes, and every generation call gets a tier chosen;
nothing at the call sites changes::

    client = openai.OpenAI(
        base_url="https://api.fireworks.ai/inference/v1",
        http_client=httpx2.Client(transport=tiersel.TierTransport(tiersel.Selector())),
    )

Each generation call (``POST .../chat/completions``, ``.../responses``, ``.../completions`` or
``.../messages``; `tiersel.dialects`) is decided by the
selector and sent through the core's one attempt flow (`tiersel.engine.call_flow`): escalation
after a shed, backoff, budget reservation and signals are the core's, not copied here. Every
other request (embeddings, model lists, ...) is passed through untouched, bar tiersel's hint
headers, which never go upstream.

The response carries the decision back in ``x-tiersel-*`` headers (tier, model, cost, attempts),
readable with the SDKs' raw-response APIs. When tiersel has given up on a call, the last error
response goes back with ``x-should-retry: false``, which both SDKs obey, so they do not multiply
the attempts with retries of their own. When no attempt got any response (connection errors,
timeouts), a ``502`` / ``504`` error response stands in for it, for the same reason.
"""

from __future__ import annotations

import threading
from typing import Any

from tiersel.dialects import Dialect
from tiersel.engine.effects import Send
from tiersel.engine.results import Reply
from tiersel.errors import TierselError
from tiersel.selector import Selector
from tiersel.wrap.exchange import (
    Answer,
    CallHook,
    Exchange,
    aread_answer,
    longest_timeout,
    no_reply,
    read_answer,
    reply,
    without_hints,
)
from tiersel.wrap.flavours import (
    AsyncTransportBase,
    Flavour,
    SyncTransportBase,
    TransportErrors,
    as_flavour,
    convert_request,
    convert_response,
    flavour_of_request,
    flavour_of_transport,
)

__all__ = ["AsyncTierTransport", "TierTransport"]


class _Shell:
    """The parts of both transports that are not about sync or async."""

    _sync = False  # a sync shell cannot await its selector's stores

    def __init__(
        self,
        selector: Selector | None = None,
        transport: Any = None,
        *,
        on_call: CallHook | None = None,
        refusals: str = "auto",
    ) -> None:
        self.selector = selector if selector is not None else Selector()
        if self._sync:
            self.selector.engine.check_sync(type(self).__name__)
        self._exchange = Exchange(self.selector, on_call, refusals)
        self._given = transport
        self._given_flavour = flavour_of_transport(transport) if transport is not None else None
        self._defaults: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def on_call(self) -> CallHook | None:
        return self._exchange.on_call

    def _inner(self, flavour: Flavour, asynchronous: bool) -> tuple[Any, Flavour]:
        if self._given is not None:
            return self._given, self._given_flavour or flavour
        inner = self._defaults.get(flavour.name)
        if inner is None:
            with self._lock:
                inner = self._defaults.get(flavour.name)
                if inner is None:
                    make = flavour.async_transport if asynchronous else flavour.sync_transport
                    inner = self._defaults[flavour.name] = make()
        return inner, flavour

    def _open(self, request: Any, flavour: Flavour, generation: tuple[str, Dialect]) -> Any:
        """A generation call's route, attempt flow and id; for a call refused before any
        attempt, its refusal response (or the refusal raised, as ``refusals`` says); None for a
        call to a model the table cannot price, sent as written when no budget is set."""
        exchange = self._exchange
        try:
            route = exchange.route(request, flavour, *generation)
            if exchange.unrouted(route):
                return None
            started = self.selector.engine.start(
                route.body,
                requirements=route.requirements,
                path=route.path,
                dialect=route.dialect,
                max_wait=lambda: longest_timeout(route.extensions),
            )
        except TierselError as exc:
            return exchange.refuse(request, flavour, generation[1], exc)
        return route, started

    def _transports(self) -> list[Any]:
        given = [self._given] if self._given is not None else []
        return given + list(self._defaults.values())

    def __repr__(self) -> str:
        inner = type(self._given).__name__ if self._given is not None else "default"
        return f"{type(self).__name__}(selector={self.selector!r}, transport={inner})"


class TierTransport(_Shell, SyncTransportBase):
    """A sync transport that chooses a tier for each generation call; mount it on an
    ``httpx.Client`` or an ``httpx2.Client``.

    - ``selector``: the `Selector` that decides (default: ``Selector()``).
    - ``transport``: where requests go (default: the real HTTP transport of the client's library).
    - ``on_call``: a function handed a frozen `CallRecord` as each routed call ends.
    - ``refusals``: how a call tiersel refuses before sending it (a bad hint, an unknown model,
      no feasible tier, an exhausted budget) comes back: ``"raise"`` its `TierselError`,
      ``"respond"`` with an HTTP error (400, 402 or 422, ``x-should-retry: false``, the message
      in the error body), or ``"auto"`` (the default): respond to the anthropic SDK, which would
      retry any exception a transport raises and report it as a connection error; raise otherwise.

    Per-call requirements come from ``tiersel.requirements(...)`` blocks around the call and
    ``x-tiersel-*`` request headers, over the selector's defaults.

    >>> import httpx2
    >>> from tiersel import Selector
    >>> from tiersel.wrap import TierTransport
    >>> client = httpx2.Client(transport=TierTransport(Selector(api_key="")))
    >>> client.close()
    """

    _sync = True

    def handle_request(self, request: Any) -> Any:
        flavour = flavour_of_request(request)
        inner, inner_flavour = self._inner(flavour, False)
        exchange = self._exchange
        if exchange.abandoned:
            exchange.abandoned.drain()
        generation = exchange.generation(request)
        if generation is None:
            refused = exchange.refuse_passthrough(request, flavour)
            if refused is not None:
                return refused
            return self._pass(request, flavour, inner, inner_flavour)
        request.read()
        opened = self._open(request, flavour, generation)
        if opened is None:
            return self._pass(request, flavour, inner, inner_flavour)
        if not isinstance(opened, tuple):
            return opened  # a refusal
        route, started = opened
        sel = self.selector
        clock = sel.clock

        def send(effect: Send) -> Reply:
            upstream = exchange.upstream(route, effect, inner_flavour)
            route.sent_at = started = clock.now()
            try:
                response = inner.handle_request(upstream)
                if exchange.is_stream(route, response):
                    answer = Answer(response)
                else:
                    answer = read_answer(response)
            except TransportErrors as exc:
                return no_reply(exc, started, clock.now())
            return reply(answer, clock.now() - started)

        try:
            result = sel.engine.run(started, send)
        except TierselError as exc:  # (nothing is left reserved)
            exchange.refused(route, started.call_id, exc)
            return exchange.refuse(request, flavour, route.dialect, exc)
        return exchange.respond(route, result, asynchronous=False)

    @staticmethod
    def _pass(request: Any, flavour: Flavour, inner: Any, inner_flavour: Flavour) -> Any:
        """Send ``request`` as written (less tiersel's hint headers): a call tiersel does not
        route."""
        sent = convert_request(without_hints(request, flavour), inner_flavour, asynchronous=False)
        try:
            response = inner.handle_request(sent)
        except TransportErrors as exc:
            raise as_flavour(exc, flavour) from exc
        return convert_response(response, flavour, asynchronous=False)

    def close(self) -> None:
        self._exchange.abandoned.drain()
        for t in self._transports():
            t.close()


class AsyncTierTransport(_Shell, AsyncTransportBase):
    """The async twin of `TierTransport`; mount it on an ``httpx.AsyncClient`` or an
    ``httpx2.AsyncClient``."""

    async def handle_async_request(self, request: Any) -> Any:
        flavour = flavour_of_request(request)
        inner, inner_flavour = self._inner(flavour, True)
        exchange = self._exchange
        if exchange.abandoned:
            await exchange.abandoned.adrain()
        generation = exchange.generation(request)
        if generation is None:
            refused = exchange.refuse_passthrough(request, flavour)
            if refused is not None:
                return refused
            return await self._pass(request, flavour, inner, inner_flavour)
        await request.aread()
        opened = self._open(request, flavour, generation)
        if opened is None:
            return await self._pass(request, flavour, inner, inner_flavour)
        if not isinstance(opened, tuple):
            return opened  # a refusal
        route, started = opened
        sel = self.selector
        clock = sel.clock

        async def send(effect: Send) -> Reply:
            upstream = exchange.upstream(route, effect, inner_flavour)
            route.sent_at = started = clock.now()
            try:
                response = await inner.handle_async_request(upstream)
                if exchange.is_stream(route, response):
                    answer = Answer(response)
                else:
                    answer = await aread_answer(response)
            except TransportErrors as exc:
                return no_reply(exc, started, clock.now())
            return reply(answer, clock.now() - started)

        try:
            result = await sel.engine.arun(started, send)
        except TierselError as exc:  # (nothing is left reserved)
            exchange.refused(route, started.call_id, exc)
            return exchange.refuse(request, flavour, route.dialect, exc)
        return exchange.respond(route, result, asynchronous=True)

    @staticmethod
    async def _pass(request: Any, flavour: Flavour, inner: Any, inner_flavour: Flavour) -> Any:
        """Send ``request`` as written (less tiersel's hint headers): a call tiersel does not
        route."""
        sent = convert_request(without_hints(request, flavour), inner_flavour, asynchronous=True)
        try:
            response = await inner.handle_async_request(sent)
        except TransportErrors as exc:
            raise as_flavour(exc, flavour) from exc
        return convert_response(response, flavour, asynchronous=True)

    async def aclose(self) -> None:
        await self._exchange.abandoned.adrain()
        for t in self._transports():
            await t.aclose()
