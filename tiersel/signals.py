"""Live overload signals per (endpoint, model, tier), and what they say about a tier.

A `SignalStore` keeps raw counters over a sliding time window (atomic, value-returning
operations); `assess()` turns a store's counters plus the tier's priors into a `TierHealth` the
policy reads. Priors weigh in as pseudo-observations, so a tier with no data has sensible
estimates and nothing divides by zero.

Timings are kept as sums and as sums of logs and squared logs, so `assess` can tell both a tier's
typical TTFT and output rate and how widely they vary (their log-standard-deviations, shrunk
toward the tier's prior spread while observations are few).
"""

from __future__ import annotations

import enum
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

from tiersel.tiers import DEFAULT_LOG_SPREAD, TierPriors

__all__ = [
    "AsyncSignalStore",
    "CircuitState",
    "MemorySignalStore",
    "Observation",
    "Outcome",
    "SignalConfig",
    "SignalKey",
    "SignalStore",
    "TierHealth",
    "TierStats",
    "assess",
]


class Outcome(str, enum.Enum):
    """How one attempt ended."""

    ok = "ok"
    shed = "shed"  # 503 / 529 / 498: overloaded, not billed
    rate_limited = "rate_limited"  # 429
    error = "error"  # any other failure
    timeout = "timeout"

    @property
    def is_failure(self) -> bool:
        return self is not Outcome.ok


class CircuitState(str, enum.Enum):
    """Whether a tier is usable now: closed (yes), open (avoid), half-open (one probe may go)."""

    closed = "closed"
    open = "open"
    half_open = "half_open"


class SignalKey(NamedTuple):
    endpoint: str
    model: str
    tier: str


@dataclass(frozen=True, slots=True)
class Observation:
    """One attempt's outcome and timings (None where not measured)."""

    outcome: Outcome
    latency_s: float | None = None
    ttft_s: float | None = None
    output_tps: float | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class TierStats:
    """Raw counters of one key over the window, and its cooldown and failure streak.

    Timings count where measured (a TTFT or output rate above zero), whatever the outcome: a
    stream abandoned at its deadline is the slow tail the spread must see. ``*_log_sum`` and
    ``*_log_sq`` are the sums of their natural logs and squared logs.
    """

    n: int = 0
    ok: int = 0
    shed: int = 0
    rate_limited: int = 0
    error: int = 0
    timeout: int = 0
    ttft_sum: float = 0.0
    ttft_n: int = 0
    tps_sum: float = 0.0
    tps_n: int = 0
    ttft_log_sum: float = 0.0
    ttft_log_sq: float = 0.0
    tps_log_sum: float = 0.0
    tps_log_sq: float = 0.0
    cooldown_until: float = float("-inf")
    consecutive_failures: int = 0
    last_failure_at: float = float("-inf")


EMPTY_STATS = TierStats()


@dataclass(frozen=True, slots=True)
class SignalConfig:
    """How signals are kept and read.

    - ``window_s`` / ``buckets``: the sliding window and its resolution.
    - ``prior_weight``: how many observations the priors count as.
    - ``open_after``: consecutive failures that open the circuit, for ``open_s`` (doubling with
      each further failure, up to ``max_open_s``); after that one probe may go (half-open).
    - ``probe_interval_s``: the least time between two probes of a half-open tier.
    - ``refresh_s``: how long a tier's health, once assessed, is reused while only successes
      come in (their timings move its means by a hair a call); any failure, cooldown or change
      of circuit is read at once. Reuse is what lets the policy remember its choice for calls
      of one shape (`CheapestFeasible.choose`) under steady traffic; 0 assesses every call.
    """

    window_s: float = 60.0
    buckets: int = 12
    prior_weight: float = 5.0
    open_after: int = 3
    open_s: float = 5.0
    max_open_s: float = 30.0
    probe_interval_s: float = 2.0
    refresh_s: float = 1.0

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and self.buckets >= 1 and self.prior_weight > 0):
            raise ValueError("SignalConfig: window_s, buckets and prior_weight must be positive")
        if self.open_after < 1 or self.open_s < 0 or self.max_open_s < self.open_s:
            raise ValueError("SignalConfig: open_after >= 1 and 0 <= open_s <= max_open_s")
        if not self.refresh_s >= 0:
            raise ValueError(f"SignalConfig: refresh_s must be >= 0, got {self.refresh_s!r}")


