"""Validation of calls, requirements and budget states."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from tiersel import Call, Requirements
from tiersel.call import BudgetState


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"deadline_s": math.nan}, "deadline_s"),
        ({"deadline_s": -1}, "deadline_s"),
        ({"max_ttft_s": 0}, "max_ttft_s"),
        ({"reliability": 1.5}, "reliability"),
        ({"reliability": 0}, "reliability"),
        ({"min_output_tps": math.inf}, "min_output_tps"),
        ({"max_cost_usd": -0.01}, "max_cost_usd"),
        ({"tiers": []}, "tiers"),
        ({"deadline_s": 2, "max_ttft_s": 5}, "max_ttft_s (5.0) cannot exceed deadline_s (2.0)"),
    ],
)
def test_bad_requirements_are_named(fields: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        Requirements(**fields)  # type: ignore[arg-type]


def test_requirements_are_immutable_and_split_tiers() -> None:
    r = Requirements(tiers="standard, priority")
    assert r.tiers == ("standard", "priority")
    with pytest.raises(ValidationError):
        r.deadline_s = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"input_tokens": -1}, "input_tokens"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"input_tokens": 10, "cached_input_tokens": 11}, "cannot exceed input_tokens"),
        ({"expected_output_tokens": 500}, "cannot exceed max_output_tokens"),
        ({"model": ""}, "model"),
    ],
)
def test_bad_calls_are_named(fields: dict[str, object], needle: str) -> None:
    base: dict[str, object] = {"model": "kimi-k3", "input_tokens": 10, "max_output_tokens": 100}
    with pytest.raises(ValidationError, match=needle):
        Call(**{**base, **fields})  # type: ignore[arg-type]


def test_budget_state_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="limit_usd"):
        BudgetState(limit_usd=math.nan)
    with pytest.raises(ValueError, match="remaining_calls"):
        BudgetState(limit_usd=1, remaining_calls=-1)
    assert BudgetState(limit_usd=1, spent_usd=0.7, reserved_usd=0.5).remaining_usd == 0.0
