"""Redis clients for the stores: built from a URL, with timeouts that fail fast, and their scripts.

Only this module and the ``redis_*`` stores import redis-py, the optional extra
``tiersel[redis]``.
"""

from __future__ import annotations

import functools
import inspect
from importlib import resources
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.exceptions
import redis.retry

from tiersel.stores.errors import StoreMisconfigured

__all__ = [
    "LEDGER_RETRIES",
    "SIGNAL_RETRIES",
    "STORE_ERRORS",
    "TIMEOUTS",
    "UNREACHABLE",
    "async_client",
    "check_refusal",
    "lua",
    "settings_for",
    "sync_client",
    "url_options",
]

# Budget operations are idempotent by call id, so one lost in flight may be sent again;
# recording a signal is not, and a lost one matters little.
LEDGER_RETRIES = 3
SIGNAL_RETRIES = 0

# Errors that mean "the server did not answer" (down, unreachable, loading, a read-only replica
# after a failover), as opposed to a bug in a script or a command.
UNREACHABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    OSError,
)

# Every error a store operation may raise: what `UNREACHABLE` lists, and Redis's own answers.
STORE_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)

# A shared store must not stall a call for long when its server is away; a URL's own
# ?socket_timeout=... / ?socket_connect_timeout=... win over these.
_CONNECT_TIMEOUT_S = 1.0
_TIMEOUT_S = 2.0


def _backoff() -> redis.backoff.ExponentialBackoff:
    return redis.backoff.ExponentialBackoff(cap=0.2, base=0.02)


# A command is tried again only after a connection error (refused, reset: they come at once),
# never after a timeout: a server that hangs would stall each operation that many timeouts
# (a budget read took 16.6 s before `StoreUnavailable` with the redis-server stopped).
_RETRIED = (redis.exceptions.ConnectionError,)
TIMEOUTS: tuple[type[BaseException], ...] = (redis.exceptions.TimeoutError, TimeoutError)


def sync_client(url: str, *, retries: int) -> redis.Redis:
    """A client for ``url`` that retries a command that lost its connection ``retries`` times,
    briefly."""
    retry = redis.retry.Retry(_backoff(), retries, supported_errors=_RETRIED)
    return redis.Redis.from_url(
        url, retry=retry, socket_connect_timeout=_CONNECT_TIMEOUT_S, socket_timeout=_TIMEOUT_S
    )


def async_client(url: str, *, retries: int) -> redis.asyncio.Redis:
    """The asyncio twin of `sync_client`."""
    retry = redis.asyncio.retry.Retry(_backoff(), retries, supported_errors=_RETRIED)
    return redis.asyncio.Redis.from_url(
        url, retry=retry, socket_connect_timeout=_CONNECT_TIMEOUT_S, socket_timeout=_TIMEOUT_S
    )


@functools.cache
def lua(*names: str) -> str:
    """The text of the bundled Lua files ``names``, joined (a shared prelude, then the body)."""
    folder = resources.files("tiersel.stores") / "lua"
    return "\n".join((folder / f"{name}.lua").read_text(encoding="utf-8") for name in names)


# What a URL's query cannot set: tiersel builds these itself (a retry policy), or they take
# Python objects that a query string cannot give.
_NOT_FROM_A_URL = frozenset({"retry", "connection_class", "cache_factory"})


@functools.cache
def settings_for(scheme: str) -> frozenset[str]:
    """The query parameters redis-py takes in a ``scheme://`` URL: its connection's settings, and
    the pool's (``max_connections``). Any other one would reach redis-py as a keyword it does not
    know, and fail as a `TypeError` at the first call."""
    connection = {
        "rediss": redis.connection.SSLConnection,
        "unix": redis.connection.UnixDomainSocketConnection,
    }.get(scheme, redis.connection.Connection)
    names: set[str] = set()
    for cls in (*connection.__mro__, redis.connection.ConnectionPool):
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                names.add(p.name)
    return frozenset(names - _NOT_FROM_A_URL)


def url_options(url: str) -> dict[str, Any]:
    """The settings redis-py reads from ``url``; `ValueError` when it cannot read one's value."""
    try:
        return dict(redis.connection.parse_url(url))  # type: ignore[no-untyped-call]
    except (TypeError, ValueError) as exc:
        text = str(exc).removesuffix(".").removesuffix(" in connection URL")
        raise ValueError(text[:1].lower() + text[1:]) from None


def check_refusal(exc: BaseException, client: Any, url: str) -> None:
    """Raise `StoreMisconfigured` when ``exc`` says the URL is wrong, not that its server is
    away: the server refuses its credentials or its database, or is no Redis server at all (it
    answers in another protocol). Such a mistake does not mend with time, so it is never taken
    for an outage (falling back, or retried later). Return for any other error."""
    text = str(exc)
    if isinstance(exc, (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)):
        raise StoreMisconfigured(url, f"the server refused its credentials ({text})") from None
    if isinstance(exc, redis.exceptions.InvalidResponse):
        raise StoreMisconfigured(
            url, f"the server there does not answer as Redis does ({text})"
        ) from None
    if isinstance(exc, redis.exceptions.ResponseError) and (
        "DB index" in text or "SELECT is not allowed" in text
    ):
        db = client.connection_pool.connection_kwargs.get("db", 0)
        raise StoreMisconfigured(url, f"the server has no database {db} ({text})") from None
