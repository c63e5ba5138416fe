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

Both transports run one handler (`_Shell._handle`), a generator of the few steps that differ
between sync and async code (read the request, send it as written, run the call, fetch one
attempt's answer); each carries them out with its own I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from tiersel.dialects import Dialect
from tiersel.engine.core import Started
from tiersel.engine.effects import Send
from tiersel.engine.results import CallResult, Reply
from tiersel.errors import TierselError
from tiersel.http.flavours import (
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
from tiersel.http.reply import aread_body, no_reply, read_body, reply
from tiersel.http.response import is_stream
from tiersel.http.route import Route, generation, read_route, without_hints
from tiersel.http.upstream import longest_timeout, upstream_request
from tiersel.selector import Selector
from tiersel.wrap.exchange import CallHook, Exchange

__all__ = ["AsyncTierTransport", "TierTransport"]


# The steps of `_Shell._handle` that a shell carries out with its own I/O.


@dataclass(frozen=True, slots=True)
class _Read:
    """Read the request's body."""

    request: Any


@dataclass(frozen=True, slots=True)
class _Pass:
    """Send the request as written (less hints) and answer with the inner response."""

    request: Any
    flavour: Flavour
    inner: Any
    inner_flavour: Flavour


@dataclass(frozen=True, slots=True)
class _Run:
    """Carry out the call's attempts (`Engine.run` / `arun`); answers with its `CallResult`."""

    started: Started
    route: Route
    inner: Any
    inner_flavour: Flavour


@dataclass(frozen=True, slots=True)
class _Fetch:
    """Send one attempt's request; answers with the response and its body (None when the
    route's stream is left for the caller to read)."""

    inner: Any
    request: Any
    route: Route


_Step = _Read | _Pass | _Run | _Fetch
_Handler = Generator[_Step, Any, Any]


def _advance(gen: _Handler, value: Any, error: BaseException | None) -> tuple[bool, Any]:
    """Send ``value`` (or throw ``error``) into ``gen``: (True, its result) once it ends, else
    (False, its next step)."""
    try:
        return False, gen.throw(error) if error is not None else gen.send(value)
    except StopIteration as stop:
        return True, stop.value


def _outcome(do: Callable[[Any], Any], step: Any) -> tuple[Any, BaseException | None]:
    try:
        return do(step), None
    except Exception as exc:  # thrown back into the handler, which catches what it expects
        return None, exc


class _Shell:
    """What both transports share: the handler, the inner transports, the exchange."""

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
        self._exchange = Exchange(self.selector.engine, on_call, refusals)
        self._given = transport
        self._given_flavour = flavour_of_transport(transport) if transport is not None else None
        self._defaults: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def on_call(self) -> CallHook | None:
        return self._exchange.on_call

    def _inner(self, flavour: Flavour) -> tuple[Any, Flavour]:
        if self._given is not None:
            return self._given, self._given_flavour or flavour
        inner = self._defaults.get(flavour.name)
        if inner is None:
            with self._lock:
                inner = self._defaults.get(flavour.name)
                if inner is None:
                    make = flavour.sync_transport if self._sync else flavour.async_transport
                    inner = self._defaults[flavour.name] = make()
        return inner, flavour

    def _handle(self, request: Any) -> _Handler:
        """One request, start to end: passed through, refused, or routed and run."""
        flavour = flavour_of_request(request)
        inner, inner_flavour = self._inner(flavour)
        exchange = self._exchange
        found = generation(request)
        if found is None:
            refused = exchange.refuse_passthrough(request, flavour)
            if refused is not None:
                return refused
            return (yield _Pass(request, flavour, inner, inner_flavour))
        yield _Read(request)
        opened = self._open(request, flavour, found)
        if opened is None:
            return (yield _Pass(request, flavour, inner, inner_flavour))
        if not isinstance(opened, tuple):
            return opened  # a refusal
        route, started = opened
        try:
            result: CallResult = yield _Run(started, route, inner, inner_flavour)
        except TierselError as exc:  # (nothing is left reserved)
            exchange.refused(route, started.call_id, exc)
            return exchange.refuse(request, flavour, route.dialect, exc)
        return exchange.respond(route, result, asynchronous=not self._sync)

    def _open(self, request: Any, flavour: Flavour, found: tuple[str, Dialect]) -> Any:
        """A generation call's route and start; for a call refused before any attempt, its
        refusal response (or the refusal raised, as ``refusals`` says); None for a call to a
        model the table cannot price, sent as written when no budget is set."""
        exchange = self._exchange
        engine = self.selector.engine
        try:
            route = read_route(request, flavour, *found, engine.requirements, engine.pricing.tiers)
            if exchange.unrouted(route):
                return None
            started = engine.start(
                route.body,
                requirements=route.requirements,
                path=route.path,
                dialect=route.dialect,
                max_wait=lambda: longest_timeout(route.extensions),
            )
        except TierselError as exc:
            return exchange.refuse(request, flavour, found[1], exc)
        return route, started

    def _attempt(self, run: _Run, effect: Send) -> _Handler:
        """One attempt of a routed call: its request upstream, and what came back."""
        route = run.route
        clock = self.selector.engine.clock
        upstream = upstream_request(route, effect, run.inner_flavour)
        route.sent_at = started = clock.now()
        try:
            response, content = yield _Fetch(run.inner, upstream, route)
        except TransportErrors as exc:
            return no_reply(exc, started, clock.now())
        return reply(response, content, clock.now() - started)

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
        if self._exchange.abandoned:
            self._exchange.abandoned.drain()
        return self._drive(self._handle(request))

    def _drive(self, gen: _Handler) -> Any:
        done, step = _advance(gen, None, None)
        while not done:
            done, step = _advance(gen, *_outcome(self._do, step))
        return step

    def _do(self, step: _Step) -> Any:
        if isinstance(step, _Fetch):
            response = step.inner.handle_request(step.request)
            streamed = is_stream(step.route, response)
            return response, None if streamed else read_body(response)
        if isinstance(step, _Run):
            run = step

            def send(effect: Send) -> Reply:
                answer: Reply = self._drive(self._attempt(run, effect))
                return answer

            return self.selector.engine.run(run.started, send)
        if isinstance(step, _Read):
            return step.request.read()
        request = without_hints(step.request, step.flavour)
        sent = convert_request(request, step.inner_flavour, asynchronous=False)
        try:
            response = step.inner.handle_request(sent)
        except TransportErrors as exc:
            raise as_flavour(exc, step.flavour) from exc
        return convert_response(response, step.flavour, asynchronous=False)

    def close(self) -> None:
        self._exchange.abandoned.drain()
        for t in self._transports():
            t.close()


class AsyncTierTransport(_Shell, AsyncTransportBase):
    """The async twin of `TierTransport`; mount it on an ``httpx.AsyncClient`` or an
    ``httpx2.AsyncClient``."""

    async def handle_async_request(self, request: Any) -> Any:
        if self._exchange.abandoned:
            await self._exchange.abandoned.adrain()
        return await self._drive(self._handle(request))

    async def _drive(self, gen: _Handler) -> Any:
        done, step = _advance(gen, None, None)
        while not done:
            try:
                value, error = await self._do(step), None
            except Exception as exc:  # thrown back into the handler (see _outcome)
                value, error = None, exc
            done, step = _advance(gen, value, error)
        return step

    async def _do(self, step: _Step) -> Any:
        if isinstance(step, _Fetch):
            response = await step.inner.handle_async_request(step.request)
            if is_stream(step.route, response):
                return response, None
            return response, await aread_body(response)
        if isinstance(step, _Run):
            return await self.selector.engine.arun(step.started, lambda e: self._send(step, e))
        if isinstance(step, _Read):
            return await step.request.aread()
        request = without_hints(step.request, step.flavour)
        try:
            response = await step.inner.handle_async_request(
                convert_request(request, step.inner_flavour, asynchronous=True)
            )
        except TransportErrors as exc:
            raise as_flavour(exc, step.flavour) from exc
        return convert_response(response, step.flavour, asynchronous=True)

    async def _send(self, run: _Run, effect: Send) -> Reply:
        answer: Reply = await self._drive(self._attempt(run, effect))
        return answer

    async def aclose(self) -> None:
        await self._exchange.abandoned.adrain()
        for t in self._transports():
            await t.aclose()
