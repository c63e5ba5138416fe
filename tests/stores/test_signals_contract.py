"""The signal store's contract, run against every backend (memory, Redis; sync and async).

Stores only keep counters; what they mean is `tiersel.signals.assess`, the same for all, so a
Redis store fed the same observations must give the policy the same view as the memory store.
"""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.stores.conftest import Backend, advance, now
from tiersel.signals import (
    EMPTY_STATS,
    CircuitState,
    MemorySignalStore,
    Observation,
    Outcome,
    SignalConfig,
    SignalKey,
    TierStats,
    assess,
)
from tiersel.tiers import TierPriors

approx = pytest.approx
KEY = SignalKey("fireworks", "kimi-k3", "standard")
# A short window, so expiry can be seen without a long wait.
SHORT = SignalConfig(window_s=0.8, buckets=4, open_after=2, open_s=0.5, max_open_s=1.0)


def same(a: TierStats, b: TierStats) -> bool:
    """Equal counters; times equal within 250 ms (Redis reads them across a round trip)."""
    times = ("cooldown_until", "last_failure_at")
    for name in TierStats.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if name in times and x != y and abs(x - y) > 0.25:
            return False
        if name not in times and x != approx(y, rel=1e-9, abs=1e-9):
            return False
    return True


def test_an_unseen_key_has_empty_counters(backend: Backend) -> None:
    assert backend.signals(SHORT).stats(KEY, now()) == EMPTY_STATS


def test_record_counts_outcomes_and_timings_and_returns_the_new_counters(
    backend: Backend,
) -> None:
    store = backend.signals(SHORT)
    store.record(KEY, Observation(Outcome.ok, ttft_s=0.5, output_tps=80.0), now())
    store.record(KEY, Observation(Outcome.shed), now())
    store.record(KEY, Observation(Outcome.rate_limited), now())
    store.record(KEY, Observation(Outcome.error, ttft_s=0.0), now())
    after = store.record(KEY, Observation(Outcome.timeout, output_tps=0.0), now())
    assert (after.n, after.ok, after.shed, after.rate_limited, after.error, after.timeout) == (
        5,
        1,
        1,
        1,
        1,
        1,
    )
    # A zero TTFT or output rate is no measurement: it counts in neither sum.
    assert (after.ttft_sum, after.ttft_n, after.tps_sum, after.tps_n) == (0.5, 1, 80.0, 1)
    assert after.ttft_log_sum == approx(math.log(0.5))
    assert after.ttft_log_sq == approx(math.log(0.5) ** 2)
    assert after.tps_log_sum == approx(math.log(80.0))
    assert after.tps_log_sq == approx(math.log(80.0) ** 2)
    assert same(store.stats(KEY, now()), after)
    other = SignalKey("fireworks", "kimi-k3", "priority")
    assert store.stats(other, now()) == EMPTY_STATS


def test_the_spread_of_timings_is_learned_from_their_logs(backend: Backend) -> None:
    """Many observations: the window's log-standard-deviations, barely shrunk to the prior."""
    store = backend.signals(SignalConfig(prior_weight=1.0))
    ttfts = [0.2 * 1.5 ** (i % 5) for i in range(40)]
    rates = [30.0 + (i % 3) for i in range(40)]
    for ttft, rate in zip(ttfts, rates, strict=True):
        stats = store.record(KEY, Observation(Outcome.ok, ttft_s=ttft, output_tps=rate), now())
    priors = TierPriors(log_spread=0.35)
    health = assess(stats, priors, SignalConfig(prior_weight=1.0), now())
    sd_ttft = statistics.stdev(math.log(x) for x in ttfts)
    sd_tps = statistics.stdev(math.log(x) for x in rates)
    # Pooled with one pseudo-observation of the prior's variance.
    assert health.ttft_spread == approx(math.sqrt((39 * sd_ttft**2 + 0.35**2) / 40))
    assert health.tps_spread == approx(math.sqrt((39 * sd_tps**2 + 0.35**2) / 40))
    assert health.tps_spread < 0.1 < health.ttft_spread


