"""Requirement mixes: which requirements the calls of a trace carry when the trace gives none.

A mix is a list of classes, each a share of the calls with a deadline and a reliability target,
for instance 30% interactive calls that must finish within 10 s and 70% background calls that may
take ten minutes. Calls are assigned to classes at random, reproducibly for a seed. A request
that states its own deadline or reliability (a plain CSV trace may) keeps them. Every call is
best effort: when no tier can promise its requirements it is still sent, on the likeliest tier,
as an application would rather try than drop it.

Spec syntax (``tiersel simulate --mix SPEC``): a preset name (`PRESETS`) or comma-separated
classes ``[NAME=]SHARE:DEADLINE[:RELIABILITY]``, where SHARE is ``0.3`` or ``30%``, DEADLINE is
a duration (``10``, ``10s``, ``500ms``, ``2m``), optionally plus a time per output token
(``5s+50ms/tok``: five seconds, and 50 ms more for each token the call generates), or ``none``;
RELIABILITY is ``0.99`` or ``99%``.
Shares may sum to less than 1: the rest of the calls carry no requirement.

>>> mix = parse_mix("interactive=30%:10s:0.99,background=70%:10m")
>>> [(c.name, c.share, c.deadline_s, c.reliability) for c in mix.classes]
[('interactive', 0.3, 10.0, 0.99), ('background', 0.7, 600.0, None)]
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from tiersel.call import Requirements
from tiersel.errors import TierselError
from tiersel.replay.traces import TraceRequest

__all__ = [
    "DEFAULT_MIX",
    "PRESETS",
    "Mix",
    "MixError",
    "RequirementClass",
    "parse_mix",
]

UNCONSTRAINED = "unconstrained"
"""The class of calls a mix leaves without requirements (shares summing to less than 1)."""
FROM_TRACE = "trace"
"""The class of calls whose requirements come from the trace itself."""

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*$")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)?$")
_UNIT_S = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}


class MixError(TierselError, ValueError):
    """A mix spec could not be read: names the spec and the problem."""

    def __init__(self, spec: str, problem: str) -> None:
        self.spec = spec
        self.problem = problem
        super().__init__(f"mix {spec!r}: {problem}")


@dataclass(frozen=True, slots=True)
class RequirementClass:
    """A share of the calls, and the deadline and reliability each of them requires."""

    name: str
    share: float
    deadline_s: float | None
    reliability: float | None
    deadline_per_token_s: float = 0.0

    def requirements(self, output_tokens: int) -> Requirements:
        """The requirements of a call of this class that generates ``output_tokens``."""
        deadline = self.deadline_s
        if deadline is not None and self.deadline_per_token_s:
            deadline += self.deadline_per_token_s * output_tokens
        return Requirements(deadline_s=deadline, reliability=self.reliability, best_effort=True)

    def spec(self) -> str:
        deadline = "none" if self.deadline_s is None else f"{self.deadline_s:g}s"
        if self.deadline_s is not None and self.deadline_per_token_s:
            deadline += f"+{self.deadline_per_token_s * 1000:g}ms/tok"
        rel = "" if self.reliability is None else f":{self.reliability:g}"
        return f"{self.name}={self.share:g}:{deadline}{rel}"


@dataclass(frozen=True, slots=True)
class Mix:
    """Classes of requirements and their shares of the calls (summing to at most 1)."""

    classes: tuple[RequirementClass, ...]

    def __post_init__(self) -> None:
        total = sum(c.share for c in self.classes)
        if total > 1 + 1e-9:
            raise ValueError(f"the shares sum to {total:g}, more than 1")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"class names repeat: {', '.join(names)}")

    def __str__(self) -> str:
        return ",".join(c.spec() for c in self.classes) or "none"

    @property
    def class_names(self) -> tuple[str, ...]:
        """Every class a call can fall in, including the unconstrained and from-trace ones."""
        return (*(c.name for c in self.classes), UNCONSTRAINED, FROM_TRACE)

    def assign(self, requests: Sequence[TraceRequest], seed: int) -> list[tuple[str, Requirements]]:
        """Each request's class name and requirements, reproducibly for ``seed``."""
        rng = random.Random(f"tiersel-mix-{seed}")
        cumulative: list[tuple[float, RequirementClass]] = []
        acc = 0.0
        for c in self.classes:
            acc += c.share
            cumulative.append((acc, c))
        fixed = {c.name: c.requirements(0) for c in self.classes if not c.deadline_per_token_s}
        none = Requirements(best_effort=True)
        out: list[tuple[str, Requirements]] = []
        for req in requests:
            u = rng.random()  # drawn for every request, so classes do not shift with the trace
            if req.deadline_s is not None or req.reliability is not None:
                own = Requirements(
                    deadline_s=req.deadline_s, reliability=req.reliability, best_effort=True
                )
                out.append((FROM_TRACE, own))
                continue
            for edge, c in cumulative:
                if u < edge:
                    built = fixed.get(c.name) or c.requirements(req.output_tokens)
                    out.append((c.name, built))
                    break
            else:
                out.append((UNCONSTRAINED, none))
        return out


