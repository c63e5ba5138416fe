"""Sliding-window signals, cooldowns, circuit states and priors, on a fake clock."""

from __future__ import annotations

import math
import statistics

import pytest

from tiersel.signals import (
    CircuitState,
    MemorySignalStore,
    Observation,
    Outcome,
    SignalConfig,
    SignalKey,
    assess,
)
from tiersel.tiers import TierPriors

KEY = SignalKey("fireworks", "kimi-k3", "standard")
PRIORS = TierPriors(shed_rate=0.02, error_rate=0.0, ttft_s=0.5, output_tps=50.0)


def test_no_data_uses_priors() -> None:
    store = MemorySignalStore()
    h = assess(store.stats(KEY, 0.0), PRIORS, store.config, 0.0)
    assert h.refusal_rate == pytest.approx(0.02)
    assert h.ttft_s == pytest.approx(0.5) and h.output_tps == pytest.approx(50.0)
    assert h.state is CircuitState.closed and h.observed == 0


def test_sheds_raise_the_rate_and_expire_with_the_window() -> None:
    store = MemorySignalStore(SignalConfig(window_s=60, buckets=6, open_after=1000))
    for i in range(20):
        store.record(KEY, Observation(Outcome.shed if i % 2 else Outcome.ok), float(i))
    h = assess(store.stats(KEY, 20.0), PRIORS, store.config, 20.0)
    assert h.observed == 20
    assert h.refusal_rate == pytest.approx((10 + 5 * 0.02) / 25)
    later = store.stats(KEY, 200.0)
    assert later.n == 0 and later.shed == 0


def test_timings_blend_with_priors() -> None:
    store = MemorySignalStore(SignalConfig(prior_weight=1.0))
    store.record(KEY, Observation(Outcome.ok, ttft_s=1.5, output_tps=150.0), 0.0)
    h = assess(store.stats(KEY, 0.0), PRIORS, store.config, 0.0)
    assert h.ttft_s == pytest.approx(1.0) and h.output_tps == pytest.approx(100.0)


def test_the_spread_is_the_prior_until_observations_say_otherwise() -> None:
    store = MemorySignalStore(SignalConfig(prior_weight=5.0))
    priors = TierPriors(log_spread=0.3)
    h = assess(store.stats(KEY, 0.0), priors, store.config, 0.0)
    assert (h.ttft_spread, h.tps_spread) == (pytest.approx(0.3), pytest.approx(0.3))
    # One observation shows no spread at all: still the prior.
    store.record(KEY, Observation(Outcome.ok, ttft_s=0.4, output_tps=40.0), 0.0)
    h = assess(store.stats(KEY, 0.0), priors, store.config, 0.0)
    assert (h.ttft_spread, h.tps_spread) == (pytest.approx(0.3), pytest.approx(0.3))
    # Steady timings pull it down as they accumulate, toward their own spread.
    spreads = []
    for i in range(1, 200):
        rate = 40.0 * (1.02 if i % 2 else 0.98)
        store.record(KEY, Observation(Outcome.ok, ttft_s=0.4, output_tps=rate), i * 0.1)
        if i in (5, 50, 199):
            spreads.append(assess(store.stats(KEY, i * 0.1), priors, store.config, i * 0.1))
    assert spreads[0].tps_spread > spreads[1].tps_spread > spreads[2].tps_spread
    logs = [math.log(40.0)] + [math.log(40.0 * (1.02 if i % 2 else 0.98)) for i in range(1, 200)]
    own = statistics.stdev(logs)
    assert spreads[2].tps_spread == pytest.approx(
        math.sqrt((199 * own**2 + 5 * 0.3**2) / (199 + 5))
    )
    assert spreads[2].ttft_spread == pytest.approx(math.sqrt(5 * 0.3**2 / (199 + 5)))
    # A probe judges the tier on its priors, spread included.
    probe = assess(store.stats(KEY, 20.0), priors, store.config, 20.0, probing=True)
    assert probe.tps_spread == pytest.approx(0.3)


def test_a_prior_spread_must_be_positive() -> None:
    with pytest.raises(ValueError, match="log_spread"):
        TierPriors(log_spread=0.0)


