"""Serving tiers: the names tiersel knows, and what a tier is as data."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


class Tier(str, enum.Enum):
    """Well-known tier names.

    A price table may declare other tiers (another provider's, say): the policy handles tiers by
    name, so a tier missing here needs no code change. Members compare equal to their names,
    ``Tier.priority == "priority"``.
    """

    standard = "standard"
    priority = "priority"
    fast = "fast"
    fast_us = "fast_us"
    spot = "spot"
    ultrafast = "ultrafast"
    us = "us"

    def __str__(self) -> str:
        return self.value


_BY_NAME = {t.value: t for t in Tier}

DEFAULT_LOG_SPREAD = 0.35
"""The prior spread of a tier's log TTFT and log output rate, before observations refine it."""

DEFAULT_PREFILL_S = 0.1247e-3
"""Seconds of TTFT per uncached prompt token (see `TierPriors`)."""


def tier_name(name: str) -> str:
    """Return the `Tier` member for a known name, or the name itself for a tier declared in data."""
    return _BY_NAME.get(name, name)


@dataclass(frozen=True, slots=True)
class TierPriors:
    """What the policy assumes about a tier before it has seen traffic on it.

    ``log_spread`` is the standard deviation of log TTFT and of log output rate (so roughly the
    relative spread of each): how far one call's timings may stray from the tier's typical ones.

    Overload comes in spells, so a tier's next answer leans towards its last one. After a shed,
    an attempt ``d`` seconds later is shed with probability ``r + (1 - r) * m * exp(-d / t)``.
    After a success it is ``r * (1 - m' * exp(-d / t))``. Here *r* is the tier's shed rate, *m*
    is ``memory_after_shed``, *m'* is ``memory_after_ok`` and *t* is ``memory_s``. The defaults
    come from the bundled simulator. Replaying the bundled Azure conversation trace under the
    busy and peak scenarios with always-standard, an attempt up to 8 s after a shed was shed
    88-89% of the time, against base rates of 32% and 63%: *m* is about 0.7-0.8. One after a
    success was shed 15% and 41% of the time: *m'* is about 0.35-0.5. Both fade over a minute
    or more; *t* = 45 s is fitted on the calibration of replays (see the price table's overlay).
    The measuring script is ``benchmarks/shed_memory.py``.

    A long prompt takes longer to its first token: ``prefill_s_per_token`` seconds for each
    prompt token not read from the cache. A tier's TTFT is learned less that part (its
    ``ttft_s`` is the rest: overhead and queueing), and each call's is that plus its own
    prompt's. The default, 0.1247 ms a token, is the Splitwise profile's slope of prefill time
    against prompt size that the bundled simulator uses (`tiersel.sim.latency`); the fast
    routers, 5.5x faster there, get 0.0227 ms (the price table's priors).
    """

    shed_rate: float = 0.02
    error_rate: float = 0.005
    ttft_s: float = 0.8
    output_tps: float = 50.0
    shed_latency_s: float = 0.3
    log_spread: float = DEFAULT_LOG_SPREAD
    memory_after_shed: float = 0.75
    memory_after_ok: float = 0.4
    memory_s: float = 45.0
    prefill_s_per_token: float = DEFAULT_PREFILL_S

    def prefill_s(self, uncached_tokens: float) -> float:
        """Seconds a prompt of ``uncached_tokens`` (not read from a cache) adds to TTFT."""
        return self.prefill_s_per_token * uncached_tokens if uncached_tokens > 0 else 0.0

    def base_ttft(self, ttft_s: float, uncached_tokens: float) -> float:
        """An observed TTFT less its prompt's prefill: what the tier's signals learn. A tier
        that reads prompts faster than its prior leaves a fifth of the TTFT, never nothing."""
        return max(ttft_s - self.prefill_s(uncached_tokens), 0.2 * ttft_s)

    def __post_init__(self) -> None:
        if not self.prefill_s_per_token >= 0:
            raise ValueError(
                f"TierPriors: prefill_s_per_token must be >= 0, got {self.prefill_s_per_token!r}"
            )
        if not self.log_spread > 0:
            raise ValueError(f"TierPriors: log_spread must be > 0, got {self.log_spread!r}")
        for name in ("memory_after_shed", "memory_after_ok"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"TierPriors: {name} must be in [0, 1], got {value!r}")
        if not self.memory_s > 0:
            raise ValueError(f"TierPriors: memory_s must be > 0, got {self.memory_s!r}")


@dataclass(frozen=True, slots=True)
class TierSpec:
    """How a tier is requested, and its priors.

    ``body`` fields are set in the request body; ``uses_router`` means the model id is replaced by
    the model's router id for this tier; ``headers`` are added to the request; an ``opt_in`` tier
    is chosen only when a call's allowed tiers name it.
    """

    name: str
    description: str = ""
    body: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    uses_router: bool = False
    priors: TierPriors = field(default_factory=TierPriors)
    # Chosen only when the allowed tiers name it: spot capacity is preemptible, a US-only router
    # is a data-residency choice, flex is slow. Neither is a choice to make for a user unasked.
    opt_in: bool = False
    # Where the tier is served, when not where the call is addressed: a scheme and host
    # (``https://us.api.fireworks.ai``) that replace the request's; its path is kept.
    base_url: str | None = None

    @property
    def sets_service_tier(self) -> bool:
        return "service_tier" in self.body


def moved(url: str, origin: str) -> str:
    """``url`` sent to ``origin`` instead (a tier's `TierSpec.base_url`): its scheme, host and
    port replaced, its path and query kept.

    >>> moved("https://api.fireworks.ai/inference/v1/chat/completions", "https://us.api.fireworks.ai")
    'https://us.api.fireworks.ai/inference/v1/chat/completions'
    """
    from urllib.parse import urlsplit, urlunsplit

    parts, to = urlsplit(url), urlsplit(origin)
    return urlunsplit((to.scheme, to.netloc, parts.path, parts.query, parts.fragment))
