"""Redis clients for the stores: built from a URL, with timeouts that fail fast, and their scripts.

Only this module and the ``redis_*`` stores import redis-py, the optional extra
``tiersel[redis]``.
"""

from __future__ import annotations

import functools
from importlib import resources

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.exceptions
import redis.retry

__all__ = [
    "LEDGER_RETRIES",
    "SIGNAL_RETRIES",
    "UNREACHABLE",
    "async_client",
    "lua",
    "sync_client",
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

# A shared store must not stall a call for long when its server is away; a URL's own
# ?socket_timeout=... / ?socket_connect_timeout=... win over these.
_CONNECT_TIMEOUT_S = 1.0
_TIMEOUT_S = 2.0


def _backoff() -> redis.backoff.ExponentialBackoff:
    return redis.backoff.ExponentialBackoff(cap=0.2, base=0.02)


def sync_client(url: str, *, retries: int) -> redis.Redis:
    """A client for ``url`` that retries a failed command ``retries`` times, briefly."""
    retry = redis.retry.Retry(_backoff(), retries)
    return redis.Redis.from_url(
        url, retry=retry, socket_connect_timeout=_CONNECT_TIMEOUT_S, socket_timeout=_TIMEOUT_S
    )


def async_client(url: str, *, retries: int) -> redis.asyncio.Redis:
    """The asyncio twin of `sync_client`."""
    retry = redis.asyncio.retry.Retry(_backoff(), retries)
    return redis.asyncio.Redis.from_url(
        url, retry=retry, socket_connect_timeout=_CONNECT_TIMEOUT_S, socket_timeout=_TIMEOUT_S
    )


@functools.cache
def lua(*names: str) -> str:
    """The text of the bundled Lua files ``names``, joined (a shared prelude, then the body)."""
    folder = resources.files("tiersel.stores") / "lua"
    return "\n".join((folder / f"{name}.lua").read_text(encoding="utf-8") for name in names)