def test_retry_after_opens_until_it_passes() -> None:
    store = MemorySignalStore()
    store.record(KEY, Observation(Outcome.rate_limited, retry_after_s=7.0), 10.0)
    h = assess(store.stats(KEY, 12.0), PRIORS, store.config, 12.0)
    assert h.state is CircuitState.open and h.cooldown_s == pytest.approx(5.0)
    assert assess(store.stats(KEY, 17.5), PRIORS, store.config, 17.5).state is CircuitState.closed


def test_a_failure_streak_opens_then_half_opens_and_one_probe_goes() -> None:
    cfg = SignalConfig(open_after=3, open_s=4.0, probe_interval_s=2.0)
    store = MemorySignalStore(cfg)
    for t in (0.0, 0.1, 0.2):
        store.record(KEY, Observation(Outcome.shed), t)
    assert assess(store.stats(KEY, 1.0), PRIORS, cfg, 1.0).state is CircuitState.open
    assert assess(store.stats(KEY, 4.3), PRIORS, cfg, 4.3).state is CircuitState.half_open
    assert store.claim_probe(KEY, 4.3, cfg.probe_interval_s)
    assert not store.claim_probe(KEY, 4.4, cfg.probe_interval_s)
    probe = assess(store.stats(KEY, 4.3), PRIORS, cfg, 4.3, probing=True)
    assert probe.state is CircuitState.closed
    assert probe.refusal_rate == pytest.approx(0.02)  # judged on priors
    # The probe fails: open again, for twice as long.
    store.record(KEY, Observation(Outcome.shed), 4.5)
    h = assess(store.stats(KEY, 5.0), PRIORS, cfg, 5.0)
    assert h.state is CircuitState.open and h.cooldown_s == pytest.approx(7.5)
    # A success closes it.
    store.record(KEY, Observation(Outcome.ok), 13.0)
    assert assess(store.stats(KEY, 13.0), PRIORS, cfg, 13.0).state is CircuitState.closed


def test_keys_are_bounded_oldest_first() -> None:
    store = MemorySignalStore(max_keys=3)
    for i in range(10):
        store.record(SignalKey("e", f"m{i}", "standard"), Observation(Outcome.ok), 0.0)
    assert store.stats(SignalKey("e", "m0", "standard"), 0.0).n == 0
    assert store.stats(SignalKey("e", "m9", "standard"), 0.0).n == 1


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="window_s"):
        SignalConfig(window_s=0)
    with pytest.raises(ValueError, match="open_after"):
        SignalConfig(open_after=0)


def test_successes_are_read_once_a_refresh_and_failures_at_once() -> None:
    # A tier's health is reused for refresh_s while only successes come in (so the policy's
    # memo serves calls of one shape under steady traffic); a shed is read at the next call.
    from tiersel.clock import FakeClock
    from tiersel.engine import Engine

    clock = FakeClock()
    engine = Engine(clock=clock, signal_config=SignalConfig(refresh_s=1.0, open_after=1000))
    key = engine.signal_keys("kimi-k3")[0]

    def health() -> float:
        stats = engine.signals.stats(key, clock.now())
        return engine.assess(key, stats, clock.now()).ttft_s

    before = health()
    engine.record("kimi-k3", key.tier, Observation(Outcome.ok, ttft_s=before * 4))
    clock.advance(0.5)
    assert health() == before  # within refresh_s: the same view
    clock.advance(0.6)
    slower = health()
    assert slower > before  # a refresh later, the slow success is seen
    engine.record("kimi-k3", key.tier, Observation(Outcome.ok, ttft_s=before * 4))
    assert health() == slower
    rate = engine.assess(key, engine.signals.stats(key, clock.now()), clock.now()).refusal_rate
    engine.record("kimi-k3", key.tier, Observation(Outcome.shed))
    shed = engine.assess(key, engine.signals.stats(key, clock.now()), clock.now())
    assert shed.refusal_rate > rate and shed.ttft_s > slower  # read at once, successes with it


