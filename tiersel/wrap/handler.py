"""The handler both transports run (`tiersel.wrap.TierTransport` and its async twin): one request,
start to end, as a generator of the few steps sync and async code carry out differently (read
the request, send it as written, run the call, fetch one attempt's answer). Each transport
carries the steps out with its own I/O; everything else (routing, refusing, building each
attempt's request, the response) happens here, once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from typing import Any

import httpx

from tiersel.dialects import Dialect
from tiersel.engine.core import Started
from tiersel.engine.effects import Send
from tiersel.engine.results import CallResult, Reply
from tiersel.errors import TierselError
from tiersel.http.assemble import whole_answer
from tiersel.http.flavours import Flavour, TransportErrors, flavour_of_request, flavour_of_transport
from tiersel.http.reply import no_reply, reply
from tiersel.http.response import answered_whole
from tiersel.http.route import Route, generation, read_route
from tiersel.http.upstream import dump, longest_timeout, upstream_request
from tiersel.selector import Selector
from tiersel.wrap.exchange import CallHook, Exchange
from tiersel.wrap.pace import PaceCheck

__all__ = [
    "Fetch",
    "Handler",
    "Hold",
    "Pass",
    "Read",
    "Run",
    "Step",
    "Steps",
    "advance",
    "outcome",
]


# The steps of `Handler.handle` that a shell carries out with its own I/O.


@dataclass(frozen=True, slots=True)
class Read:
    """Read the request's body."""

    request: Any


@dataclass(frozen=True, slots=True)
class Pass:
    """Send the request as written (less hints) and answer with the inner response."""

    request: Any
    flavour: Flavour
    inner: Any
    inner_flavour: Flavour


@dataclass(frozen=True, slots=True)
class Run:
    """Carry out the call's attempts (`Engine.run` / `arun`); answers with its `CallResult`."""

    started: Started
    route: Route
    inner: Any
    inner_flavour: Flavour


@dataclass(frozen=True, slots=True)
class Hold:
    """Read a watched attempt's stream into ``check`` until its pace decides
    (`tiersel.wrap.pace.hold`); answers False once it is cut, else True, or, ``whole``, the
    stream's bytes read to its end."""

    response: Any
    check: PaceCheck
    whole: bool


@dataclass(frozen=True, slots=True)
class Fetch:
    """Send one attempt's request; answers with the response and its body (None when the
    stream it asked for, ``stream``, is left to be read)."""

    inner: Any
    request: Any
    stream: bool


Step = Read | Pass | Run | Fetch | Hold
Steps = Generator[Step, Any, Any]


def advance(gen: Steps, value: Any, error: BaseException | None) -> tuple[bool, Any]:
    """Send ``value`` (or throw ``error``) into ``gen``: (True, its result) once it ends, else
    (False, its next step)."""
    try:
        return False, gen.throw(error) if error is not None else gen.send(value)
    except StopIteration as stop:
        return True, stop.value


def outcome(do: Callable[[Any], Any], step: Any) -> tuple[Any, BaseException | None]:
    try:
        return do(step), None
    except Exception as exc:  # thrown back into the handler, which catches what it expects
        return None, exc


