"""The pure provider model: determinism, shedding order, refusals, rate limits, latency, load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiersel.sim import Provider, ResultKind, SimRequest

KIMI = "accounts/fireworks/models/kimi-k3"
KIMI_FAST = "accounts/fireworks/routers/kimi-k3-fast"
NO_PRIORITY = "accounts/fireworks/models/gpt-oss-20b"  # has no priority tier

requests = st.builds(
    SimRequest,
    model=st.sampled_from([KIMI, KIMI_FAST, NO_PRIORITY, "accounts/fireworks/models/glm-5p1"]),
    prompt_tokens=st.integers(0, 20_000),
    max_tokens=st.one_of(st.none(), st.integers(1, 2000)),
    service_tier=st.sampled_from([None, "priority", "default"]),
    stream=st.booleans(),
)
arrivals = st.lists(st.tuples(requests, st.floats(0, 5.0)), min_size=1, max_size=30)


def _replay(scenario: str, seed: int, calls: list[tuple[SimRequest, float]]) -> list[object]:
    provider = Provider(scenario, seed=seed)
    now, out = 0.0, []
    for req, gap in calls:
        now += gap
        out.append(provider.admit(req, now))
    return [*out, provider.stats()]


@given(
    arrivals, st.integers(0, 2**32), st.sampled_from(["calm", "busy", "peak", "flapping", "outage"])
)
def test_same_seed_same_answers(
    calls: list[tuple[SimRequest, float]], seed: int, scenario: str
) -> None:
    assert _replay(scenario, seed, calls) == _replay(scenario, seed, calls)


def test_the_seed_matters() -> None:
    calls = [(SimRequest(KIMI, 500, max_tokens=50), 150.0 if i == 0 else 0.5) for i in range(40)]
    a, b = _replay("peak", 1, calls), _replay("peak", 2, calls)
    assert a != b
    assert [r.status for r in a[:-1]] != [r.status for r in b[:-1]]  # type: ignore[attr-defined]


@given(requests, st.floats(0, 700), st.integers(0, 1000))
def test_preview_is_what_admit_does(req: SimRequest, now: float, seed: int) -> None:
    provider = Provider("peak", seed=seed)
    before = provider.stats()
    seen = provider.preview(req, now)
    assert provider.stats() == before
    assert provider.admit(req, now) == seen


@given(st.floats(0, 1200), st.integers(0, 10**6), st.integers(1, 8000))
def test_priority_is_never_shed_when_standard_would_be_served(
    now: float, seed: int, prompt: int
) -> None:
    provider = Provider("flapping", seed=seed)
    std = provider.preview(SimRequest(KIMI, prompt), now, key="k")
    pri = provider.preview(SimRequest(KIMI, prompt, service_tier="priority"), now, key="k")
    assert pri.shed_probability <= std.shed_probability
    if pri.kind is ResultKind.shed:
        assert std.kind is ResultKind.shed


def _shed_rate(scenario: str, model: str, tier: str | None, times: list[float]) -> float:
    provider = Provider(scenario, seed=3)
    results = [provider.admit(SimRequest(model, 800, 20, service_tier=tier), t) for t in times]
    return sum(r.status == 503 for r in results) / len(results)


def test_peak_sheds_standard_heavily_and_priority_rarely() -> None:
    window = [100 + i * 0.5 for i in range(380)]  # 100 s .. 290 s: background load 1.4
    standard = _shed_rate("peak", KIMI, None, window)
    priority = _shed_rate("peak", KIMI, "priority", window)
    fast = _shed_rate("peak", KIMI_FAST, None, window)
    assert standard > 0.8
    assert priority < 0.1
    assert fast == 0.0
    before = [i * 1.0 for i in range(55)]  # 0 .. 55 s: background load 0.5
    assert _shed_rate("peak", KIMI, None, before) == 0.0


def test_busy_sheds_standard_only_in_its_busy_minute() -> None:
    busy = [280 + i * 0.25 for i in range(160)]  # 280 s .. 320 s: background load 1.4
    assert _shed_rate("busy", KIMI, None, busy) > 0.8
    assert _shed_rate("busy", KIMI, "priority", busy) < 0.1
    quiet = [t + i * 0.5 for t in (0, 370, 600) for i in range(400)]  # load 0.5 throughout
    assert _shed_rate("busy", KIMI, None, quiet) == 0.0


def test_outage_takes_standard_down_and_leaves_priority_and_fast_up() -> None:
    window = [60 + i * 0.5 for i in range(360)]
    assert _shed_rate("outage", KIMI, None, window) == 1.0
    assert _shed_rate("outage", KIMI, "priority", window) == 0.0
    assert _shed_rate("outage", KIMI_FAST, None, window) == 0.0
    assert _shed_rate("outage", KIMI, None, [i * 0.5 for i in range(120)]) == 0.0
    assert _shed_rate("outage", KIMI, None, [240 + i for i in range(60)]) == 0.0


def test_flapping_sheds_standard_in_bursts() -> None:
    quiet = [t + i * 0.25 for t in (0, 60, 120) for i in range(110)]
    loud = [t + i * 0.25 for t in (31, 91, 151) for i in range(110)]
    assert _shed_rate("flapping", KIMI, None, quiet) == 0.0
    assert _shed_rate("flapping", KIMI, None, loud) > 0.8
    assert _shed_rate("flapping", KIMI, "priority", loud) < 0.1


def test_priority_on_a_router_model_is_a_400() -> None:
    provider = Provider("calm")
    r = provider.admit(SimRequest(KIMI_FAST, 100, service_tier="priority"), 1.0)
    assert (r.status, r.kind, r.error_type) == (400, ResultKind.rejected, "invalid_request_error")
    assert "router" in (r.message or "")
    stats = provider.stats()
    assert stats["priority_with_router"] == 1
    assert stats["by_status"] == {"400": 1}


def test_priority_on_a_us_only_router_is_the_us_priority_tier() -> None:
    """Fireworks sells priority on its US-only routers (the table's us_priority): served, and
    billed at that tier's price; not counted as priority on a fast model."""
    provider = Provider("calm")
    us = "accounts/fireworks/routers/kimi-k3-us"
    r = provider.admit(SimRequest(us, 100, 10, service_tier="priority"), 1.0)
    assert (r.status, r.tier) == (200, "us_priority")
    plain = provider.admit(SimRequest(us, 100, 10), 2.0)
    assert (plain.status, plain.tier) == (200, "us")
    stats = provider.stats()
    assert stats["priority_with_router"] == 0
    assert stats["by_tier"] == {"us_priority": {"200": 1}, "us": {"200": 1}}


def test_priority_on_a_model_without_priority_is_served_and_counted_as_standard() -> None:
    provider = Provider("calm")
    r = provider.admit(SimRequest(NO_PRIORITY, 100, 10, service_tier="priority"), 1.0)
    assert (r.status, r.tier, r.downgraded) == (200, "standard", True)
    stats = provider.stats()
    assert stats["by_tier"] == {"standard": {"200": 1}}
    assert stats["priority_downgraded"] == 1


def test_unknown_models_and_short_names_are_404() -> None:
    provider = Provider("calm")
    assert provider.admit(SimRequest("accounts/fireworks/models/nope", 10), 0).status == 404
    short = provider.admit(SimRequest("kimi-k3", 10), 0)
    assert short.status == 404
    assert KIMI in (short.message or "")
    bad_tier = provider.admit(SimRequest(KIMI, 10, service_tier="flex"), 0)
    assert bad_tier.status == 400


def test_rate_limit_gives_429_with_retry_after(scenario_file: Callable[[str], Path]) -> None:
    path = scenario_file(
        "rate_limit: {prompt_tokens_per_s: 1000, generated_tokens_per_s: 200, burst_s: 2}\n"
    )
    provider = Provider(path)
    statuses = [provider.admit(SimRequest(KIMI, 600, 50), 10.0).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]  # 2000 prompt tokens of burst: the 4th exceeds it
    refused = provider.admit(SimRequest(KIMI, 600, 50), 10.0)
    assert refused.kind is ResultKind.rate_limited
    assert refused.retry_after_s == 1.0  # 1000 tokens/s refills the 400 missing within 1 s
    assert refused.rate_limit is not None
    assert refused.rate_limit.prompt_tokens_per_s == 1000
    # Standard and priority share the model's limit; the fast router has its own.
    assert provider.admit(SimRequest(KIMI, 600, 50, service_tier="priority"), 10.0).status == 429
    assert provider.admit(SimRequest(KIMI_FAST, 600, 50), 10.0).status == 200
    assert provider.admit(SimRequest(KIMI, 600, 50), 10.0 + refused.retry_after_s).status == 200
    # The generated-token limit counts max_tokens.
    assert provider.admit(SimRequest(KIMI_FAST, 10, 400), 10.0).status == 429


def test_ttft_grows_with_the_prompt_and_load_slows_standard() -> None:
    calm = Provider("calm", seed=5)
    short = calm.admit(SimRequest(KIMI, 100, 100), 0.0, key="a")
    long = calm.admit(SimRequest(KIMI, 12_000, 100), 0.0, key="a")
    assert long.ttft_s > short.ttft_s + 1.0
    peak = Provider("peak", seed=5)
    loaded = [peak.admit(SimRequest(KIMI, 100, 100), 100.0 + i) for i in range(30)]
    served = [r for r in loaded if r.ok]
    assert served, "some standard requests get through at the peak"
    assert all(r.token_s > short.token_s for r in served)
    assert all(r.ttft_s > short.ttft_s for r in served)
    pri = peak.admit(SimRequest(KIMI, 100, 100, service_tier="priority"), 100.0, key="b")
    assert pri.ok and pri.ttft_s < min(r.ttft_s for r in served)


@given(st.floats(0, 1200), st.integers(0, 10**6), st.integers(2, 4000))
def test_fast_makes_at_least_100_tokens_per_second(now: float, seed: int, out: int) -> None:
    r = Provider("peak", seed=seed).admit(SimRequest(KIMI_FAST, 2000, out), now)
    assert r.ok
    assert r.output_tps is not None and r.output_tps >= 100
    assert r.duration_s == pytest.approx(r.ttft_s + (out - 1) * r.token_s)


def test_our_own_in_flight_requests_load_the_pool(scenario_file: Callable[[str], Path]) -> None:
    path = scenario_file("pools: {shared: {slots: 10, background: 0.5}}\n")
    provider = Provider(path, seed=1)
    results = [provider.admit(SimRequest(KIMI, 100, 2000), 1.0) for _ in range(40)]
    assert results[0].utilisation == pytest.approx(0.5)
    assert results[5].utilisation == pytest.approx(1.0)
    assert any(r.status == 503 for r in results)
    # Once they have finished, the pool is back to its background load.
    later = provider.admit(SimRequest(KIMI, 100, 10), 1000.0)
    assert later.utilisation == pytest.approx(0.5)
    assert provider.utilisation(KIMI, "standard", 1000.0) == pytest.approx(0.6)


def test_a_repeated_prompt_prefix_is_cached() -> None:
    provider = Provider("calm")
    req = SimRequest(KIMI, 3000, 10, prefixes=(("p1", 2500), ("p2", 3000)))
    first = provider.admit(req, 0.0, key="x")
    second = provider.admit(req, 10.0, key="x")
    assert (first.cached_tokens, second.cached_tokens) == (0, 3000)
    assert second.ttft_s < first.ttft_s
    # The longest prefix seen counts: a prompt that shares the first part only reads that part.
    branch = SimRequest(KIMI, 2800, 10, prefixes=(("p1", 2500), ("p3", 2800)))
    assert provider.admit(branch, 20.0, key="y").cached_tokens == 2500
    assert provider.admit(req, 10_000.0).cached_tokens == 0  # past cache_ttl_s


def test_hinted_requests_are_counted() -> None:
    provider = Provider("calm")
    provider.admit(SimRequest(KIMI, 10, 1, hinted=True), 0)
    provider.admit(SimRequest(KIMI, 10, 1), 0)
    assert provider.stats()["hinted"] == 1
    provider.reset()
    assert provider.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "code", "said"),
    [
        (
            2_000_000,
            100,
            "context_length_exceeded",
            "The prompt is 2,000,000 tokens long; kimi-k3 reads at most 1,048,576 tokens (the"
            " price table's max_input_tokens).",
        ),
        (
            100,
            200_000,
            "invalid_request",
            "max_tokens 200,000 is more than the model allows: kimi-k3 writes at most 131,072"
            " tokens (the price table's max_output_tokens).",
        ),
    ],
)
def test_a_request_past_the_models_limits_is_refused_unbilled(
    prompt: int, max_tokens: int, code: str, said: str
) -> None:
    # It was served: a replayed trace line of 5,000,000 prompt tokens cost $22.50 on fast, where
    # the API refuses it (a new user's probe; `tiersel explain` refused it).
    provider = Provider("calm")
    result = provider.admit(SimRequest(KIMI, prompt, max_tokens=max_tokens), 0.0)
    assert (result.status, result.kind, result.error_code) == (400, ResultKind.rejected, code)
    assert result.message == said
    assert provider.stats()["billed_usd"] == 0.0
    fine = provider.admit(SimRequest(KIMI, 1_048_576, max_tokens=131_072), 1.0)
    assert fine.kind is not ResultKind.rejected  # the limits themselves are allowed
