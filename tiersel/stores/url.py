"""Open a signal store or a budget ledger from a URL: ``memory://`` or ``redis://host:port/db``.

``memory://`` (the default) keeps state in this process; each call opens a new, unshared store.
``redis://`` (also ``rediss://`` and ``unix://``) shares it between every process and machine
that opens the same URL; it needs redis-py, the extra ``tiersel[redis]``. The URL may carry
tiersel's own settings, which win over the keyword arguments:

- ``prefix``: the namespace of every key (default ``tiersel``);
- ``budget``: the name of the budget a ledger opens;
- ``reservation_ttl_s``: the expiry of a reservation made without a ttl of its own;
- ``on_expiry``: ``release`` or ``charge``, what an expired reservation becomes (`OnExpiry`);
- ``clock``: ``server`` (the default) or ``caller``, whose time a Redis store's windows,
  cooldowns and expiries run on: Redis's own, or the ``now`` its callers pass (one clock
  shared by all of them, as a test's `FakeClock` or a replay's virtual time is).

Every other query parameter goes to redis-py (e.g. ``socket_timeout``), which must know it; the
port and the database (``/DB`` or ``?db=``) must be numbers. A password in the URL (or in
``?password=``) is never shown (messages and reprs show ``***``).

>>> ledger = open_ledger("memory://", limit_usd=5.0)
>>> ledger.reserve("call-1", 0.5, now=0.0).reserved_usd
0.5
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import SplitResult, parse_qsl, unquote, unquote_plus, urlencode, urlsplit

from tiersel.budget import AsyncLedger, Ledger, MemoryLedger, OnExpiry
from tiersel.signals import AsyncSignalStore, MemorySignalStore, SignalConfig, SignalStore
from tiersel.stores.errors import LedgerFallback, SignalFallback, StoreClock
from tiersel.stores.memory import AsyncMemoryLedger, AsyncMemorySignalStore

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "StoreURL",
    "aclose_store",
    "close_store",
    "open_async_ledger",
    "open_async_signal_store",
    "open_ledger",
    "open_signal_store",
    "parse_store_url",
]

DEFAULT_URL = "memory://"
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_OWN = ("prefix", "budget", "reservation_ttl_s", "on_expiry", "clock")
_SECRET_SETTINGS = frozenset({"password", "ssl_password"})


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed store URL: the backend, the redis-py URL less tiersel's own settings, and those."""

    backend: str  # "memory" or "redis"
    public: str  # the URL as given, password masked
    redis_url: str | None = None
    prefix: str | None = None
    budget: str | None = None
    reservation_ttl_s: float | None = None
    on_expiry: OnExpiry | None = None
    clock: StoreClock = StoreClock.server
    clock_named: bool = False  # the URL says clock=

    def __repr__(self) -> str:
        return f"StoreURL({self.public!r})"


