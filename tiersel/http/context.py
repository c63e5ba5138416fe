"""Per-call requirements set around code, without touching its call sites.

``with tiersel.requirements(deadline_s=5):`` makes every call routed by a `TierTransport` inside
the block (in this thread, or this asyncio task) carry those requirements. Blocks nest: an inner
block overrides the fields it names and keeps the outer ones. The requirements live in a
`contextvars.ContextVar`, so each thread and each asyncio task has its own: a task started inside
a block sees the block's requirements (tasks copy the context when created), and
``asyncio.to_thread`` / ``contextvars.copy_context().run`` carry them into a thread; a plain
``threading.Thread`` starts with none.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from tiersel.call import Requirements

__all__ = ["Scope", "current_requirements", "current_scope", "requirements"]


@dataclass(frozen=True, slots=True)
class Scope:
    """The innermost `requirements` block: the fields it and the blocks around it set, merged."""

    fields: Mapping[str, Any]
    requirements: Requirements


_scope: ContextVar[Scope | None] = ContextVar("tiersel_requirements", default=None)


@contextmanager
def requirements(base: Requirements | None = None, /, **fields: Any) -> Iterator[Requirements]:
    """Set requirements for the tiersel-routed calls made inside the block.

    Takes the fields of `Requirements` (``deadline_s``, ``max_ttft_s``, ``min_output_tps``,
    ``reliability``, ``tiers``, ``max_cost_usd``, ``best_effort``, ``max_attempts``, ``hedge``),
    or a `Requirements` object, or both (the keywords win). Fields not named are inherited from
    an enclosing block, then from the selector's defaults; a field named with None clears an
    inherited value. Invalid values raise pydantic's ``ValidationError`` (naming the field) when
    the block is entered.
    Yields the block's merged `Requirements`.

    >>> from tiersel.wrap import requirements
    >>> with requirements(deadline_s=30):
    ...     with requirements(reliability=0.99) as req:
    ...         (req.deadline_s, req.reliability)
    (30.0, 0.99)
    """
    outer = _scope.get()
    merged: dict[str, Any] = dict(outer.fields) if outer is not None else {}
    if base is not None:
        if not isinstance(base, Requirements):
            raise TypeError(
                f"requirements() takes a Requirements object or keywords, got {type(base).__name__}"
            )
        merged.update({name: getattr(base, name) for name in base.model_fields_set})
    merged.update(fields)
    req = Requirements(**merged)
    token = _scope.set(Scope(MappingProxyType(merged), req))
    try:
        yield req
    finally:
        _scope.reset(token)


def current_requirements() -> Requirements | None:
    """The requirements of the innermost `requirements` block around this code, if any."""
    scope = _scope.get()
    return scope.requirements if scope is not None else None


def current_scope() -> Scope | None:
    """The innermost `requirements` block around this code (None outside any block)."""
    return _scope.get()
