"""Error classification and cooldown headers."""

from __future__ import annotations

import pytest

from tiersel.dialects import classify, retry_after_s
from tiersel.signals import Outcome

DATE = "Fri, 27 Nov 2026 03:00:00 GMT"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "Fri, 27 Nov 2026 03:00:12 GMT", "date": DATE}, 12.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-3"}, None),
        (
            {
                "date": DATE,
                "anthropic-ratelimit-output-tokens-remaining": "0",
                "anthropic-ratelimit-output-tokens-reset": "2026-11-27T03:00:20Z",
                "anthropic-ratelimit-input-tokens-remaining": "100",
                "anthropic-ratelimit-input-tokens-reset": "2026-11-27T03:00:50Z",
            },
            20.0,
        ),
        ({}, None),
    ],
)
def test_cooldowns_from_headers(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_s(headers, wall_now=None) == expected


@pytest.mark.parametrize(
    ("status", "payload", "outcome", "retryable"),
    [
        (200, {}, Outcome.ok, False),
        (503, {"error": {"code": "server_overloaded"}}, Outcome.shed, True),
        (529, {"type": "error", "error": {"type": "overloaded_error"}}, Outcome.shed, True),
        (498, {"error": {"code": "capacity_exceeded"}}, Outcome.shed, True),
        (429, {"error": {"type": "rate_limit_error"}}, Outcome.rate_limited, True),
        (429, {"error": {"code": "resource_unavailable"}}, Outcome.shed, True),
        (
            429,
            {"error": {"details": {"error_code": "enforced_spend_limit_reached"}}},
            Outcome.error,
            False,
        ),
        (500, None, Outcome.error, True),
        (502, None, Outcome.error, True),
        (400, {"error": {"message": "bad"}}, Outcome.error, False),
        (401, None, Outcome.error, False),
        (404, None, Outcome.error, False),
    ],
)
def test_classification(status: int, payload: object, outcome: Outcome, retryable: bool) -> None:
    c = classify(status, {}, payload)
    assert (c.outcome, c.retryable) == (outcome, retryable)
    assert c.billed == (status == 200)