@dataclass(frozen=True, slots=True)
class TierHealth:
    """What the signals say about a tier now: the policy's view."""

    refusal_rate: float  # shed or rate limited: fast failures, not billed
    error_rate: float  # other errors and timeouts
    ttft_s: float
    output_tps: float
    shed_latency_s: float
    state: CircuitState
    cooldown_s: float  # seconds until usable when open, else 0
    observed: int  # attempts in the window
    ttft_spread: float = DEFAULT_LOG_SPREAD  # standard deviation of log TTFT
    tps_spread: float = DEFAULT_LOG_SPREAD  # standard deviation of log output rate
    # The shed rate of an attempt sent now, leaning towards the tier's last answer (None: the
    # window's ``refusal_rate``), and how a shed carries over to the next attempt (see
    # `TierPriors`; 0: attempts are independent).
    refusal_now: float | None = None
    memory_after_shed: float = 0.0
    memory_s: float = 45.0

    @property
    def p_served(self) -> float:
        return max(0.0, 1.0 - self.refusal_rate - self.error_rate)


def assess(
    stats: TierStats, priors: TierPriors, config: SignalConfig, now: float, *, probing: bool = False
) -> TierHealth:
    """Blend a key's counters with the tier's priors into the policy's view of the tier.

    ``probing`` means this call holds the half-open probe: the window's failures are set aside and
    the tier is judged on its priors, so the probe can find out whether it has recovered.
    """
    w = config.prior_weight
    s = EMPTY_STATS if probing else stats
    denom = s.n + w
    refusal = (s.shed + s.rate_limited + w * priors.shed_rate) / denom
    error = (s.error + s.timeout + w * priors.error_rate) / denom
    ttft = (s.ttft_sum + w * priors.ttft_s) / (s.ttft_n + w)
    tps = (s.tps_sum + w * priors.output_tps) / (s.tps_n + w)
    state, wait = circuit_state(stats, config, now)
    if probing and state is CircuitState.half_open:
        state = CircuitState.closed
    prior_var = w * priors.log_spread * priors.log_spread
    refusal = min(1.0, refusal)
    # The next answer leans towards the last one (see `TierPriors`): after a failure, towards
    # a shed, fading with its age; after a success (of unknown age), away from one.
    if probing or not stats.n:
        refusal_now = refusal
    elif stats.consecutive_failures:
        carry = priors.memory_after_shed * math.exp(
            -(now - stats.last_failure_at) / priors.memory_s
        )
        refusal_now = refusal + (1.0 - refusal) * carry
    else:
        refusal_now = refusal * (1.0 - priors.memory_after_ok)
    # Positional: this runs for every tier on every decision, and keywords cost here.
    return TierHealth(
        refusal,
        min(1.0, error),
        ttft,
        tps,
        priors.shed_latency_s,
        state,
        wait,
        stats.n,
        _log_spread(s.ttft_n, s.ttft_log_sum, s.ttft_log_sq, prior_var, w),
        _log_spread(s.tps_n, s.tps_log_sum, s.tps_log_sq, prior_var, w),
        refusal_now,
        priors.memory_after_shed,
        priors.memory_s,
    )


def same_failures(a: TierStats, b: TierStats) -> bool:
    """Whether two counters of one key differ at most in their successes and timings: no
    failure, cooldown or streak came or went between them."""
    return (
        a.shed == b.shed
        and a.rate_limited == b.rate_limited
        and a.error == b.error
        and a.timeout == b.timeout
        and a.consecutive_failures == b.consecutive_failures
        and a.cooldown_until == b.cooldown_until
        and a.last_failure_at == b.last_failure_at
    )


