"""`SimService`: the simulated provider behind HTTP-shaped requests, on an injected clock.

Both ways of serving it, the ASGI app (`tiersel.sim.asgi`) and the in-process transports
(`tiersel.sim.transport`), hand each request to `SimService.handle` and only carry out the
waiting the returned `Rendered` asks for. Routes:

- ``POST /inference/v1/chat/completions``: OpenAI-compatible chat completions.
- ``POST /inference/v1/responses``: the OpenAI Responses API (plain and streamed).
- ``POST /inference/v1/completions``: text completions.
- ``POST /inference/v1/messages``: Anthropic-compatible messages.
- ``GET /inference/v1/models``: the price table's model and router ids.
- ``GET /sim/stats``: counts by tier, model and status (`SimStats.snapshot`), plus the scenario,
  seed and scenario time.
- ``POST /sim/reset``: forget all requests; optional JSON body ``{"seed": N, "time_s": T}``
  reseeds and moves the scenario clock to ``T``.
- ``POST /sim/hold`` and ``POST /sim/release``: a gate for tests of concurrency. While held, the
  served app (`tiersel.sim.asgi`) admits generation requests as usual but answers none of them;
  ``held`` in the stats counts the ones waiting. On release each is answered after its own
  simulated latency, counted from the release. The in-process transports have no gate.

Scenario time is ``(clock.now() - origin) / time_scale``: with ``time_scale=0.01`` every
simulated second lasts 10 ms of the clock, so latencies, the scenario's timeline and rate-limit
refills all run 100 times faster, and ``Retry-After`` is scaled to match. The ``x-sim-ttft-s``
and ``x-sim-duration-s`` diagnostic headers stay in scenario seconds.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from tiersel.clock import Clock, SystemClock
from tiersel.dialects import HINT_PREFIX, Dialect
from tiersel.pricing import Pricing
from tiersel.sim.provider import Provider
from tiersel.sim.scenarios import Scenario
from tiersel.sim.wire import BadRequest, Rendered, error_body, json_response, parse_request, render

__all__ = ["API_PREFIX", "SimService"]

API_PREFIX = "/inference/v1"
_EPOCH = 1_700_000_000
_DIALECTS = {
    f"{API_PREFIX}/chat/completions": Dialect.openai,
    f"{API_PREFIX}/responses": Dialect.responses,
    f"{API_PREFIX}/completions": Dialect.completions,
    f"{API_PREFIX}/messages": Dialect.anthropic,
}
_ID_PREFIXES = {
    Dialect.openai: "chatcmpl-sim",
    Dialect.responses: "resp_sim",
    Dialect.completions: "cmpl-sim",
    Dialect.anthropic: "msg_sim",
}


class SimService:
    """A `Provider` served over HTTP-shaped requests, its scenario time read from ``clock``.

    >>> from tiersel.clock import FakeClock
    >>> svc = SimService("calm", clock=FakeClock())
    >>> svc.handle("GET", "/sim/stats", {}, b"").status
    200
    """

    def __init__(
        self,
        scenario: Scenario | str | Path = "calm",
        *,
        seed: int = 0,
        clock: Clock | None = None,
        time_scale: float = 1.0,
        pricing: Pricing | None = None,
        start_s: float = 0.0,
    ) -> None:
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale must be a finite number > 0, got {time_scale!r}")
        if start_s < 0:
            raise ValueError(f"start_s must be >= 0, got {start_s!r}")
        self.provider = Provider(scenario, seed=seed, pricing=pricing)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.time_scale = float(time_scale)
        self._origin = self.clock.now() - start_s * self.time_scale
        self._ids = 0
        self._lock = threading.Lock()
        self._parked: list[Callable[[], object]] | None = None  # wake-ups while held; None: open
        self._cancelled = 0

    def __repr__(self) -> str:
        return (
            f"SimService(scenario={self.provider.scenario.name!r}, seed={self.provider.seed},"
            f" time_scale={self.time_scale})"
        )

    def now(self) -> float:
        """Scenario time in seconds."""
        return (self.clock.now() - self._origin) / self.time_scale

    def stats(self) -> dict[str, Any]:
        """`Provider.stats` plus the scenario's name, the seed and the scenario time."""
        return {
            **self.provider.stats(),
            "scenario": self.provider.scenario.name,
            "seed": self.provider.seed,
            "sim_time_s": round(self.now(), 6),
            "held": len(self._parked or ()),
            "cancelled": self._cancelled,
        }

    def cancelled(self, rendered: Rendered, after_s: float) -> None:
        """Count a request whose client went away ``after_s`` scenario seconds after sending it,
        before its answer was all sent (a hedge's loser, a stream closed early): a real provider
        stops generating for it, and bills its prompt and the output so far."""
        with self._lock:
            self._cancelled += 1
        if rendered.result is not None:
            self.provider.cancel(rendered.result, after_s)

    def hold(self) -> None:
        """Close the gate: answers to generation requests wait until `release`."""
        with self._lock:
            if self._parked is None:
                self._parked = []

    def release(self) -> None:
        """Open the gate and wake every answer waiting at it."""
        with self._lock:
            parked, self._parked = self._parked or [], None
        for wake in parked:
            wake()

    def park(self, path: str, wake: Callable[[], object]) -> bool:
        """Whether the answer to a request on ``path`` must wait at the gate; if so, ``wake`` is
        called on release."""
        if path.rstrip("/") not in _DIALECTS:
            return False
        with self._lock:
            if self._parked is None:
                return False
            self._parked.append(wake)
            return True

    def reset(self, *, seed: int | None = None, time_s: float | None = None) -> None:
        """Forget every request; optionally reseed and move scenario time to ``time_s``."""
        self.provider.reset(seed=seed)
        with self._lock:
            self._cancelled = 0
        if time_s is not None:
            if time_s < 0:
                raise ValueError(f"time_s must be >= 0, got {time_s!r}")
            self._origin = self.clock.now() - time_s * self.time_scale

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Rendered:
        """Answer one HTTP request. Nothing waits here: the caller honours the due times."""
        path = path.rstrip("/") or "/"
        dialect = _DIALECTS.get(path)
        if dialect is not None and method == "POST":
            return self._generate(dialect, headers, body)
        if path == "/sim/stats" and method == "GET":
            return json_response(200, self.stats())
        if path == "/sim/reset" and method == "POST":
            return self._reset(body)
        if path == "/sim/hold" and method == "POST":
            self.hold()
            return json_response(200, self.stats())
        if path == "/sim/release" and method == "POST":
            self.release()
            return json_response(200, self.stats())
        if path == f"{API_PREFIX}/models" and method == "GET":
            return json_response(200, self._models())
        status = 405 if dialect is not None else 404
        self.provider.record_unparsed(status, hinted=_hinted(headers))
        if status == 405:
            return _error(405, "method_not_allowed", f"{method} is not allowed on {path}")
        return _error(404, "not_found", f"no route for {method} {path}")

    def _generate(self, dialect: Dialect, headers: Mapping[str, str], body: bytes) -> Rendered:
        try:
            request = parse_request(dialect, body, headers)
        except BadRequest as exc:
            self.provider.record_unparsed(400, hinted=_hinted(headers))
            return _error(400, "invalid_request", str(exc))
        now = self.now()
        result = self.provider.admit(request, now)
        with self._lock:
            self._ids += 1
            n = self._ids
        prefix = _ID_PREFIXES[dialect]
        rendered = render(
            request,
            result,
            response_id=f"{prefix}{n:08d}",
            created=_EPOCH + int(now),
            echo_tier=self.provider.scenario.echo_service_tier,
        )
        rendered = replace(rendered, result=result)
        if result.retry_after_s is None or self.time_scale == 1.0:
            return rendered
        # Retry-After tells the client how long to wait on its clock: scale it like latencies.
        scaled = f"{result.retry_after_s * self.time_scale:g}"
        fixed = tuple((k, scaled if k == "retry-after" else v) for k, v in rendered.headers)
        return replace(rendered, headers=fixed)

    def _reset(self, body: bytes) -> Rendered:
        try:
            doc = json.loads(body) if body.strip() else {}
            if not isinstance(doc, dict):
                raise ValueError("the body must be a JSON object")
            unknown = set(doc) - {"seed", "time_s"}
            if unknown:
                raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
            seed, time_s = doc.get("seed"), doc.get("time_s")
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise ValueError(f"seed must be an integer, got {seed!r}")
            if time_s is not None and (
                isinstance(time_s, bool) or not isinstance(time_s, (int, float))
            ):
                raise ValueError(f"time_s must be a number, got {time_s!r}")
            self.reset(seed=seed, time_s=time_s)
        except ValueError as exc:
            return _error(400, "invalid_request", f"/sim/reset: {exc}")
        return json_response(200, self.stats())

    def _models(self) -> dict[str, Any]:
        ids: list[str] = []
        for mp in self.provider.pricing.models.values():
            ids.append(mp.model_id)
            ids.extend(tp.model_id for tp in mp.tiers.values() if tp.model_id != mp.model_id)
        return {
            "object": "list",
            "data": [{"id": i, "object": "model", "owned_by": "fireworks"} for i in ids],
        }


def _hinted(headers: Mapping[str, str]) -> bool:
    return any(k.lower().startswith(HINT_PREFIX) for k in headers)


def _error(status: int, code: str, message: str) -> Rendered:
    body = error_body("invalid_request_error", code, message)
    return Rendered(status, (("content-type", "application/json"),), body)