def test_counts_leave_the_window(backend: Backend) -> None:
    store = backend.signals(SHORT)
    store.record(KEY, Observation(Outcome.shed), now())
    assert store.stats(KEY, now()).shed == 1
    advance(SHORT.window_s + SHORT.window_s / SHORT.buckets + 0.05)
    later = store.stats(KEY, now())
    assert (later.n, later.shed) == (0, 0)
    # The failure streak is not windowed: it lasts until a success.
    assert later.consecutive_failures == 1


def test_a_failure_streak_opens_the_circuit_and_a_success_closes_it(backend: Backend) -> None:
    store = backend.signals(SHORT)
    t0 = now()
    store.record(KEY, Observation(Outcome.shed), now())
    stats = store.record(KEY, Observation(Outcome.error), now())
    assert stats.consecutive_failures == 2
    assert stats.last_failure_at == approx(t0, abs=0.25)
    assert circuit(store, now()) is CircuitState.open
    advance(SHORT.open_s + 0.05)
    assert circuit(store, now()) is CircuitState.half_open
    assert store.record(KEY, Observation(Outcome.ok), now()).consecutive_failures == 0
    assert circuit(store, now()) is CircuitState.closed


def circuit(store: object, t: float) -> CircuitState:
    stats = store.stats(KEY, t)  # type: ignore[attr-defined]
    return assess(stats, TierPriors(), SHORT, t).state


def test_retry_after_sets_a_cooldown_that_only_grows(backend: Backend) -> None:
    store = backend.signals(SHORT)
    t0 = now()
    stats = store.record(KEY, Observation(Outcome.rate_limited, retry_after_s=2.0), t0)
    assert stats.cooldown_until == approx(t0 + 2.0, abs=0.25)
    shorter = store.record(KEY, Observation(Outcome.rate_limited, retry_after_s=0.5), now())
    assert shorter.cooldown_until == approx(t0 + 2.0, abs=0.25)
    t1 = now()
    health = assess(store.stats(KEY, t1), TierPriors(), SHORT, t1)
    assert health.state is CircuitState.open
    assert health.cooldown_s == approx(2.0 - (t1 - t0), abs=0.25)


def test_one_probe_per_interval(backend: Backend) -> None:
    first, second = backend.signals(SHORT), backend.signals(SHORT)
    assert first.claim_probe(KEY, now(), 0.5) is True
    assert second.claim_probe(KEY, now(), 0.5) is False
    assert first.claim_probe(KEY, now(), 0.5) is False
    advance(0.55)
    assert second.claim_probe(KEY, now(), 0.5) is True


def test_what_one_store_records_another_sees(backend: Backend) -> None:
    """In Redis, two stores stand for two processes; in memory they are one store."""
    writer, reader = backend.signals(SHORT), backend.signals(SHORT)
    for _ in range(3):
        writer.record(KEY, Observation(Outcome.shed), now())
    stats = reader.stats(KEY, now())
    assert (stats.n, stats.shed, stats.consecutive_failures) == (3, 3, 3)


_observations = st.lists(
    st.builds(
        Observation,
        outcome=st.sampled_from(list(Outcome)),
        ttft_s=st.one_of(st.none(), st.floats(0.0, 5.0)),
        output_tps=st.one_of(st.none(), st.floats(0.0, 300.0)),
        # From 1 s: a cooldown ending within the example would make the circuit's state hinge
        # on milliseconds, which a loaded machine does not keep.
        retry_after_s=st.one_of(st.none(), st.just(0.0), st.floats(1.0, 30.0)),
    ),
    max_size=25,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(observations=_observations)
def test_every_backend_gives_the_policy_the_memory_view(
    backend: Backend, observations: list[Observation]
) -> None:
    config = SignalConfig()  # a 60 s window: nothing leaves it during an example
    model = MemorySignalStore(config)
    priors = TierPriors()
    with backend.fresh() as fresh:
        store = fresh.signals(config)
        for obs in observations:
            t = now()
            got, want = store.record(KEY, obs, t), model.record(KEY, obs, t)
            assert same(got, want), (got, want)
            t = now()
            mine, theirs = assess(got, priors, config, t), assess(want, priors, config, t)
            assert mine.state is theirs.state
            assert mine.refusal_rate == approx(theirs.refusal_rate)
            assert mine.ttft_s == approx(theirs.ttft_s)
            assert mine.ttft_spread == approx(theirs.ttft_spread)
            assert mine.tps_spread == approx(theirs.tps_spread)
