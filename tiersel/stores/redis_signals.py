"""Overload signals kept in Redis, so every process sees which tier is being shed.

The store only keeps counters: each key's window is a Redis hash of per-bucket counts and sums
(of timings, and of their logs and squared logs, as `tiersel.signals.TierStats` holds them;
buckets that leave the window are deleted, and an idle key expires), beside a small hash with
the failure streak, the Retry-After cooldown and the last probe. What the counters mean is
decided in one place, `tiersel.signals.assess`, exactly as for the in-memory store.

Each operation is one Lua script (one round trip, atomic on the server) running on the server's
clock; times go back relative to it and are read on the caller's clock (its ``now``), so workers
whose clocks differ still agree.

When Redis does not answer, the default (`SignalFallback.local_memory`) is to keep signals in this
process's memory meanwhile, with one warning in the log, and to try Redis again every
``retry_s`` seconds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import redis
import redis.asyncio
import redis.exceptions

from tiersel.signals import (
    MemorySignalStore,
    Observation,
    Outcome,
    SignalConfig,
    SignalKey,
    TierStats,
)
from tiersel.stores.errors import SignalFallback, StoreClock, StoreUnavailable
from tiersel.stores.redis_connection import (
    SIGNAL_RETRIES,
    STORE_ERRORS,
    UNREACHABLE,
    check_refusal,
    lua,
)
from tiersel.stores.redis_pipeline import AsyncScripts

__all__ = ["AsyncRedisSignalStore", "RedisSignalStore"]

log = logging.getLogger("tiersel.stores")

_Client = TypeVar("_Client")

_SLOT = {
    Outcome.ok: 1,
    Outcome.shed: 2,
    Outcome.rate_limited: 3,
    Outcome.error: 4,
    Outcome.timeout: 5,
}
_OPS = ("stats", "record", "claim_probe")
_MAX_CACHED_KEYS = 4096


class _SignalsCore:
    """Keys, script arguments, replies and the fallback: everything but the I/O."""

    def __init__(
        self,
        config: SignalConfig | None,
        *,
        prefix: str,
        on_unavailable: SignalFallback,
        retry_s: float,
        url: str,
        clock: StoreClock,
    ) -> None:
        self.config = config or SignalConfig()
        self.by_caller = StoreClock(clock) is StoreClock.caller
        self.prefix = prefix
        self.on_unavailable = SignalFallback(on_unavailable)
        if not retry_s > 0:
            raise ValueError(f"retry_s must be > 0, got {retry_s!r}")
        self.retry_s = retry_s
        self.url = url
        self.local = MemorySignalStore(self.config)
        self._keys: dict[SignalKey, list[bytes]] = {}
        c = self.config
        # An idle key's circuit state outlives its window by the longest an open circuit lasts.
        self.head: list[str | float | int] = [
            c.window_s / c.buckets,
            c.buckets,
            c.window_s + c.max_open_s,
        ]
        self._down_until = -math.inf
        self._warned = False

    def keys(self, key: SignalKey) -> list[bytes]:
        found = self._keys.get(key)
        if found is None:
            if len(self._keys) >= _MAX_CACHED_KEYS:
                self._keys.clear()
            # A hash tag keeps one key's two hashes in one slot (Redis Cluster runs a script on
            # one slot).
            base = f"{self.prefix}:signals:{{{key.endpoint}|{key.model}|{key.tier}}}"
            found = self._keys[key] = [f"{base}:window".encode(), f"{base}:state".encode()]
        return found

    def when(self, now: float) -> str:
        """The last argument of every script: the caller's time in s, or '' (the server's)."""
        return repr(float(now)) if self.by_caller else ""

    def stats_args(self, now: float) -> list[str | float | int]:
        return [*self.head, self.when(now)]

    def record_args(self, obs: Observation, now: float) -> list[str | float | int]:
        ttft = obs.ttft_s if obs.ttft_s is not None and obs.ttft_s > 0 else -1.0
        tps = obs.output_tps if obs.output_tps is not None and obs.output_tps > 0 else -1.0
        wait = obs.retry_after_s if obs.retry_after_s is not None and obs.retry_after_s > 0 else -1
        failed = 1 if obs.outcome.is_failure else 0
        return [*self.head, _SLOT[obs.outcome], ttft, tps, wait, failed, self.when(now)]

    def probe_args(self, interval_s: float, now: float) -> list[str | float | int]:
        return [*self.head, float(interval_s), self.when(now)]

    def use_local(self, now: float) -> bool:
        """True while Redis is known to be away (a retry is not due yet)."""
        return now < self._down_until

    def call(self, run: Callable[[], Any], client: Any, now: float) -> Any:
        """A sync script's reply: ``run()``'s, or None to use local memory (see `failed`)."""
        if self.use_local(now):
            return None
        try:
            reply = run()
        except STORE_ERRORS as exc:
            return self.failed(exc, client, now)
        return self.answered(reply)

    def failed(self, exc: BaseException, client: Any, now: float) -> None:
        """None (use local memory, or raise: see `unavailable`) for a Redis that is away; any
        other error raised (a database the server refuses: `StoreMisconfigured`)."""
        check_refusal(exc, client, self.url)
        if isinstance(exc, UNREACHABLE):
            self.unavailable(exc, now)
            return None
        raise exc

    def answered(self, reply: Any) -> Any:
        """``reply``, noting that Redis answers (again)."""
        if self._down_until > -math.inf:
            self._down_until = -math.inf
            log.info("the signal store at %s answers again; signals are shared again", self.url)
        return reply

    def unavailable(self, exc: BaseException, now: float) -> None:
        """Raise (fail_closed), or switch to local memory until ``retry_s`` has passed."""
        if self.on_unavailable is SignalFallback.fail_closed:
            raise StoreUnavailable(
                "signals", self.url, exc, "the call is not routed (fail_closed)"
            ) from exc
        self._down_until = now + self.retry_s
        if not self._warned:
            self._warned = True
            log.warning(
                "the signal store at %s is unreachable (%s); signals are kept in this process's"
                " memory until it answers again",
                self.url,
                type(exc).__name__,
            )

    def __repr__(self) -> str:
        return f"url={self.url!r}, prefix={self.prefix!r}, window_s={self.config.window_s}"


def _stats(reply: bytes, now: float) -> TierStats:
    v = reply.split()
    n, ok, shed, rl, err, to, ttft, ttft_n, tps, tps_n = (float(x) for x in v[:10])
    ttft_log, ttft_sq, tps_log, tps_sq = (float(x) for x in v[10:14])
    cooldown, last_failure = (-math.inf if x in (b"-", "-") else now + float(x) for x in v[15:17])
    return TierStats(
        n=round(n),
        ok=round(ok),
        shed=round(shed),
        rate_limited=round(rl),
        error=round(err),
        timeout=round(to),
        ttft_sum=max(0.0, ttft),
        ttft_n=round(ttft_n),
        tps_sum=max(0.0, tps),
        tps_n=round(tps_n),
        ttft_log_sum=ttft_log,
        ttft_log_sq=max(0.0, ttft_sq),
        tps_log_sum=tps_log,
        tps_log_sq=max(0.0, tps_sq),
        cooldown_until=cooldown,
        consecutive_failures=int(v[14]),
        last_failure_at=last_failure,
    )


class _RedisSignalsBase(Generic[_Client]):
    """How both signal stores are built: the client, the `_SignalsCore`, and the scripts
    registered the way each runs them (`_register`)."""

    def __init__(
        self,
        client: _Client,
        config: SignalConfig | None = None,
        *,
        prefix: str = "tiersel",
        on_unavailable: SignalFallback = SignalFallback.local_memory,
        retry_s: float = 5.0,
        url: str = "redis://",
        clock: StoreClock = StoreClock.server,
    ) -> None:
        self._core = _SignalsCore(
            config,
            prefix=prefix,
            on_unavailable=on_unavailable,
            retry_s=retry_s,
            url=url,
            clock=clock,
        )
        self.config = self._core.config
        self.client = client
        self._scripts = self._register(
            client, {op: lua("signals_prelude", f"signals_{op}") for op in _OPS}
        )

    def _register(self, client: _Client, sources: dict[str, str]) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._core!r})"


class RedisSignalStore(_RedisSignalsBase["redis.Redis"]):
    """A `SignalStore` in Redis, shared by every process that uses the same ``prefix``.

    - ``client``: a ``redis.Redis`` (see `tiersel.stores.open_signal_store` to build one from a
      URL).
    - ``config``: the window and circuit settings (a `SignalConfig`), which every process sharing
      the store should agree on.
    - ``on_unavailable``: a `SignalFallback`; by default a Redis that does not answer means this
      process keeps signals in its own memory (one warning in the log), trying Redis again every
      ``retry_s`` seconds of its clock.
    - ``clock``: whose time windows and cooldowns run on: ``"server"`` (the default: Redis's,
      so processes on different machines agree) or ``"caller"`` (the ``now`` each call passes:
      every process must share one clock, as a test's `FakeClock` does).
    """

    def _register(self, client: redis.Redis, sources: dict[str, str]) -> Any:
        return {op: client.register_script(source) for op, source in sources.items()}

    def _run(self, op: str, key: SignalKey, args: list[str | float | int], now: float) -> Any:
        script, keys = self._scripts[op], self._core.keys(key)
        return self._core.call(lambda: script(keys=keys, args=args), self.client, now)

    def record(self, key: SignalKey, obs: Observation, now: float) -> TierStats:
        reply = self._run("record", key, self._core.record_args(obs, now), now)
        if reply is None:
            return self._core.local.record(key, obs, now)
        return _stats(reply, now)

    def stats(self, key: SignalKey, now: float) -> TierStats:
        reply = self._run("stats", key, self._core.stats_args(now), now)
        if reply is None:
            return self._core.local.stats(key, now)
        return _stats(reply, now)

    def claim_probe(self, key: SignalKey, now: float, interval_s: float) -> bool:
        reply = self._run("claim_probe", key, self._core.probe_args(interval_s, now), now)
        if reply is None:
            return self._core.local.claim_probe(key, now, interval_s)
        return int(reply) == 1

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


class AsyncRedisSignalStore(_RedisSignalsBase["redis.asyncio.Redis"]):
    """The asyncio twin of `RedisSignalStore` (an `AsyncSignalStore`)."""

    def _register(self, client: redis.asyncio.Redis, sources: dict[str, str]) -> Any:
        # Concurrent tasks' operations share round trips (each is still one atomic script).
        return AsyncScripts(client, sources, retries=SIGNAL_RETRIES)

    async def _run(self, op: str, key: SignalKey, args: list[str | float | int], now: float) -> Any:
        core = self._core
        if core.use_local(now):
            return None
        try:
            reply = await self._scripts.run(op, core.keys(key), args)
        except STORE_ERRORS as exc:
            return core.failed(exc, self.client, now)
        return core.answered(reply)

    async def record(self, key: SignalKey, obs: Observation, now: float) -> TierStats:
        reply = await self._run("record", key, self._core.record_args(obs, now), now)
        if reply is None:
            return self._core.local.record(key, obs, now)
        return _stats(reply, now)

    async def stats(self, key: SignalKey, now: float) -> TierStats:
        reply = await self._run("stats", key, self._core.stats_args(now), now)
        if reply is None:
            return self._core.local.stats(key, now)
        return _stats(reply, now)

    async def claim_probe(self, key: SignalKey, now: float, interval_s: float) -> bool:
        reply = await self._run("claim_probe", key, self._core.probe_args(interval_s, now), now)
        if reply is None:
            return self._core.local.claim_probe(key, now, interval_s)
        return int(reply) == 1

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self.client.aclose()
