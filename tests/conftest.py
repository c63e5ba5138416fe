"""Shared test settings. Each area keeps its own fixtures in tests/<area>/conftest.py."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# litellm fetches its price map from GitHub when first imported; the tests use the copy it ships.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
