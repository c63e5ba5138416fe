"""Shared test settings. Each area keeps its own fixtures in tests/<area>/conftest.py."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# litellm fetches its price map from GitHub when first imported; the tests use the copy it ships.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slow: takes seconds (waits on a simulator's clock, on processes, or computes a replay);"
        " run before the others",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` first, each group in its own order: pytest-xdist hands the four
    workers their tests in this order, and a slow one started last kept the suite waiting
    (responses-API tests left to the end ran 5.5 s after the other workers had finished)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
