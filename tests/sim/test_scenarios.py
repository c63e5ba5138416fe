"""Scenario files: the bundled ones load; bad ones fail naming the file, the key and the problem."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tiersel.sim import Provider, ScenarioError, list_scenarios, load_scenario
from tiersel.sim.scenarios import LoadCurve


def test_bundled_scenarios_load() -> None:
    names = list_scenarios()
    assert {"calm", "busy", "peak", "outage", "flapping"} <= set(names)
    assert all(names.values()), "every bundled scenario says what it is"
    for name in names:
        scenario = load_scenario(name)
        assert scenario.name == name
        Provider(scenario)  # names in it are known tiers and models


def test_a_scenario_can_be_a_file(scenario_file: Callable[[str], Path]) -> None:
    path = scenario_file("description: mine\npools: {shared: {background: 0.7}}\n", "mine.yaml")
    scenario = load_scenario(path)
    assert (scenario.name, scenario.origin) == ("mine", str(path))
    assert scenario.pools["shared"].background.at(123.0) == 0.7
    # Sections left out keep their defaults, and a router pool keeps its speed.
    assert scenario.pools["router"].speedup == 5.5
    assert load_scenario(str(path)).description == "mine"


def test_load_curves_interpolate_step_and_repeat() -> None:
    curve = LoadCurve(points=((10, 0.0), (20, 1.0), (20, 2.0), (30, 2.0)), repeat_s=40)
    assert [curve.at(t) for t in (0, 15, 19.99, 20, 35, 55, 75)] == pytest.approx(
        [0.0, 0.5, 0.999, 2.0, 2.0, 0.5, 2.0]
    )


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("pools: {shared: {slots: 0}}", "pools.shared.slots", "greater than or equal to 1"),
        ("pools: {shared: {speed: 2}}", "pools.shared.speed", "unknown field"),
        ("pools: {shared: 3}", "pools.shared", "must be a mapping"),
        (
            "pools: {shared: {background: {points: [[5, 1], [2, 1]]}}}",
            "pools.shared.background.points",
            "times must not decrease",
        ),
        (
            "pools: {shared: {background: {points: [[0, 1], [50, 1]], repeat_s: 20}}}",
            "pools.shared.background",
            "repeat_s (20.0) is shorter than the curve",
        ),
        ("shedding: {standard: {start: 1.2, full: 1.0}}", "shedding.standard", "must be greater"),
        ("shedding: {priority: {max: 2}}", "shedding.priority.max", "less than or equal to 1"),
        ("outages: [{start_s: 10}]", "outages.0.end_s", "missing field"),
        ("rate_limit: {prompt_tokens_per_s: -5}", "rate_limit.prompt_tokens_per_s", "greater"),
        ("latency: {decode_ms: fast}", "latency.decode_ms", "valid number"),
        ("default_max_tokens: 0", "default_max_tokens", "greater than or equal to 1"),
        ("surprise: 1", "surprise", "unknown field"),
    ],
)
def test_bad_files_name_file_key_and_problem(
    scenario_file: Callable[[str], Path], text: str, key: str, problem: str
) -> None:
    path = scenario_file(text + "\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    err = info.value
    assert (err.file, err.key) == (str(path), key)
    assert problem in err.problem
    assert str(err).startswith(f"{path}: {key}: ")


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("outages: [{start_s: 1, end_s: 2, tiers: [gold]}]", "outages.0.tiers", "unknown tier"),
        (
            "outages: [{start_s: 1, end_s: 2, models: [nope]}]",
            "outages.0.models",
            "unknown model 'nope'",
        ),
        ("pools: {turbo: {slots: 4}}", "pools.turbo", "unknown pool"),
        ("shedding: {gold: {start: 1, full: 2}}", "shedding.gold", "unknown tier"),
        (
            "rate_limit: {models: {nope: {prompt_tokens_per_s: 5}}}",
            "rate_limit.models.nope",
            "unknown model",
        ),
    ],
)
def test_names_are_checked_against_the_price_table(
    scenario_file: Callable[[str], Path], text: str, key: str, problem: str
) -> None:
    path = scenario_file(text + "\n")
    with pytest.raises(ScenarioError) as info:
        Provider(path)
    assert (info.value.file, info.value.key) == (str(path), key)
    assert problem in info.value.problem


def test_unreadable_and_malformed_files(
    scenario_file: Callable[[str], Path], tmp_path: Path
) -> None:
    with pytest.raises(ScenarioError, match=r"custom\.yaml: bad YAML at line 2, column 1: "):
        load_scenario(scenario_file("pools: {shared: [\n"))
    with pytest.raises(ScenarioError, match="a scenario must be a YAML mapping"):
        load_scenario(scenario_file("- just\n- a list\n"))
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ScenarioError, match=r"missing\.yaml: cannot read"):
        load_scenario(missing)
    with pytest.raises(ScenarioError, match=r"no such scenario \(bundled: busy, calm, flapping"):
        load_scenario("stormy")
