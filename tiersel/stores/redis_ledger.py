"""A budget ledger kept in Redis, shared by every process and machine that names it.

Each operation (state, reserve, settle, release) is one Lua script, so one round trip that is
atomic on the server and returns the new state. Money is kept in integer nano-dollars, so
thousands of reservations leave no rounding drift. Reservation expiries run on the server's clock,
so workers on different machines agree on them; a worker that dies holding a reservation pins
nothing past its expiry. A settled call id is remembered (for ``settled_keep_s``), so settling it
again from any process charges nothing.

`RedisLedger` is the sync store and `AsyncRedisLedger` the asyncio one; both share `_LedgerCore`,
which holds everything but the I/O.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import redis
import redis.asyncio
import redis.exceptions

from tiersel.budget import OnExpiry, Standing, Whereabouts
from tiersel.call import BudgetState
from tiersel.stores.errors import BudgetConflict, LedgerFallback, StoreClock, StoreUnavailable
from tiersel.stores.redis_connection import (
    LEDGER_RETRIES,
    STORE_ERRORS,
    UNREACHABLE,
    check_refusal,
    lua,
)
from tiersel.stores.redis_pipeline import AsyncScripts

__all__ = ["AsyncRedisLedger", "RedisLedger"]

log = logging.getLogger("tiersel.stores")

_Client = TypeVar("_Client")

NANOS_PER_USD = 1_000_000_000
AWAY_S = 5.0
"""How long after the server failed to answer a read or a reservation is refused (or, failing
open, let through) without asking it again."""
DEFAULT_RESERVATION_TTL_S = 600.0
DEFAULT_SETTLED_KEEP_S = 7 * 24 * 3600.0

_OPS = ("state", "reserve", "settle", "release")


def _nanos(usd: float, what: str) -> int:
    bad = isinstance(usd, bool) or not isinstance(usd, (int, float))
    if bad or not math.isfinite(usd) or usd < 0:
        raise ValueError(f"{what} must be a finite amount >= 0, got {usd!r}")
    return round(usd * NANOS_PER_USD)


class _LedgerCore:
    """Keys, script arguments, replies and the fallback choice: everything but the I/O."""

    def __init__(
        self,
        *,
        limit_usd: float,
        name: str,
        prefix: str,
        reservation_ttl_s: float | None,
        settled_keep_s: float,
        on_expiry: OnExpiry,
        on_unavailable: LedgerFallback,
        url: str,
        clock: StoreClock,
    ) -> None:
        self.limit_nanos = _nanos(limit_usd, "limit_usd")
        if limit_usd > 0 and not self.limit_nanos:
            raise ValueError(
                f"limit_usd must be 0 or at least $0.000000001 (the store counts whole"
                f" nano-dollars), got {limit_usd!r}"
            )
        self.by_caller = StoreClock(clock) is StoreClock.caller
        self.limit_usd = float(limit_usd)
        if not name:
            raise ValueError("a budget needs a non-empty name")
        if reservation_ttl_s is not None and not reservation_ttl_s > 0:
            raise ValueError(f"reservation_ttl_s must be > 0 or None, got {reservation_ttl_s!r}")
        if not settled_keep_s > 0:
            raise ValueError(f"settled_keep_s must be > 0, got {settled_keep_s!r}")
        self.name = name
        self.reservation_ttl_s = reservation_ttl_s
        self.settled_keep_ms = math.ceil(settled_keep_s * 1000)
        self.on_unavailable = LedgerFallback(on_unavailable)
        self.on_expiry = OnExpiry(on_expiry)
        self._head: list[str | int] = [self.limit_nanos, self.on_expiry.value]
        self.url = url
        # A hash tag keeps one budget's keys in one slot (Redis Cluster runs a script on one slot).
        base = f"{prefix}:budget:{{{name}}}"
        parts = ("state", "held", "expiry", "settled", "lapsed", "charged")
        self.keys = [f"{base}:{part}".encode() for part in parts]
        self.last = BudgetState(limit_usd=self.limit_usd)
        self._warned = False
        # After the server failed to answer, until when (monotonic) a read or a reservation is
        # answered as if it failed again, without asking: one stalled call, not every one.
        self._away_until = -math.inf
        self._away_cause: BaseException | None = None

    def reserve_args(
        self, call_id: str, amount_usd: float, ttl_s: float | None, now: float
    ) -> list[str | int]:
        ttl = ttl_s if ttl_s is not None else self.reservation_ttl_s
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl_s must be > 0 or None, got {ttl_s!r}")
        ttl_ms = math.ceil(ttl * 1000) if ttl is not None else 0
        return [*self._head, call_id, _nanos(amount_usd, "reservation"), ttl_ms, self.when(now)]

    def settle_args(self, call_id: str, actual_usd: float, now: float) -> list[str | int]:
        keep = self.settled_keep_ms
        return [*self._head, call_id, _nanos(actual_usd, "actual cost"), keep, self.when(now)]

    def id_args(self, call_id: str, now: float) -> list[str | int]:
        return [*self._head, call_id, self.when(now)]

    def state_args(self, now: float) -> list[str | int]:
        return [*self._head, self.when(now)]

    def when(self, now: float) -> str:
        """The last argument of every script: the caller's time in ms, or '' (the server's)."""
        return str(math.floor(now * 1000)) if self.by_caller else ""

    def decode(self, reply: bytes) -> BudgetState | None:
        """The state a script returned; None when a reservation did not fit."""
        ok, limit, spent, reserved, overrun = (int(v) for v in reply.split())
        if ok < 0:
            raise BudgetConflict(
                self.name, self.url, limit / NANOS_PER_USD, self.limit_nanos / NANOS_PER_USD
            )
        self._away_until = -math.inf  # it answers
        self.last = BudgetState(
            limit_usd=limit / NANOS_PER_USD,
            spent_usd=spent / NANOS_PER_USD,
            reserved_usd=max(0, reserved) / NANOS_PER_USD,
            overrun_usd=max(0, overrun) / NANOS_PER_USD,
        )
        return self.last if ok else None

    def call(
        self, run: Callable[[], bytes], client: Any, op: str, call_id: str | None
    ) -> BudgetState | None:
        """A sync script's state: ``run()``'s reply decoded, or the fallback (see `failed`)."""
        try:
            self.check_away(op)
            reply = run()
        except STORE_ERRORS as exc:
            return self.failed(exc, client, op, call_id)
        return self.decode(reply)

    def check_away(self, op: str) -> None:
        """Raise `_StillAway` for a read or a reservation (a settle or a release is always tried:
        it accounts for money spent) while the server is known to be away: for `AWAY_S` after it
        last failed to answer."""
        if op in ("state", "reserve") and time.monotonic() < self._away_until:
            raise _StillAway(self._away_cause)

    def failed(self, exc: BaseException, client: Any, op: str, call_id: str | None) -> BudgetState:
        """The fallback for a Redis that is away (see `unavailable`); any other error raised (a
        database the server refuses: `StoreMisconfigured`)."""
        if isinstance(exc, _StillAway):
            return self.unavailable(op, call_id, exc.cause)
        check_refusal(exc, client, self.url)
        if isinstance(exc, UNREACHABLE):
            self._away_until, self._away_cause = time.monotonic() + AWAY_S, exc
            return self.unavailable(op, call_id, exc)
        raise exc

    def unavailable(self, op: str, call_id: str | None, exc: BaseException) -> BudgetState:
        """Fail closed (raise), or fail open: warn once, and answer with the last state seen."""
        if self.on_unavailable is LedgerFallback.fail_closed:
            raise StoreUnavailable("budget", self.url, exc, _consequence(op, call_id)) from exc
        if not self._warned:
            self._warned = True
            log.warning(
                "the budget store at %s is unreachable (%s); on_unavailable=fail_open: calls go"
                " on unchecked and uncharged until it answers again",
                self.url,
                type(exc).__name__,
            )
        return self.last

    def __repr__(self) -> str:
        return (
            f"budget={self.name!r}, limit_usd={self.limit_usd}, url={self.url!r},"
            f" on_expiry={self.on_expiry.value}"
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _consequence(op: str, call_id: str | None) -> str:
    if op == "reserve":
        return f"call {call_id} was not sent: the budget cannot be checked (fail_closed)"
    if op == "settle":
        return (
            f"the cost of call {call_id} was not charged; its reservation lapses at its expiry"
            " (fail_closed)"
        )
    if op == "release":
        return f"the reservation of call {call_id} lapses at its expiry instead (fail_closed)"
    return "the budget cannot be read, so no call is sent (fail_closed)"


class _RedisLedgerBase(Generic[_Client]):
    """How both ledgers are built: the client, the `_LedgerCore`, and the scripts registered
    the way each runs them (`_register`)."""

    def __init__(
        self,
        client: _Client,
        *,
        limit_usd: float,
        name: str = "default",
        prefix: str = "tiersel",
        reservation_ttl_s: float | None = DEFAULT_RESERVATION_TTL_S,
        settled_keep_s: float = DEFAULT_SETTLED_KEEP_S,
        on_expiry: OnExpiry = OnExpiry.release,
        on_unavailable: LedgerFallback = LedgerFallback.fail_closed,
        url: str = "redis://",
        clock: StoreClock = StoreClock.server,
    ) -> None:
        self._core = _LedgerCore(
            limit_usd=limit_usd,
            name=name,
            prefix=prefix,
            reservation_ttl_s=reservation_ttl_s,
            settled_keep_s=settled_keep_s,
            on_expiry=on_expiry,
            on_unavailable=on_unavailable,
            url=url,
            clock=clock,
        )
        self.client = client
        self._scripts = self._register(
            client, {op: lua("budget_prelude", f"budget_{op}") for op in _OPS}
        )

    def _register(self, client: _Client, sources: dict[str, str]) -> Any:
        raise NotImplementedError

    @property
    def limit_usd(self) -> float:
        return self._core.limit_usd

    @property
    def reservation_ttl_s(self) -> float | None:
        """The expiry of a reservation made without a ``ttl_s`` of its own (None: none)."""
        return self._core.reservation_ttl_s

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._core!r})"


class RedisLedger(_RedisLedgerBase["redis.Redis"]):
    """A `Ledger` in Redis: one budget shared by every process that opens the same name.

    - ``client``: a ``redis.Redis`` (see `tiersel.stores.open_ledger` to build one from a URL).
    - ``limit_usd``: the budget; the first process sets it, and a process that asks for another
      limit under the same name gets `BudgetConflict`.
    - ``name`` / ``prefix``: where it lives (keys ``<prefix>:budget:{<name>}:*``).
    - ``reservation_ttl_s``: the expiry of a reservation made without a ``ttl_s`` of its own, so a
      worker that dies holding one does not pin the budget (None: held until settled or
      released). Longer than any call should take: a call that outlives its reservation is still
      charged when it settles, but others may have spent its money meanwhile.
    - ``on_expiry``: what an expired reservation becomes (`tiersel.budget.OnExpiry`): freed (the
      default), or charged in full so the cap holds even if its dead holder's call was billed.
    - ``settled_keep_s``: how long settled ids are remembered, so a repeated settle is a no-op.
    - ``on_unavailable``: a `LedgerFallback`; by default a Redis that does not answer raises
      `StoreUnavailable` and no call is sent.

    - ``clock``: whose time expiries run on: ``"server"`` (the default: Redis's own clock, so
      workers on different machines agree, and the ``now`` arguments are not used) or
      ``"caller"`` (the ``now`` each call passes: every process must share one clock, as a test's
      `FakeClock` or a replay's virtual time does).
    """

    def _register(self, client: redis.Redis, sources: dict[str, str]) -> Any:
        return {op: client.register_script(source) for op, source in sources.items()}

    def _run(self, op: str, args: list[str | int], call_id: str | None) -> BudgetState | None:
        script, keys = self._scripts[op], self._core.keys
        return self._core.call(lambda: script(keys=keys, args=args), self.client, op, call_id)

    def _run_state(self, op: str, args: list[str | int], call_id: str | None) -> BudgetState:
        state = self._run(op, args, call_id)
        assert state is not None  # only a reserve can be refused
        return state

    def state(self, now: float) -> BudgetState:
        return self._run_state("state", self._core.state_args(now), None)

    def reserve(
        self, call_id: str, amount_usd: float, now: float, ttl_s: float | None = None
    ) -> BudgetState | None:
        args = self._core.reserve_args(call_id, amount_usd, ttl_s, now)
        return self._run("reserve", args, call_id)

    def settle(self, call_id: str, actual_usd: float, now: float) -> BudgetState:
        return self._run_state("settle", self._core.settle_args(call_id, actual_usd, now), call_id)

    def release(self, call_id: str, now: float) -> BudgetState:
        return self._run_state("release", self._core.id_args(call_id, now), call_id)

    def reservations(self, prefix: str, now: float) -> dict[str, float]:
        """The reservations held at ``now`` whose ids start with ``prefix``: id to amount (read
        after the budget's state, so that reservations past their expiry are gone)."""
        self.state(now)
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
        try:
            found = self.client.hscan_iter(self._core.keys[1], match=pattern)
            return {_text(k): int(v) / NANOS_PER_USD for k, v in found}
        except STORE_ERRORS as exc:
            self._core.failed(exc, self.client, "state", None)
            return {}  # (failing open: none known)

    def whereabouts(self, call_ids: Iterable[str], now: float) -> dict[str, Standing]:
        """Where each of ``call_ids`` stands at ``now`` (a `tiersel.budget.Standing`; a settled
        id and its charge are remembered for ``settled_keep_s``)."""
        self.state(now)
        ids = list(call_ids)
        _, held, _, settled, lapsed, charged = self._core.keys
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            pipe.hget(held, i)
            pipe.zscore(settled, i)
            pipe.hget(charged, i)
            pipe.zscore(lapsed, i)
        try:
            replies = pipe.execute()
        except STORE_ERRORS as exc:
            self._core.failed(exc, self.client, "state", None)
            return dict.fromkeys(ids, Standing(Whereabouts.unknown))
        out: dict[str, Standing] = {}
        for n, i in enumerate(ids):
            holds, when_settled, charge, when_lapsed = replies[4 * n : 4 * n + 4]
            if holds is not None:
                out[i] = Standing(Whereabouts.held, int(holds) / NANOS_PER_USD)
            elif when_settled is not None:
                usd = int(charge) / NANOS_PER_USD if charge is not None else None
                out[i] = Standing(Whereabouts.settled, usd)
            elif when_lapsed is not None:
                out[i] = Standing(Whereabouts.lapsed)
            else:
                out[i] = Standing(Whereabouts.unknown)
        return out

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


class AsyncRedisLedger(_RedisLedgerBase["redis.asyncio.Redis"]):
    """The asyncio twin of `RedisLedger` (an `AsyncLedger`), on a ``redis.asyncio.Redis``."""

    def _register(self, client: redis.asyncio.Redis, sources: dict[str, str]) -> Any:
        # Concurrent tasks' operations share round trips (each is still one atomic script).
        return AsyncScripts(client, sources, retries=LEDGER_RETRIES)

    async def _run(self, op: str, args: list[str | int], call_id: str | None) -> BudgetState | None:
        core = self._core
        try:
            core.check_away(op)
            reply = await self._scripts.run(op, core.keys, args)
        except STORE_ERRORS as exc:
            return core.failed(exc, self.client, op, call_id)
        return core.decode(reply)

    async def _run_state(self, op: str, args: list[str | int], call_id: str | None) -> BudgetState:
        state = await self._run(op, args, call_id)
        assert state is not None  # only a reserve can be refused
        return state

    async def state(self, now: float) -> BudgetState:
        return await self._run_state("state", self._core.state_args(now), None)

    async def reserve(
        self, call_id: str, amount_usd: float, now: float, ttl_s: float | None = None
    ) -> BudgetState | None:
        args = self._core.reserve_args(call_id, amount_usd, ttl_s, now)
        return await self._run("reserve", args, call_id)

    async def settle(self, call_id: str, actual_usd: float, now: float) -> BudgetState:
        args = self._core.settle_args(call_id, actual_usd, now)
        return await self._run_state("settle", args, call_id)

    async def release(self, call_id: str, now: float) -> BudgetState:
        return await self._run_state("release", self._core.id_args(call_id, now), call_id)

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self.client.aclose()


class _StillAway(redis.exceptions.ConnectionError):
    """Not asked: the server failed to answer moments ago (`_LedgerCore.check_away`)."""

    def __init__(self, cause: BaseException | None) -> None:
        super().__init__(str(cause))
        self.cause: BaseException = cause if cause is not None else self
