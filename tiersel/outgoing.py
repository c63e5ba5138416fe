"""Where a `Selector`'s calls go: its base URL, its API key (never shown), its transports, and
each attempt's request built from the call's route. The transport door has its own inner
transport and needs none of this."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from tiersel.dialects import generation_dialect
from tiersel.errors import RequestNotUnderstood, shown

if TYPE_CHECKING:
    from tiersel.call import Requirements
    from tiersel.clock import Clock
    from tiersel.engine.effects import Send
    from tiersel.engine.results import Reply
    from tiersel.http.route import Route

# The wire code (httpx2's too, when installed) loads with the first send, not with a Selector:
# deciding needs none of it.

__all__ = [
    "FIREWORKS_BASE_URL",
    "AsyncTransport",
    "Outgoing",
    "Secret",
    "SyncTransport",
    "check_base_url",
    "is_loopback",
    "reaches_network",
]

FIREWORKS_BASE_URL = "https://api.fireworks.ai/inference/v1"

SyncTransport = httpx.BaseTransport | httpx.Client | Callable[[httpx.Request], httpx.Response]
AsyncTransport = (
    httpx.AsyncBaseTransport
    | httpx.AsyncClient
    | Callable[[httpx.Request], Awaitable[httpx.Response]]
)


def check_base_url(url: str, *, sends_key: bool) -> str:
    """``url`` without a trailing slash, once checked: an ``http://`` or ``https://`` URL with
    a host; and, when an API key goes with the requests (``sends_key``), ``https://``, or
    ``http://`` only to this machine (loopback), so the key never crosses a network in clear
    text. Raises ValueError naming ``base_url`` and the problem."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"base_url {url!r} is not a URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"base_url must be an http:// or https:// URL with a host, got {url!r}")
    if sends_key and parsed.scheme == "http" and not is_loopback(parsed.host):
        raise ValueError(
            f"base_url {url!r} is plain http:// to another machine: the API key would go in"
            " clear text. Use https://, or http:// to a server on this machine (loopback)"
        )
    return url.rstrip("/")


def reaches_network(transport: object) -> bool:
    """Whether requests through ``transport`` go out over the network: none given (a client of
    tiersel's own), or an httpx client or HTTP transport. In-process ones (a mock, the
    simulator's) do not, whatever their base URL says."""
    return transport is None or isinstance(transport, _NETWORK)


