"""Counts of what the simulated provider received, for tests and users to inspect."""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["SimStats"]


class SimStats:
    """Request counters: by served tier, by model and by HTTP status, plus red flags.

    ``hinted`` counts requests that carried any ``x-tiersel-*`` header and
    ``priority_with_router`` those that asked for priority on a router (fast) model: tiersel must
    send neither, so tests assert both stay 0. ``priority_downgraded`` counts priority requests
    for models with no priority tier, which are served, and counted, as standard.
    """

    __slots__ = (
        "_by_model",
        "_by_status",
        "_by_tier",
        "billed_usd",
        "hinted",
        "priority_downgraded",
        "priority_with_router",
        "requests",
        "streamed",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.hinted = 0
        self.priority_with_router = 0
        self.priority_downgraded = 0
        self.streamed = 0
        self.billed_usd = 0.0
        self._by_status: Counter[int] = Counter()
        self._by_tier: dict[str, Counter[int]] = {}
        self._by_model: dict[str, Counter[int]] = {}

    def record(
        self,
        *,
        status: int,
        tier: str | None,
        model: str | None,
        hinted: bool = False,
        priority_with_router: bool = False,
        downgraded: bool = False,
        streamed: bool = False,
        billed_usd: float = 0.0,
    ) -> None:
        """Count one request. ``tier`` is the tier that served or refused it (None: unparsed)."""
        self.requests += 1
        self.billed_usd += billed_usd
        self.hinted += hinted
        self.priority_with_router += priority_with_router
        self.priority_downgraded += downgraded
        self.streamed += streamed
        self._by_status[status] += 1
        if tier is not None:
            self._by_tier.setdefault(tier, Counter())[status] += 1
        if model is not None:
            self._by_model.setdefault(model, Counter())[status] += 1

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy: ``{"requests": N, "by_status": {"200": n}, "by_tier": {"standard":
        {"200": n, "503": m}}, "by_model": {...}, "hinted": 0, "priority_with_router": 0, ...}``.
        """

        def keyed(c: Counter[int]) -> dict[str, int]:
            return {str(k): v for k, v in sorted(c.items())}

        return {
            "requests": self.requests,
            "by_status": keyed(self._by_status),
            "by_tier": {t: keyed(c) for t, c in sorted(self._by_tier.items())},
            "by_model": {m: keyed(c) for m, c in sorted(self._by_model.items())},
            "hinted": self.hinted,
            "priority_with_router": self.priority_with_router,
            "priority_downgraded": self.priority_downgraded,
            "streamed": self.streamed,
            "billed_usd": round(self.billed_usd, 10),
        }
