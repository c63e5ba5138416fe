"""The examples in the replay package's docstrings run and say what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "tiersel.replay",
    "tiersel.replay.baselines",
    "tiersel.replay.harness",
    "tiersel.replay.metrics",
    "tiersel.replay.mix",
    "tiersel.replay.synth",
    "tiersel.replay.traces",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0, f"{name} has no examples"
