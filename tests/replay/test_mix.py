"""Requirement mixes: spec parsing, errors, and reproducible assignment."""

from __future__ import annotations

from collections import Counter

import pytest

from tiersel.replay.mix import DEFAULT_MIX, PRESETS, MixError, parse_mix
from tiersel.replay.traces import TraceRequest, shipped_trace


def test_spec_forms() -> None:
    mix = parse_mix("fg=25%:500ms:99%, 0.5:2m, bg=0.25:none")
    got = [(c.name, c.share, c.deadline_s, c.reliability) for c in mix.classes]
    assert got == [("fg", 0.25, 0.5, 0.99), ("class2", 0.5, 120.0, None), ("bg", 0.25, None, None)]
    assert parse_mix(str(mix)) == mix
    paced = parse_mix("chat=1:2s+40ms/tok:0.9").classes[0]
    assert (paced.deadline_s, paced.deadline_per_token_s) == (2.0, 0.04)
    assert paced.requirements(100).deadline_s == pytest.approx(6.0)
    assert parse_mix(str(parse_mix("chat=1:2s+40ms/tok:0.9"))) == parse_mix(
        "chat=1:2s+40ms/tok:0.9"
    )

    for name, preset in PRESETS.items():
        assert parse_mix(name) is preset
        assert parse_mix(str(preset)) == preset


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", "empty"),
        ("fastest", "neither a preset"),
        ("a=50%", "expected [NAME=]SHARE:DEADLINE[:RELIABILITY]"),
        ("a=50%:10s:0.9:1", "expected [NAME=]SHARE:DEADLINE[:RELIABILITY]"),
        ("a=half:10s", "share 'half' is not a number"),
        ("a=150%:10s", "share '150%' must be in [0, 1]"),
        ("a=0.5:soon", "deadline 'soon' is not a duration"),
        ("a=0.5:0s", "deadline '0s' must be > 0"),
        ("a=0.5:10s:0", "reliability '0' must be in (0, 1]"),
        ("a=0.6:1,b=0.6:1", "the shares sum to 1.2, more than 1"),
        ("a=0.1:1,a=0.1:2", "class names repeat"),
        ("1a=0.1:1", "'1a' is not a usable class name"),
        ("trace=0.1:1", "'trace' is not a usable class name"),
        ("a=0.1:1,,b=0.1:1", "class 2 is empty"),
        ("a=0.1:1s+40ms", "expected BASE+PER_TOKEN/tok"),
        ("a=0.1:none+40ms/tok", "expected BASE+PER_TOKEN/tok"),
        ("a=0.1:1s+fast/tok", "deadline 'fast' is not a duration"),
    ],
)
def test_bad_specs_name_the_spec_and_problem(spec: str, problem: str) -> None:
    with pytest.raises(MixError) as info:
        parse_mix(spec)
    assert str(info.value).startswith(f"mix {spec!r}: ")
    assert problem in str(info.value)


def test_assignment_is_reproducible_and_follows_shares() -> None:
    requests = shipped_trace("azure-conv").requests
    first = DEFAULT_MIX.assign(requests, seed=7)
    assert first == DEFAULT_MIX.assign(requests, seed=7)
    assert first != DEFAULT_MIX.assign(requests, seed=8)
    counts = Counter(name for name, _ in first)
    for c in DEFAULT_MIX.classes:
        assert counts[c.name] / len(requests) == pytest.approx(c.share, abs=0.02)
    by_name = {c.name: c for c in DEFAULT_MIX.classes}
    for request, (name, req) in zip(requests, first, strict=True):
        assert req == by_name[name].requirements(request.output_tokens)
        assert req.best_effort
    interactive = by_name["interactive"]
    assert interactive.requirements(200).deadline_s == pytest.approx(5.0 + 0.05 * 200)


def test_a_partial_mix_leaves_the_rest_unconstrained_and_trace_requirements_win() -> None:
    requests = [TraceRequest(float(i), 10, 10) for i in range(2000)]
    requests[5] = TraceRequest(5.0, 10, 10, deadline_s=3.0)
    out = parse_mix("a=0.25:10s").assign(requests, seed=1)
    counts = Counter(name for name, _ in out)
    assert counts["a"] / len(out) == pytest.approx(0.25, abs=0.04)
    assert counts["trace"] == 1 and out[5][1].deadline_s == 3.0
    assert all(req.deadline_s is None for name, req in out if name == "unconstrained")