def _log_spread(n: int, total: float, squares: float, prior_var: float, w: float) -> float:
    """The standard deviation of ``n`` logs from their sums, pooled with ``w`` pseudo-observations
    of the prior's variance (``prior_var`` is ``w`` times it): the prior alone when ``n`` < 2."""
    if n < 2:
        return math.sqrt(prior_var / w)
    deviations = squares - total * total / n
    # Float drift in a running total can leave a hair below zero.
    if deviations < 0.0:
        deviations = 0.0
    return math.sqrt((deviations + prior_var) / (n - 1 + w))


def circuit_state(stats: TierStats, config: SignalConfig, now: float) -> tuple[CircuitState, float]:
    """Open during a Retry-After cooldown or after a failure streak; half-open once that passes."""
    if now < stats.cooldown_until:
        return CircuitState.open, stats.cooldown_until - now
    streak = stats.consecutive_failures
    if streak >= config.open_after:
        # The exponent is capped: a policy that ignores the circuit (a fixed tier) can run the
        # streak past 1,024 failures, and 2.0 ** 1024 overflows.
        doublings = min(streak - config.open_after, 62)
        open_for = min(config.max_open_s, config.open_s * 2.0**doublings)
        reopen = stats.last_failure_at + open_for
        if now < reopen:
            return CircuitState.open, reopen - now
        return CircuitState.half_open, 0.0
    return CircuitState.closed, 0.0


@runtime_checkable
class SignalStore(Protocol):
    """Where signals live. Each operation is atomic and returns the state it leaves."""

    def record(self, key: SignalKey, obs: Observation, now: float) -> TierStats:
        """Add one observation; return the key's counters after it."""
        ...

    def stats(self, key: SignalKey, now: float) -> TierStats:
        """The key's counters over the window ending at ``now``."""
        ...

    def claim_probe(self, key: SignalKey, now: float, interval_s: float) -> bool:
        """Take the right to send one probe to a half-open tier; False if another took it lately."""
        ...


@runtime_checkable
class AsyncSignalStore(Protocol):
    """The async twin of `SignalStore`, for signals kept across a network (same operations).

    `Selector.asend` awaits it; `Selector.send` needs a `SignalStore`.
    """

    async def record(self, key: SignalKey, obs: Observation, now: float) -> TierStats: ...

    async def stats(self, key: SignalKey, now: float) -> TierStats: ...

    async def claim_probe(self, key: SignalKey, now: float, interval_s: float) -> bool: ...


# -- in-memory store ----------------------------------------------------------------------------

_SLOTS = 14
(
    _N,
    _OK,
    _SHED,
    _RL,
    _ERR,
    _TO,
    _TTFT,
    _TTFT_N,
    _TPS,
    _TPS_N,
    _TTFT_LOG,
    _TTFT_LOG_SQ,
    _TPS_LOG,
    _TPS_LOG_SQ,
) = range(_SLOTS)
_OUTCOME_SLOT = {
    Outcome.ok: _OK,
    Outcome.shed: _SHED,
    Outcome.rate_limited: _RL,
    Outcome.error: _ERR,
    Outcome.timeout: _TO,
}