def test_an_attempt_cut_for_its_pace_is_read_at_once() -> None:
    # A cut is a success on the counters (the tier served, slowly), but it says the tier is
    # slower than planned: the next decision reads it, not the view kept for refresh_s.
    from tiersel.clock import FakeClock
    from tiersel.engine import Engine
    from tiersel.engine.effects import Record

    clock = FakeClock()
    engine = Engine(clock=clock, signal_config=SignalConfig(refresh_s=1.0))
    key = engine.signal_keys("kimi-k3")[0]

    def tps() -> float:
        stats = engine.signals.stats(key, clock.now())
        return engine.assess(key, stats, clock.now()).output_tps

    before = tps()
    engine.perform(Record(key, Observation(Outcome.ok, output_tps=before / 10)))
    assert tps() == before  # a slow success: kept until the refresh
    engine.perform(Record(key, Observation(Outcome.ok, output_tps=before / 10), cut=True))
    assert tps() < before


def test_a_refresh_of_zero_reads_every_success() -> None:
    from tiersel.clock import FakeClock
    from tiersel.engine import Engine

    clock = FakeClock()
    engine = Engine(clock=clock, signal_config=SignalConfig(refresh_s=0.0))
    key = engine.signal_keys("kimi-k3")[0]
    stats = engine.signals.stats(key, 0.0)
    before = engine.assess(key, stats, 0.0).ttft_s
    engine.record("kimi-k3", key.tier, Observation(Outcome.ok, ttft_s=before * 4))
    stats = engine.signals.stats(key, 0.0)
    assert engine.assess(key, stats, 0.0).ttft_s > before
    with pytest.raises(ValueError, match="refresh_s"):
        SignalConfig(refresh_s=-1.0)


def test_a_tier_learns_its_ttft_less_each_prompts_prefill() -> None:
    # A stream whose 30,000-token prompt had 10,000 tokens cached reached its first token at
    # 4 s: the tier learns 4 s less 20,000 tokens' prefill. A prefill above the TTFT seen (a
    # tier quicker than its prior) leaves a fifth of it.
    from tiersel import Requirements
    from tiersel.clock import FakeClock
    from tiersel.dialects import Usage
    from tiersel.engine import Engine
    from tiersel.engine.results import Reply, StreamEnd
    from tiersel.tiers import DEFAULT_PREFILL_S

    engine = Engine(clock=FakeClock())
    key = engine.signal_keys("kimi-k3")[0]
    body = {
        "model": "kimi-k3",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 50,
        "stream": True,
    }

    def stream(ttft: float) -> float:
        """One streamed call whose first token came at ``ttft``: the TTFT sum after it."""
        started = engine.start(body, requirements=Requirements(tiers=("standard",)))
        result = engine.run(started, lambda effect: Reply(200, {}, None, 0.1, True))
        assert result.pending_stream
        usage = Usage(30_000, 10_000, 50, None)
        engine.finish_stream(result, StreamEnd(Outcome.ok, usage, 6.0, ttft_s=ttft))
        return engine.signals.stats(key, engine.clock.now()).ttft_sum

    first = stream(4.0)
    assert first == pytest.approx(4.0 - 20_000 * DEFAULT_PREFILL_S)
    assert stream(1.0) == pytest.approx(first + 0.2 * 1.0)  # 20,000 tokens' 2.5 s > 1 s
    assert engine.signals.stats(key, engine.clock.now()).ttft_n == 2


def test_a_caller_feeding_observations_can_name_the_prompt_behind_a_ttft() -> None:
    from tiersel import Selector
    from tiersel.clock import FakeClock
    from tiersel.tiers import DEFAULT_PREFILL_S

    sel = Selector(clock=FakeClock(), api_key="")
    seen = Observation(Outcome.ok, ttft_s=4.0)
    stats = sel.record("kimi-k3", "standard", seen, uncached_input_tokens=20_000)
    assert stats.ttft_sum == pytest.approx(4.0 - 20_000 * DEFAULT_PREFILL_S)
    stats = sel.record("kimi-k3", "standard", seen)  # no prompt named: taken as the tier's
    assert stats.ttft_sum == pytest.approx(8.0 - 20_000 * DEFAULT_PREFILL_S)
