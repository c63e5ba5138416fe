"""Error classification and cooldown headers."""

from __future__ import annotations

import pytest

from tiersel.dialects import TOKEN_LIMIT, Dialect, classify, max_output_tokens, retry_after_s
from tiersel.errors import RequestNotUnderstood
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


@pytest.mark.parametrize(
    ("dialect", "field"),
    [
        (Dialect.openai, "max_tokens"),
        (Dialect.openai, "max_completion_tokens"),
        (Dialect.anthropic, "max_tokens"),
    ],
)
def test_an_output_cap_too_large_for_a_float_is_refused_naming_the_field(
    dialect: Dialect, field: str
) -> None:
    body = {"model": "m", "messages": [], field: 10**400}
    with pytest.raises(RequestNotUnderstood) as info:
        max_output_tokens(body, dialect)
    assert str(info.value) == (
        f"{field} must be at most {TOKEN_LIMIT} (2**53), got a 401-digit number"
    )


def test_an_output_cap_up_to_the_limit_is_read_as_it_is() -> None:
    assert max_output_tokens({"max_tokens": TOKEN_LIMIT}, Dialect.openai) == TOKEN_LIMIT
    with pytest.raises(RequestNotUnderstood, match=f"got {TOKEN_LIMIT + 1}$"):
        max_output_tokens({"max_tokens": TOKEN_LIMIT + 1}, Dialect.anthropic)


def _looped_message() -> dict[str, object]:
    message: dict[str, object] = {"role": "user", "content": "hi"}
    message["parts"] = [{"type": "text", "text": "again", "back": message}]
    return message


def _looped_list() -> list[object]:
    inner: list[object] = ["text"]
    inner.append(inner)
    return inner


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"messages": [_looped_message()]}, "[0]['parts'][0]['back']"),
        ({"messages": [{"role": "user", "content": _looped_list()}]}, "[0]['content'][1]"),
        (
            {"messages": [{"role": "user", "content": "x"}], "tools": [_looped_message()]},
            "[0]['parts'][0]['back']",
        ),
    ],
    ids=["dict", "list", "tools"],
)
def test_a_prompt_built_in_python_that_holds_itself_is_refused_naming_where(
    body: dict[str, object], where: str
) -> None:
    """Only Python code can build such a body; the token walk went round it for ever."""
    from tiersel.dialects import estimate_input_tokens, input_tokens

    for count in (estimate_input_tokens, input_tokens):
        with pytest.raises(RequestNotUnderstood, match="reference cycle") as got:
            count(body)
        assert f"at {where} contains itself" in str(got.value)


def test_a_large_prompt_that_shares_a_value_without_a_cycle_is_counted() -> None:
    """The cycle check runs once a walk has entered 100,000 objects; shared (not cyclic) values
    pass it and count once per place, as JSON would write them."""
    from tiersel.dialects import estimate_input_tokens, input_tokens

    shared = {"type": "text", "text": "abc"}
    body = {"messages": [{"role": "user", "content": [shared] * 60_000}] * 2}
    text = 2 * 60_000 * 3  # every "abc"
    assert estimate_input_tokens(body, bytes_per_token=1.0) == text + 8 * 3
    assert input_tokens(body, bytes_per_token=1.0)[0] == text + 8 * 3


def test_a_cycle_through_a_role_or_a_part_type_is_refused_by_the_bound() -> None:
    """Roles and part types are rendered as JSON for the bound: one that holds its message
    went round json's fallback until the stack ran out (RecursionError), and a list ``type``
    was looked up in a set (TypeError). The estimate, which reads neither, still counts."""
    from tiersel.dialects import estimate_input_tokens, input_tokens

    looped: dict[str, object] = {"role": None, "content": "hi"}
    looped["role"] = looped
    part: dict[str, object] = {"type": "text", "text": "hi"}
    part["type"] = [part]
    for body, where in (
        ({"messages": [looped]}, "['role']"),
        ({"messages": [{"role": "user", "content": [part]}]}, "[0]['type']"),
    ):
        with pytest.raises(RequestNotUnderstood, match="reference cycle") as got:
            input_tokens(body)
        assert f"at {where} contains itself" in str(got.value)
        assert estimate_input_tokens(body) > 0
    listed = {"messages": [{"role": "user", "content": [{"type": ["image_url"], "text": "hi"}]}]}
    assert input_tokens(listed)[0] == estimate_input_tokens(listed)