class Handler:
    """What both transports hold: the selector, the inner transports, the exchange, and the
    handler of one request (`handle`), which each transport drives with its own I/O."""

    def __init__(
        self,
        selector: Selector | None,
        transport: Any,
        *,
        on_call: CallHook | None,
        refusals: str,
        sync: bool,
    ) -> None:
        self.selector = selector if selector is not None else Selector()
        self.sync = sync
        self.exchange = Exchange(self.selector.engine, on_call, refusals)
        if transport is None:
            transport = _selectors_transport(self.selector, sync)
        self._given = transport
        self._given_flavour = flavour_of_transport(transport) if transport is not None else None
        self._defaults: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _inner(self, flavour: Flavour) -> tuple[Any, Flavour]:
        if self._given is not None:
            return self._given, self._given_flavour or flavour
        inner = self._defaults.get(flavour.name)
        if inner is None:
            with self._lock:
                inner = self._defaults.get(flavour.name)
                if inner is None:
                    make = flavour.sync_transport if self.sync else flavour.async_transport
                    inner = self._defaults[flavour.name] = make()
        return inner, flavour

    def handle(self, request: Any) -> Steps:
        """One request, start to end: passed through, refused, or routed and run."""
        flavour = flavour_of_request(request)
        inner, inner_flavour = self._inner(flavour)
        exchange = self.exchange
        found = generation(request)
        if found is None:
            refused = exchange.refuse_passthrough(request, flavour)
            if refused is not None:
                return refused
            return (yield Pass(request, flavour, inner, inner_flavour))
        yield Read(request)
        opened = self._open(request, flavour, found)
        if opened is None:
            return (yield Pass(request, flavour, inner, inner_flavour))
        if not isinstance(opened, tuple):
            return opened  # a refusal
        route, started = opened
        try:
            result: CallResult = yield Run(started, route, inner, inner_flavour)
        except TierselError as exc:  # (nothing is left reserved)
            exchange.refused(route, started.call_id, exc)
            return exchange.refuse(request, flavour, route.dialect, exc)
        return exchange.respond(route, result, asynchronous=not self.sync)

    def _open(self, request: Any, flavour: Flavour, found: tuple[str, Dialect]) -> Any:
        """A generation call's route and start; for a call refused before any attempt, its
        refusal response (or the refusal raised, as ``refusals`` says); None for a call to a
        model the table cannot price, sent as written when no budget is set."""
        exchange = self.exchange
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
                watch=True,  # `attempt` watches an attempt's pace on its stream
            )
        except TierselError as exc:
            return exchange.refuse(request, flavour, found[1], exc)
        return route, started

    def attempt(self, run: Run, effect: Send) -> Steps:
        """One attempt of a routed call: its request upstream, and what came back."""
        route = run.route
        clock = self.selector.engine.clock
        upstream = upstream_request(route, effect, run.inner_flavour)
        route.sent_at = started = clock.now()
        watch = effect.watch
        try:
            response, content = yield Fetch(run.inner, upstream, route.stream or bool(watch))
            if watch is None or content is not None:
                return reply(response, content, clock.now() - started)
            check = PaceCheck(watch, route.dialect, started)
            kept = yield Hold(response, check, not route.stream)
            if kept is False:
                elapsed = clock.now() - started
                return Reply(
                    200, {}, None, elapsed, cut=True, ttft_s=check.first, tokens=check.tokens
                )
            if kept is True:
                return replace(reply(response, None, clock.now() - started), ttft_s=check.first)
            data = kept
        except TransportErrors as exc:
            return no_reply(exc, started, clock.now())
        return _whole(run, response, data, clock.now() - started)

    def transports(self) -> list[Any]:
        """The inner transports in use (the given one, or those opened on first use)."""
        given = [self._given] if self._given is not None else []
        return given + list(self._defaults.values())

    def describe(self, door: str) -> str:
        """``door``'s repr: its selector and where its requests go."""
        inner = type(self._given).__name__ if self._given is not None else "default"
        return f"{door}(selector={self.selector!r}, transport={inner})"


def _selectors_transport(selector: Selector, sync: bool) -> Any:
    """The transport a door uses when given none: the selector's own of the door's kind where it
    is a transport (a simulator's, a mock), so that a door over a selector built for tests does
    not reach the network; None (the client's library's own) where the selector has none, or an
    httpx client. A plain function cannot be a door's transport: `TypeError`."""
    out = selector.outgoing
    given = out.transport if sync else out.async_transport
    if given is None or isinstance(given, (httpx.Client, httpx.AsyncClient)):
        return None
    if flavour_of_transport(given) is not None:
        return given
    name, door = (
        ("transport", "TierTransport") if sync else ("async_transport", "AsyncTierTransport")
    )
    raise TypeError(
        f"{door}: the selector's {name}= is a function, which a door cannot send through; give"
        f" the door a transport ({door}(selector, transport=...)), an httpx or httpx2 one"
    )


def _whole(run: Run, response: Any, data: bytes, elapsed: float) -> Reply:
    """A watched stream kept and read to its end, as the whole answer the call asked for; a
    stream that did not reach its end is a failed attempt."""
    body = whole_answer(data, run.route.dialect)
    if body is None:
        return Reply(0, {}, None, elapsed, error="the stream ended before its answer did")
    content = dump(body)
    return reply(answered_whole(response, content, run.inner_flavour), content, elapsed)