_NETWORK = (httpx.Client, httpx.AsyncClient, httpx.HTTPTransport, httpx.AsyncHTTPTransport)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (IPv6 ones without brackets, as
    ``httpx.URL.host`` gives them)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Secret:
    """Holds a credential; shows as ``***`` in reprs, logs and ``vars()``, and pickles as
    nothing."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value

    @property
    def value(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret(None)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[type[Secret], tuple[None]]:
        # Never written out: whatever pickles or deep-copies it gets it back without the key.
        return (Secret, (None,))


class Outgoing:
    """A selector's way out: ``route`` reads a call's body into a route (its URL under
    ``base_url``, the API key as a bearer token unless the caller set one), ``attempter`` /
    ``async_attempter`` the function that makes each attempt (through the transport given for
    the call, else the selector's, else a client of its own, closed by ``close`` /
    ``aclose``)."""

    def __init__(
        self,
        base_url: str,
        transport: SyncTransport | None,
        async_transport: AsyncTransport | None,
        api_key: str | None,
    ) -> None:
        self.base_url = check_base_url(base_url, sends_key=False)
        _check_kind("transport", transport, sync=True)
        _check_kind("async_transport", async_transport, sync=False)
        # The key goes only where it cannot be read on the way: checked when a transport that
        # reaches the network (`reaches_network`) is first used (`_check_key_route`).
        self._key_unchecked = bool(api_key)
        self.transport = transport
        self.async_transport = async_transport
        self.api_key = Secret(api_key)
        self._urls: dict[str, httpx.URL] = {}
        self._own_client: httpx.Client | None = None
        self._own_aclient: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"Outgoing(base_url={self.base_url!r}, api_key={self.api_key!r})"

    def route(
        self,
        body: Any,
        path: str,
        headers: Mapping[str, str] | None,
        defaults: Requirements,
        tiers: Collection[str],
    ) -> Route:
        """The call as the caller wrote it, read into a route as `TierTransport` reads a request
        (``defaults``, then a `tiersel.requirements` block, then any hint headers)."""
        from tiersel.http.flavours import HTTPX
        from tiersel.http.route import read_route
        from tiersel.http.upstream import dump

        dialect = generation_dialect(path)
        content = dump(_sendable(body))
        request = httpx.Request(
            "POST", self._url(path), headers=self._headers(headers), content=content
        )
        return read_route(request, HTTPX, path, dialect, defaults, tiers)

    def _headers(self, headers: Mapping[str, str] | None) -> dict[str, str]:
        out = dict(headers or {})
        lower = {k.lower() for k in out}
        if "content-type" not in lower:
            out["content-type"] = "application/json"
        key = self.api_key.value
        if "authorization" not in lower and "x-api-key" not in lower and key:
            out["authorization"] = f"Bearer {key}"
        return out

    def _url(self, path: str) -> httpx.URL:
        # Parsing a URL costs more than the rest of building a request: parse each one once.
        full = self.base_url + path
        url = self._urls.get(full)
        if url is None:
            url = httpx.URL(full)
            if len(self._urls) < 64:
                self._urls[full] = url
        return url

    def attempter(
        self, route: Route, call_id: str, clock: Clock, transport: SyncTransport | None
    ) -> Callable[[Send], Reply]:
        """The function that makes each attempt of a call: its request sent through
        ``transport`` (else the selector's), its reply read whole and timed by ``clock``."""
        from tiersel.http.reply import no_reply, read_body, reply

        send = self._sender(transport)

        def attempt(effect: Send) -> Reply:
            request = _attempt_request(route, effect, call_id)
            at = clock.now()
            try:
                response = send(request)
                content = read_body(response, keep=True)
            except httpx.TransportError as exc:
                return no_reply(exc, at, clock.now())
            return reply(response, content, clock.now() - at)

        return attempt

    def async_attempter(
        self, route: Route, call_id: str, clock: Clock, transport: AsyncTransport | None
    ) -> Callable[[Send], Awaitable[Reply]]:
        """The async twin of `attempter`."""
        from tiersel.http.reply import aread_body, no_reply, reply

        send = self._async_sender(transport)

        async def attempt(effect: Send) -> Reply:
            request = _attempt_request(route, effect, call_id)
            at = clock.now()
            try:
                response = await send(request)
                return reply(response, await aread_body(response, keep=True), clock.now() - at)
            except httpx.TransportError as exc:
                return no_reply(exc, at, clock.now())

        return attempt

    def _check_key_route(self) -> None:
        """Raise ValueError when the key would reach the network in clear text (once: the base
        URL does not change)."""
        check_base_url(self.base_url, sends_key=True)
        self._key_unchecked = False

    def _sender(self, transport: SyncTransport | None) -> Callable[[httpx.Request], httpx.Response]:
        t = transport if transport is not None else self.transport
        if t is None and self.async_transport is not None:
            raise TypeError(
                "this Selector was given async_transport= only: send would go to the network"
                " through a client of its own; call asend, or give transport= too"
            )
        if self._key_unchecked and reaches_network(t):
            self._check_key_route()
        if t is None:
            if self._own_client is None:
                self._own_client = httpx.Client()
            t = self._own_client
        if isinstance(t, httpx.Client):
            return t.send
        if isinstance(t, httpx.BaseTransport):
            return t.handle_request
        return t

    def _async_sender(
        self, transport: AsyncTransport | None
    ) -> Callable[[httpx.Request], Awaitable[httpx.Response]]:
        t = transport if transport is not None else self.async_transport
        if t is None and self.transport is not None:
            raise TypeError(
                "this Selector was given transport= only: asend would go to the network through"
                " a client of its own; call send, or give async_transport= too (an"
                " AsyncSimTransport beside a SimTransport, say)"
            )
        if self._key_unchecked and reaches_network(t):
            self._check_key_route()
        if t is None:
            if self._own_aclient is None:
                self._own_aclient = httpx.AsyncClient()
            t = self._own_aclient
        if isinstance(t, httpx.AsyncClient):
            return t.send
        if isinstance(t, httpx.AsyncBaseTransport):
            return t.handle_async_request
        return t

    def close(self) -> None:
        if self._own_client is not None:
            self._own_client.close()
            self._own_client = None

    async def aclose(self) -> None:
        if self._own_aclient is not None:
            await self._own_aclient.aclose()
            self._own_aclient = None


def _attempt_request(route: Route, effect: Send, call_id: str) -> httpx.Request:
    """One attempt's request: the transport's own builder's, marked with its call id (an
    extension, never sent), its body read (it is in memory; a plain function transport may read
    ``request.content``)."""
    from tiersel.http.flavours import HTTPX
    from tiersel.http.upstream import CALL_ID, upstream_request

    request: httpx.Request = upstream_request(route, effect, HTTPX)
    request.extensions = {**request.extensions, CALL_ID: call_id}
    request.read()
    return request


def _sendable(body: Any) -> Mapping[str, Any]:
    """``body`` if it can go upstream as JSON; a Python object can hold what a parsed request
    cannot (a cycle, NaN, a set), which would hang the token count or break the send."""
    if not isinstance(body, Mapping):
        raise RequestNotUnderstood(f"the body must be a JSON object, got {shown(body)}")
    try:
        json.dumps(body, allow_nan=False)
    except (ValueError, TypeError, RecursionError) as exc:
        raise RequestNotUnderstood(f"the body cannot be sent as JSON: {shown(str(exc))}") from None
    return body


def _check_kind(name: str, transport: object, sync: bool) -> None:
    """`TypeError` for a transport of the other kind (an async one as ``transport=``, a sync one
    as ``async_transport=``): it failed later, as "object is not callable" or "can't be used in
    'await' expression". A client is known by its class, a transport by its only method. And
    for what is no transport at all (a URL, a number): it failed at the first send, after the
    budget was charged for an attempt in flight."""
    if sync:
        wrong = isinstance(transport, httpx.AsyncClient) or _only(transport, "handle_async_request")
    else:
        wrong = isinstance(transport, httpx.Client) or _only(transport, "handle_request")
    if wrong:
        kind, other = ("async", "async_transport") if sync else ("sync", "transport")
        raise TypeError(f"{name}={type(transport).__name__}(...) is {kind}: pass it as {other}=")
    client = httpx.Client if sync else httpx.AsyncClient
    method = "handle_request" if sync else "handle_async_request"
    if transport is None or isinstance(transport, client) or hasattr(transport, method):
        return  # (an httpx2 transport too: a door sends through it, `tiersel.wrap`)
    if callable(transport):
        return
    hint = " (a URL goes in base_url=)" if isinstance(transport, str) else ""
    raise TypeError(
        f"{name}={shown(transport)} is not a transport: give an httpx {client.__name__}, an httpx"
        f" or httpx2 transport, or a function from httpx.Request to httpx.Response{hint}"
    )


def _only(transport: object, method: str) -> bool:
    """Whether ``transport`` has ``method`` and not its twin (a transport of one kind)."""
    twin = "handle_request" if method == "handle_async_request" else "handle_async_request"
    return hasattr(transport, method) and not hasattr(transport, twin)