_INTERACTIVE = RequirementClass("interactive", 0.3, 5.0, 0.99, deadline_per_token_s=0.05)
_BACKGROUND = RequirementClass("background", 0.7, 600.0, 0.95)

PRESETS: dict[str, Mix] = {
    "default": Mix((_INTERACTIVE, _BACKGROUND)),
    "interactive": Mix((replace(_INTERACTIVE, share=1.0),)),
    "background": Mix((replace(_BACKGROUND, share=1.0),)),
    "none": Mix(()),
}
"""Named mixes. ``default`` is what `tiersel simulate` uses when given no ``--mix``: 30% interactive
calls that must finish within 5 s plus 50 ms per output token (a reader's pace, 20 tokens/s) with
reliability 0.99, and 70% background calls that may take ten minutes, reliability 0.95."""

DEFAULT_MIX = PRESETS["default"]


def parse_mix(spec: str) -> Mix:
    """A `Mix` from a preset name or a spec (see the module docstring); `MixError` if invalid."""
    text = spec.strip()
    preset = PRESETS.get(text)
    if preset is not None:
        return preset
    if not text:
        raise MixError(spec, "empty: give a preset (" + ", ".join(PRESETS) + ") or classes")
    if not any(ch in text for ch in ":=,"):
        raise MixError(
            spec,
            "neither a preset (" + ", ".join(PRESETS) + ") nor classes"
            " [NAME=]SHARE:DEADLINE[:RELIABILITY], e.g. 30%:10s:0.99",
        )
    classes: list[RequirementClass] = []
    for i, item in enumerate(text.split(","), start=1):
        classes.append(_parse_class(spec, item.strip(), i))
    try:
        return Mix(tuple(classes))
    except ValueError as exc:
        raise MixError(spec, str(exc)) from None


def _parse_class(spec: str, item: str, index: int) -> RequirementClass:
    if not item:
        raise MixError(spec, f"class {index} is empty")
    name, sep, rest = item.partition("=")
    if sep:
        name = name.strip()
        if not _NAME.match(name) or name in (UNCONSTRAINED, FROM_TRACE):
            raise MixError(spec, f"class {index}: {name!r} is not a usable class name")
    else:
        name, rest = f"class{index}", item
    parts = [p.strip() for p in rest.split(":")]
    if len(parts) not in (2, 3):
        raise MixError(
            spec, f"class {item!r}: expected [NAME=]SHARE:DEADLINE[:RELIABILITY], e.g. 30%:10s:0.99"
        )
    share = _fraction(spec, item, parts[0], "share", allow_zero=True)
    base, plus, per_token = parts[1].partition("+")
    deadline = _duration(spec, item, base.strip())
    slope = 0.0
    if plus:
        rate = per_token.strip()
        if deadline is None or not rate.endswith("/tok"):
            raise MixError(
                spec, f"class {item!r}: deadline {parts[1]!r}: expected BASE+PER_TOKEN/tok"
            )
        slope = _duration(spec, item, rate.removesuffix("/tok").strip()) or 0.0
    reliability = _fraction(spec, item, parts[2], "reliability") if len(parts) == 3 else None
    return RequirementClass(name, share, deadline, reliability, slope)


def _fraction(spec: str, item: str, raw: str, what: str, *, allow_zero: bool = False) -> float:
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1] if percent else raw)
    except ValueError:
        raise MixError(spec, f"class {item!r}: {what} {raw!r} is not a number") from None
    if percent:
        value /= 100.0
    low_ok = value >= 0 if allow_zero else value > 0
    if not (math.isfinite(value) and low_ok and value <= 1):
        bound = "[0, 1]" if allow_zero else "(0, 1]"
        raise MixError(spec, f"class {item!r}: {what} {raw!r} must be in {bound}")
    return value


def _duration(spec: str, item: str, raw: str) -> float | None:
    if raw.lower() == "none":
        return None
    m = _DURATION.match(raw)
    if m is None:
        raise MixError(
            spec, f"class {item!r}: deadline {raw!r} is not a duration (10, 10s, 500ms, 2m, none)"
        )
    value = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not value > 0:
        raise MixError(spec, f"class {item!r}: deadline {raw!r} must be > 0")
    return value