def parse_store_url(url: str) -> StoreURL:
    """Parse a store URL; `ValueError` names the URL (password masked) and the problem."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"a store URL must be a non-empty string, got {url!r}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # not shown: it cannot be split, so neither can its password
        raise ValueError(f"the store URL is not a URL ({exc})") from None
    public = _mask(url, parts)
    begin, end = _authority(url)
    if "@" in url[end:]:
        # Past a '?' or '#': a password holding one, or a setting holding an '@'. Where the
        # user part ends cannot be told, so none of it is shown.
        raise ValueError(
            f"store URL {public!r}: an '@' after its '?' or '#': percent-encode any '@', '?' or"
            " '#' in its user, password or settings ('@' as %40, '?' as %3F, '#' as %23)"
        )
    if "@" in url[begin:end] and "@" not in parts.netloc:
        # A user part holding "/": read as a path, it would be quoted in a port or database
        # problem, password and all.
        raise ValueError(
            f"store URL {public!r}: its user or password holds '/' (or '?', '#'):"
            " percent-encode it ('/' as %2F, '?' as %3F, '#' as %23)"
        )
    own: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k in _OWN:
            if k in own:
                raise ValueError(f"store URL {public!r}: {k} is given twice")
            own[k] = v
        else:
            rest.append((k, v))
    ttl = _ttl(own.get("reservation_ttl_s"), public)
    expiry = _expiry(own.get("on_expiry"), public)
    for k in ("prefix", "budget"):
        if k in own and not own[k]:
            raise ValueError(f"store URL {public!r}: {k} must not be empty")
    try:
        clock = StoreClock(own.get("clock", "server"))
    except ValueError:
        raise ValueError(
            f"store URL {public!r}: clock must be server or caller, got {own['clock']!r}"
        ) from None
    if parts.scheme == "memory":
        if own.get("clock") == StoreClock.server:
            raise ValueError(
                f"store URL {public!r}: memory:// runs on its callers' clock; clock=server"
                " needs a Redis"
            )
        if parts.netloc or parts.path not in ("", "/") or rest:
            raise ValueError(
                f"store URL {public!r}: memory:// takes no host, path or redis options"
            )
        return StoreURL("memory", public, reservation_ttl_s=ttl, on_expiry=expiry)
    if parts.scheme in _REDIS_SCHEMES:
        redis_url = _unsplit(parts._replace(query=urlencode(rest)))
        problem = _redis_problem(parts, rest, redis_url)
        if problem is not None:
            raise ValueError(f"store URL {public!r}: {problem}")
        return StoreURL(
            "redis",
            public,
            redis_url=redis_url,
            prefix=own.get("prefix"),
            budget=own.get("budget"),
            reservation_ttl_s=ttl,
            on_expiry=expiry,
            clock=clock,
            clock_named="clock" in own,
        )
    raise ValueError(
        f"store URL {public!r}: unknown scheme {parts.scheme!r};"
        " use memory:// or redis://host:port/db"
    )


def _ttl(text: str | None, public: str) -> float | None:
    if text is None:
        return None
    try:
        ttl = float(text)
    except ValueError:
        ttl = math.nan
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError(
            f"store URL {public!r}: reservation_ttl_s must be a number of seconds > 0, got {text!r}"
        )
    return ttl


def _expiry(text: str | None, public: str) -> OnExpiry | None:
    if text is None:
        return None
    try:
        return OnExpiry(text)
    except ValueError:
        raise ValueError(
            f"store URL {public!r}: on_expiry must be release or charge, got {text!r}"
        ) from None


def _redis_problem(parts: SplitResult, rest: list[tuple[str, str]], redis_url: str) -> str | None:
    """What redis-py would choke on in a redis URL, at the first call rather than here."""
    if parts.scheme != "unix":
        try:
            parts.port  # noqa: B018 -- reading it checks it
        except ValueError:
            return f"the port {_port_text(parts.netloc)!r} is not a number from 0 to 65535"
        db = unquote(parts.path)[1:]
        if db and not _is_index(db):
            return f"the database {db!r} is not a number (redis://host:port/DB, DB from 0)"
    for key, value in rest:
        if key == "db" and not _is_index(value):
            return f"the database {value!r} is not a number (?db=N, N from 0)"
    try:
        conn = _redis_module("redis_connection")
    except ImportError:
        return None  # opening the store says how to install redis-py
    known = conn.settings_for(parts.scheme)
    after_password = False
    for key, _ in rest:
        if key not in known:
            if after_password:  # (it may be the rest of a password that holds an '&')
                return (
                    "a setting after its password is one neither tiersel nor redis-py knows"
                    " (an '&' in a password is written %26)"
                )
            near = difflib.get_close_matches(key, [*_OWN, *sorted(known)], n=1, cutoff=0.8)
            hint = f"did you mean {near[0]!r}?" if near else f"tiersel's own: {', '.join(_OWN)}"
            return f"unknown setting {key!r} ({hint})"
        after_password = after_password or key.lower() in _SECRET_SETTINGS
    try:
        conn.url_options(redis_url)
    except ValueError as exc:
        return str(exc)
    return None


def _is_index(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _port_text(netloc: str) -> str:
    host = netloc.rpartition("@")[2]
    if host.startswith("["):  # [IPv6]:port
        host = host.partition("]")[2]
    return host.rpartition(":")[2]


def _authority(url: str) -> tuple[int, int]:
    """Where what stands between ``url``'s ``://`` and its query or fragment begins and ends:
    host, port, path and any user part, as typed (with the tabs and newlines `urlsplit`
    drops)."""
    begin = url.find("://")
    begin = begin + 3 if begin >= 0 else 0
    ends = [i for i in (url.find("?", begin), url.find("#", begin)) if i >= 0]
    return begin, min(ends, default=len(url))


def _mask(url: str, parts: SplitResult) -> str:
    """``url`` as given, with any password, in its user part or its query, shown as ``***``
    (an error quotes what was typed, not a rewriting of it: ``redis:/host`` is not shown as
    ``redis:///host``). The user part is found in the text itself, not in ``parts``, which
    drops tabs and newlines (a password read from a file with its newline). A user part with
    no ``:`` is masked whole: it is a user name to redis-py, but often a password meant. With
    an ``@`` past the ``?`` or ``#``, where the user part ends cannot be told: all but the
    scheme is masked. In the query, a password setting's value is masked with all that follows
    it (it may hold an ``&`` or ``#``), and so is the value of any setting tiersel does not
    know (a misspelt ``pasword=``)."""
    begin, end = _authority(url)
    if "@" in url[end:]:
        return f"{url[:begin]}***"
    at = url.rfind("@", begin, end)
    if at >= 0:
        user, colon, _ = url[begin:at].partition(":")
        url = f"{url[:begin]}{user}:***{url[at:]}" if colon else f"{url[:begin]}***{url[at:]}"
    head, mark, query = url.partition("?")
    if not mark:
        return head
    query, hash_, fragment = query.partition("#")
    shown = _shown_settings(parts.scheme)
    settings: list[str] = []
    for setting in query.split("&"):
        name, eq, _ = setting.partition("=")
        key = unquote_plus(name).strip()
        if key.lower() in _SECRET_SETTINGS:
            settings.append(f"{name}=***")
            return f"{head}?{'&'.join(settings)}"  # (what follows may be the password's)
        settings.append(setting if not eq or key in shown else f"{name}=***")
    return f"{head}?{'&'.join(settings)}{hash_}{fragment}"


def _shown_settings(scheme: str) -> frozenset[str]:
    """The settings whose values a masked URL shows: tiersel's own and redis-py's, but its
    passwords."""
    try:
        known = _redis_module("redis_connection").settings_for(scheme)
    except ImportError:
        known = ()
    return frozenset(_OWN).union(known) - _SECRET_SETTINGS


def _unsplit(parts: SplitResult) -> str:
    # Not urlunsplit: it drops the "//" of a URL with no host, and redis-py needs unix:///path.
    url = f"{parts.scheme}://{parts.netloc}{parts.path}"
    if parts.query:
        url += f"?{parts.query}"
    return url + (f"#{parts.fragment}" if parts.fragment else "")


def _redis_module(name: str) -> ModuleType:
    import importlib

    try:
        return importlib.import_module(f"tiersel.stores.{name}")
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("redis"):
            raise
        raise ImportError("redis:// stores need redis-py: pip install 'tiersel[redis]'") from exc


# -- signals ------------------------------------------------------------------------------------


def open_signal_store(
    url: str = DEFAULT_URL,
    config: SignalConfig | None = None,
    *,
    on_unavailable: SignalFallback = SignalFallback.local_memory,
    clock: StoreClock | None = None,
) -> SignalStore:
    """The overload signals at ``url`` (see the module's doc), for `Selector(signals=...)`.

    With Redis, ``on_unavailable`` says what happens when it does not answer: by default this
    process keeps its signals in memory meanwhile and says so once in the log; ``clock``, when
    the URL has no ``?clock=``, is the clock it runs on (`StoreClock`; default: the server's).
    """
    where = parse_store_url(url)
    where = _on_clock(where, clock)
    if where.backend == "memory":
        return MemorySignalStore(config)
    return cast(SignalStore, _redis_signals(where, config, on_unavailable, is_async=False))


def open_async_signal_store(
    url: str = DEFAULT_URL,
    config: SignalConfig | None = None,
    *,
    on_unavailable: SignalFallback = SignalFallback.local_memory,
    clock: StoreClock | None = None,
) -> AsyncSignalStore:
    """The asyncio twin of `open_signal_store`, for `Selector.asend`."""
    where = parse_store_url(url)
    where = _on_clock(where, clock)
    if where.backend == "memory":
        return AsyncMemorySignalStore(MemorySignalStore(config))
    return cast(AsyncSignalStore, _redis_signals(where, config, on_unavailable, is_async=True))


def _on_clock(where: StoreURL, clock: StoreClock | None) -> StoreURL:
    """``where`` on ``clock`` when given and its URL names none."""
    if clock is None or where.clock_named:
        return where
    return replace(where, clock=StoreClock(clock))


def _redis_signals(
    where: StoreURL, config: SignalConfig | None, on_unavailable: SignalFallback, *, is_async: bool
) -> Any:
    mod = _redis_module("redis_signals")
    conn = _redis_module("redis_connection")
    assert where.redis_url is not None
    make: Callable[..., Any] = conn.async_client if is_async else conn.sync_client
    cls = mod.AsyncRedisSignalStore if is_async else mod.RedisSignalStore
    return cls(
        make(where.redis_url, retries=conn.SIGNAL_RETRIES),
        config,
        prefix=where.prefix or "tiersel",
        on_unavailable=SignalFallback(on_unavailable),
        url=where.public,
        clock=where.clock,
    )


# -- budget -------------------------------------------------------------------------------------


def open_ledger(
    url: str = DEFAULT_URL,
    *,
    limit_usd: float,
    name: str = "default",
    reservation_ttl_s: float | None = None,
    on_expiry: OnExpiry = OnExpiry.release,
    on_unavailable: LedgerFallback = LedgerFallback.fail_closed,
) -> Ledger:
    """The budget ledger at ``url`` (see the module's doc), for `Selector(ledger=...)`.

    - ``limit_usd``: the budget. In Redis the first process to open ``name`` sets it; opening it
      with another limit raises `BudgetConflict`. A budget in Redis outlives the processes: its
      spend carries over to whoever opens the same name next.
    - ``name``: the budget's name when the URL has no ``?budget=``.
    - ``reservation_ttl_s``: when the URL has no ``?reservation_ttl_s=``, the expiry of a
      reservation made without a ttl (default: none in memory, 600 s in Redis).
    - ``on_expiry``: when the URL has no ``?on_expiry=``, what an expired reservation becomes:
      freed (`OnExpiry.release`), or charged in full (`OnExpiry.charge`), which keeps the cap
      even when a worker died after its call was billed.
    - ``on_unavailable``: with Redis, what happens when it does not answer; by default the
      operation raises `StoreUnavailable`, and no call is sent.
    """
    where = parse_store_url(url)
    ttl = where.reservation_ttl_s or reservation_ttl_s
    expiry = where.on_expiry or OnExpiry(on_expiry)
    if where.backend == "memory":
        return MemoryLedger(limit_usd, reservation_ttl_s=ttl, on_expiry=expiry)
    store = _redis_ledger(where, limit_usd, name, ttl, expiry, on_unavailable, is_async=False)
    return cast(Ledger, store)


def open_async_ledger(
    url: str = DEFAULT_URL,
    *,
    limit_usd: float,
    name: str = "default",
    reservation_ttl_s: float | None = None,
    on_expiry: OnExpiry = OnExpiry.release,
    on_unavailable: LedgerFallback = LedgerFallback.fail_closed,
) -> AsyncLedger:
    """The asyncio twin of `open_ledger`, for `Selector.asend`."""
    where = parse_store_url(url)
    ttl = where.reservation_ttl_s or reservation_ttl_s
    expiry = where.on_expiry or OnExpiry(on_expiry)
    if where.backend == "memory":
        return AsyncMemoryLedger(MemoryLedger(limit_usd, reservation_ttl_s=ttl, on_expiry=expiry))
    store = _redis_ledger(where, limit_usd, name, ttl, expiry, on_unavailable, is_async=True)
    return cast(AsyncLedger, store)


def _redis_ledger(
    where: StoreURL,
    limit_usd: float,
    name: str,
    ttl: float | None,
    on_expiry: OnExpiry,
    on_unavailable: LedgerFallback,
    *,
    is_async: bool,
) -> Any:
    mod = _redis_module("redis_ledger")
    conn = _redis_module("redis_connection")
    assert where.redis_url is not None
    make: Callable[..., Any] = conn.async_client if is_async else conn.sync_client
    cls = mod.AsyncRedisLedger if is_async else mod.RedisLedger
    return cls(
        make(where.redis_url, retries=conn.LEDGER_RETRIES),
        limit_usd=limit_usd,
        name=where.budget or name,
        prefix=where.prefix or "tiersel",
        reservation_ttl_s=ttl if ttl is not None else mod.DEFAULT_RESERVATION_TTL_S,
        on_expiry=on_expiry,
        on_unavailable=LedgerFallback(on_unavailable),
        url=where.public,
        clock=where.clock,
    )


# -- closing ------------------------------------------------------------------------------------


def close_store(store: object) -> None:
    """Close a sync store's connections (a no-op for in-memory stores)."""
    close = getattr(store, "close", None)
    if callable(close):
        close()


async def aclose_store(store: object) -> None:
    """Close an async store's connections (a no-op for in-memory stores)."""
    aclose = getattr(store, "aclose", None)
    if callable(aclose):
        await aclose()
