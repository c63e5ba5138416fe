"""Sizing the simulated provider to a trace, and the pool replicas that makes it possible."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tiersel.replay.capacity import busy_slots, sized
from tiersel.replay.traces import parse_trace, shipped_trace
from tiersel.sim import Provider, SimRequest, load_scenario

KIMI = "accounts/fireworks/models/kimi-k3"


@pytest.mark.parametrize("replicas", [1, 4])
def test_our_in_flight_requests_load_every_replica_of_a_pool(replicas: int) -> None:
    calm = load_scenario("calm")
    shared = calm.pools["shared"].model_copy(update={"replicas": replicas})
    scenario = calm.model_copy(update={"pools": {**calm.pools, "shared": shared}})
    provider = Provider(scenario, seed=1)
    for i in range(32):
        assert provider.admit(SimRequest(KIMI, 100, max_tokens=2000), 0.0, key=str(i)).ok
    expected = 0.3 + 32 / (64 * replicas)  # calm's background, plus ours over the slots
    assert provider.utilisation(KIMI, "standard", 1.0) == pytest.approx(expected)


def test_a_scenario_file_may_set_replicas_and_sizing_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("pools:\n  shared: {replicas: 12, background: 0.4}\n")
    scenario = load_scenario(path)
    assert scenario.pools["shared"].replicas == 12
    assert scenario.pools["router"].replicas == 1
    trace = shipped_trace("azure-conv")
    resized, replicas = sized(scenario, trace)
    assert resized.pools["shared"].replicas == 12  # the file said so
    assert resized.pools["router"].replicas == replicas > 1
    with pytest.raises(ValueError, match="tenant share"):
        sized(scenario, trace, 1.5)
    assert sized(scenario, trace, 0.0) == (scenario, 1)


def test_sizing_follows_the_trace_rate() -> None:
    peak = load_scenario("peak")
    conv = shipped_trace("azure-conv")
    busy = busy_slots(conv, peak)
    assert busy > 10
    scenario, replicas = sized(peak, conv, 0.1)
    assert replicas == math.ceil(busy / (0.1 * 64))
    assert scenario.pools["shared"].replicas == replicas
    assert scenario.name == "peak" and scenario.origin == peak.origin
    # Twice the rate, twice the busy slots.
    assert busy_slots(conv.compressed(2), peak) == pytest.approx(2 * busy)
    one = parse_trace("timestamp_s,input_tokens,output_tokens\n0,10,10\n")
    assert busy_slots(one, peak) == 0.0 and sized(peak, one)[1] == 1