class _Series:
    """One key's window: buckets of counters, their running total, and the failure streak."""

    __slots__ = (
        "buckets",
        "cached",
        "cached_bucket",
        "consecutive",
        "cooldown_until",
        "last_failure_at",
        "last_probe_at",
        "total",
    )

    def __init__(self) -> None:
        self.buckets: deque[tuple[int, list[float]]] = deque()
        self.total = [0.0] * _SLOTS
        self.cooldown_until = float("-inf")
        self.consecutive = 0
        self.last_failure_at = float("-inf")
        self.last_probe_at = float("-inf")
        self.cached: TierStats | None = None
        self.cached_bucket = -(2**62)

    def expire(self, bucket: int, span: int) -> None:
        oldest = bucket - span
        buckets, total = self.buckets, self.total
        while buckets and buckets[0][0] <= oldest:
            _, counts = buckets.popleft()
            for i, v in enumerate(counts):
                total[i] -= v
            self.cached = None
        if not buckets:
            # Clear float drift once the window is empty.
            self.total = [0.0] * _SLOTS

    def snapshot(self) -> TierStats:
        t = self.total
        # Positional, in TierStats' field order: a snapshot is taken after every record.
        return TierStats(
            round(t[_N]),
            round(t[_OK]),
            round(t[_SHED]),
            round(t[_RL]),
            round(t[_ERR]),
            round(t[_TO]),
            max(0.0, t[_TTFT]),
            round(t[_TTFT_N]),
            max(0.0, t[_TPS]),
            round(t[_TPS_N]),
            t[_TTFT_LOG],
            max(0.0, t[_TTFT_LOG_SQ]),
            t[_TPS_LOG],
            max(0.0, t[_TPS_LOG_SQ]),
            self.cooldown_until,
            self.consecutive,
            self.last_failure_at,
        )


class MemorySignalStore:
    """Signals in this process's memory: the default store.

    At most ``max_keys`` keys are kept (the oldest goes first), so many models and endpoints
    cannot grow it without limit. Thread-safe.
    """

    def __init__(self, config: SignalConfig | None = None, *, max_keys: int = 4096) -> None:
        self.config = config or SignalConfig()
        self._width = self.config.window_s / self.config.buckets
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self._max_keys = max_keys
        # A plain dict, oldest key evicted first: reads stay cheap on the decision path.
        self._series: dict[SignalKey, _Series] = {}
        self._lock = threading.Lock()

    def _get(self, key: SignalKey) -> _Series:
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self._max_keys:
                del self._series[next(iter(self._series))]
            series = self._series[key] = _Series()
        return series

    def record(self, key: SignalKey, obs: Observation, now: float) -> TierStats:
        bucket = int(now // self._width)
        with self._lock:
            series = self._get(key)
            series.expire(bucket, self.config.buckets)
            if series.buckets and series.buckets[-1][0] == bucket:
                counts = series.buckets[-1][1]
            else:
                counts = [0.0] * _SLOTS
                series.buckets.append((bucket, counts))
            total = series.total
            # Only the slots this observation touches (the hot path: one record per attempt).
            added = [(_N, 1.0), (_OUTCOME_SLOT[obs.outcome], 1.0)]
            ttft = obs.ttft_s
            if ttft is not None and ttft > 0:
                log = math.log(ttft)
                added += (
                    (_TTFT, ttft),
                    (_TTFT_N, 1.0),
                    (_TTFT_LOG, log),
                    (_TTFT_LOG_SQ, log * log),
                )
            tps = obs.output_tps
            if tps is not None and tps > 0:
                log = math.log(tps)
                added += ((_TPS, tps), (_TPS_N, 1.0), (_TPS_LOG, log), (_TPS_LOG_SQ, log * log))
            for i, v in added:
                counts[i] += v
                total[i] += v
            if obs.outcome is Outcome.ok:
                series.consecutive = 0
            else:
                series.consecutive += 1
                series.last_failure_at = now
            if obs.retry_after_s is not None and obs.retry_after_s > 0:
                series.cooldown_until = max(series.cooldown_until, now + obs.retry_after_s)
            series.cached = snap = series.snapshot()
            series.cached_bucket = bucket
            return snap

    def stats(self, key: SignalKey, now: float) -> TierStats:
        bucket = int(now // self._width)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                return EMPTY_STATS
            if series.cached is not None and series.cached_bucket == bucket:
                return series.cached
            series.expire(bucket, self.config.buckets)
            series.cached = snap = series.snapshot()
            series.cached_bucket = bucket
            return snap

    def claim_probe(self, key: SignalKey, now: float, interval_s: float) -> bool:
        with self._lock:
            series = self._get(key)
            if now - series.last_probe_at < interval_s:
                return False
            series.last_probe_at = now
            return True

    def __repr__(self) -> str:
        return f"MemorySignalStore(keys={len(self._series)}, window_s={self.config.window_s})"
