"""Requirements given as request headers (``x-tiersel-*``), and how they merge with the rest.

For callers that prefer ``extra_headers`` to a `requirements` block::

    client.chat.completions.create(..., extra_headers={"x-tiersel-deadline": "5"})

Hint headers are read, then stripped: none ever goes upstream. A hint header tiersel does not
know, or a value it cannot use, raises `InvalidHint` naming the header.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from tiersel.call import Requirements
from tiersel.errors import ConflictingRequirements, TierselError
from tiersel.http.context import Scope

__all__ = ["HINT_HEADERS", "InvalidHint", "merge_requirements", "read_hints", "strip_hints"]

HINT_HEADERS: Mapping[str, str] = {
    "x-tiersel-deadline": "deadline_s",
    "x-tiersel-max-ttft": "max_ttft_s",
    "x-tiersel-min-tps": "min_output_tps",
    "x-tiersel-reliability": "reliability",
    "x-tiersel-max-cost": "max_cost_usd",
    "x-tiersel-tiers": "tiers",
    "x-tiersel-best-effort": "best_effort",
    "x-tiersel-hedge": "hedge",
}
"""Each hint header and the `Requirements` field it sets."""

_UNITS = {
    "deadline_s": "a number of seconds",
    "max_ttft_s": "a number of seconds",
    "min_output_tps": "a number of output tokens per second",
    "reliability": "a probability in (0, 1]",
    "max_cost_usd": "an amount in USD",
}
_PREFIX = b"x-tiersel-"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_SHOWN = 60  # characters of a bad value quoted back in the error


class InvalidHint(TierselError, ValueError):
    """A ``x-tiersel-*`` request header tiersel cannot use; names the header and the problem."""

    def __init__(self, header: str, value: str, problem: str) -> None:
        self.header = header
        self.value = value
        self.problem = problem
        shown = value if len(value) <= _SHOWN else value[:_SHOWN] + "..."
        super().__init__(f"request header {header}: {shown!r} {problem}")


def read_hints(
    raw: Sequence[tuple[bytes, bytes]],
) -> tuple[dict[str, Any], dict[str, str], list[tuple[bytes, bytes]] | None]:
    """Read the hint headers among ``raw`` (an httpx ``headers.raw`` list).

    Returns the `Requirements` fields they set, which header set each field (for errors), and
    the headers without the hints (None when there were no hints, so the list can be reused).
    """
    if not any(k[:10].lower() == _PREFIX for k, _ in raw):
        return {}, {}, None
    fields: dict[str, Any] = {}
    source: dict[str, str] = {}
    kept: list[tuple[bytes, bytes]] = []
    for key, value in raw:
        if key[:10].lower() != _PREFIX:
            kept.append((key, value))
            continue
        header = key.decode("latin-1").lower()
        text = value.decode("latin-1").strip()
        field = HINT_HEADERS.get(header)
        if field is None:
            known = ", ".join(HINT_HEADERS)
            raise InvalidHint(header, text, f"is not a tiersel hint header (known: {known})")
        fields[field] = _parse(header, field, text)
        source[field] = header
    return fields, source, kept


def strip_hints(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]] | None:
    """``raw`` without hint headers, unread (None when there are none)."""
    if not any(k[:10].lower() == _PREFIX for k, _ in raw):
        return None
    return [(k, v) for k, v in raw if k[:10].lower() != _PREFIX]


def _parse(header: str, field: str, text: str) -> Any:
    if field == "tiers":
        names = tuple(p.strip() for p in text.split(",") if p.strip())
        if not names:
            raise InvalidHint(header, text, "must name at least one tier, comma-separated")
        return names
    if field in ("best_effort", "hedge"):
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise InvalidHint(header, text, "must be true or false")
    try:
        if "_" in text:  # float() takes "1_0" for 10; a header value should not
            raise ValueError(text)
        number = float(text)
    except ValueError:
        raise InvalidHint(header, text, f"is not a number: expected {_UNITS[field]}") from None
    if not math.isfinite(number):
        raise InvalidHint(header, text, f"must be finite: expected {_UNITS[field]}")
    return number


def merge_requirements(
    base: Requirements,
    scope: Scope | None,
    hinted: Mapping[str, Any],
    source: Mapping[str, str],
) -> Requirements:
    """The requirements of one call: ``base`` (the selector's), then the enclosing
    `requirements` block's fields, then hint headers' fields; each overrides what it sets.

    A value the headers gave that `Requirements` rejects raises `InvalidHint` for that header.
    """
    if not hinted:
        if scope is None:
            return base
        if not base.model_fields_set:
            return scope.requirements
    fields = {name: getattr(base, name) for name in base.model_fields_set}
    if scope is not None:
        fields.update(scope.fields)
    fields.update(hinted)
    try:
        return Requirements(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err.get("loc") or ()
        name = str(loc[0]) if loc else ""
        problem = str(err.get("msg", "is not valid")).removeprefix("Value error, ")
        if name in source:
            header = source[name]
            return _raise(header, hinted[name], problem)
        if source:  # a conflict among fields, one of them a header's: each header as written
            names = sorted(source, key=lambda n: source[n])
            given = " / ".join(_text(hinted[n]) for n in names)
            return _raise(" / ".join(source[n] for n in names), given, problem)
        given = _shown(scope.fields) if scope is not None else ""
        defaults = _shown({n: getattr(base, n) for n in base.model_fields_set})
        raise ConflictingRequirements(
            f"the requirements block ({given}) and the selector's requirements ({defaults})"
            f" conflict: {f'{name}: ' if name else ''}{problem}"
        ) from None


def _raise(header: str, value: Any, problem: str) -> Requirements:
    text = value if isinstance(value, str) else _text(value)
    raise InvalidHint(header, text, f"is not valid: {problem}")


def _text(value: Any) -> str:
    """A hint's value as its header wrote it."""
    if isinstance(value, tuple):
        return ",".join(value)
    return _written(value) if isinstance(value, float) else str(value)


def _written(value: float) -> str:
    """A number as a header would write it: -5 (not -5.0), 1e-320 (not 9.99989e-321), 1234567
    (not 1.23457e+06): the shorter of ``:g`` and ``repr``, which ``:g`` rounds and repr never."""
    short, whole = f"{value:g}", repr(value)
    return short if len(short) <= len(whole) and float(short) == value else whole


def _shown(hinted: Mapping[str, Any]) -> str:
    return "; ".join(f"{k}={v}" for k, v in hinted.items())
