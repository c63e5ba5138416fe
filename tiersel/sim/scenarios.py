"""Scenarios: how loaded the simulated provider is over time, and how it behaves when it is.

A scenario is YAML. Every section is optional; what a file leaves out takes the defaults below.

.. code-block:: yaml

    name: peak                      # defaults to the file's stem
    description: standard shed heavily for a stretch
    pools:                          # capacity pools; per model, each pool is separate
      shared:                       # standard and priority traffic of a model
        slots: 64                   # batch slots (see tiersel.sim.latency)
        replicas: 1                 # copies of the pool serving the model; ours spread over them
        speedup: 1.0                # divides every latency term but the overhead
        background:                 # other tenants' load, as a share of the slots
          points: [[0, 0.5], [60, 0.5], [90, 1.4], [300, 1.4], [330, 0.5]]  # [time_s, load]
          repeat_s: 600             # optional: the curve repeats with this period
      router: {background: 0.3}     # every router tier (fast, spot, ...): own pool each;
      # a router tier's name (fast, spot, ...) as a key overrides `router` for that tier
    shedding:                       # P(shed) at utilisation u: max * clamp((u-start)/(full-start))
      standard: {start: 0.9, full: 1.3, max: 0.9}
      priority: {start: 1.2, full: 2.0, max: 0.1}
      router:   {start: 1.0, full: 1.5, max: 0.5}
    outages:                        # windows where listed tiers fail outright
      - {start_s: 60, end_s: 180, tiers: [standard], status: 503}
    rate_limit:                     # per model, tokens per second; standard and priority share one
      prompt_tokens_per_s: 20000    # limit, each router tier has its own (PROVIDERS.md)
      generated_tokens_per_s: 2000
      burst_s: 1.0                  # bucket size, in seconds of the rate
      models: {accounts/fireworks/models/kimi-k3: {generated_tokens_per_s: 500}}
    latency: {overhead_ms: 150}     # any field of tiersel.sim.latency.LatencyParams
    errors: {error_rate: 0.0, stream_break_rate: 0.0}
    default_max_tokens: 256         # completion length when a request sets no max_tokens
    answer_tokens: null             # where a model stops on its own (null: it fills max_tokens)
    cache_ttl_s: 300                # how long a prompt prefix stays cached
    echo_service_tier: true         # echo "service_tier" in responses, as the API sometimes does
    shed_retry_after_s: null        # a Retry-After on 503s (the real API's is undocumented)

Load is the busy share of a pool's slots; our own in-flight requests add ``1/(slots*replicas)``
each (a provider with many replicas barely notices one tenant; latency follows the load per
replica, as if requests were spread evenly).
Utilisation above 1 is overload: the pool sheds, as the ``shedding`` curves say.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from tiersel.errors import TierselError
from tiersel.sim.latency import LatencyParams

__all__ = [
    "LoadCurve",
    "Outage",
    "Pool",
    "RateLimit",
    "Scenario",
    "ScenarioError",
    "ShedCurve",
    "list_scenarios",
    "load_scenario",
]

_LATENCY = LatencyParams()
SHARED_POOL = "shared"
ROUTER_POOL = "router"


class ScenarioError(TierselError, ValueError):
    """A scenario could not be loaded: names the file, the key path and the problem."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + problem)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LoadCurve(_Strict):
    """Background load over time: linear between ``[time_s, load]`` points, flat outside them.

    Two points at the same time make a step. With ``repeat_s`` the curve repeats.
    """

    points: tuple[tuple[float, float], ...]
    repeat_s: float | None = Field(None, gt=0)

    @field_validator("points")
    @classmethod
    def _check_points(cls, v: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        if not v:
            raise ValueError("needs at least one [time_s, load] point")
        last = -math.inf
        for t, load in v:
            if t < 0 or load < 0:
                raise ValueError(f"times and loads must be >= 0, got [{t}, {load}]")
            if t < last:
                raise ValueError(f"times must not decrease, got {t} after {last}")
            last = t
        return v

    @model_validator(mode="after")
    def _check_repeat(self) -> LoadCurve:
        if self.repeat_s is not None and self.repeat_s < self.points[-1][0]:
            raise ValueError(
                f"repeat_s ({self.repeat_s}) is shorter than the curve ({self.points[-1][0]} s)"
            )
        return self

    def at(self, t: float) -> float:
        """The load at scenario time ``t`` (seconds)."""
        if self.repeat_s is not None:
            t = t % self.repeat_s
        pts = self.points
        if t < pts[0][0]:
            return pts[0][1]
        for (t0, u0), (t1, u1) in itertools.pairwise(pts):
            if t < t1:
                return u0 if t1 == t0 else u0 + (u1 - u0) * (t - t0) / (t1 - t0)
        return pts[-1][1]


class Pool(_Strict):
    """A capacity pool: its batch slots, its replicas, its speed, and other tenants' load."""

    slots: int = Field(64, ge=1)
    replicas: int = Field(1, ge=1)
    speedup: float = Field(1.0, gt=0)
    background: LoadCurve = LoadCurve(points=((0.0, 0.3),))

    @field_validator("background", mode="before")
    @classmethod
    def _constant(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return {"points": [[0.0, v]]}
        return v


class ShedCurve(_Strict):
    """P(shed) at utilisation ``u``: ``max * clamp((u - start) / (full - start), 0, 1)``."""

    start: float = Field(ge=0)
    full: float = Field(gt=0)
    max: float = Field(1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> ShedCurve:
        if self.full <= self.start:
            raise ValueError(f"full ({self.full}) must be greater than start ({self.start})")
        return self

    def probability(self, utilisation: float) -> float:
        share = (utilisation - self.start) / (self.full - self.start)
        return self.max * min(1.0, max(0.0, share))


class Outage(_Strict):
    """A window of scenario time in which the listed tiers (of the listed models) fail outright."""

    start_s: float = Field(ge=0)
    end_s: float = Field(gt=0)
    tiers: tuple[str, ...] = ("standard",)
    models: tuple[str, ...] | None = None
    status: int = Field(503, ge=429, le=599)

    @model_validator(mode="after")
    def _check(self) -> Outage:
        if self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        return self

    def covers(self, t: float, tier: str, model_id: str) -> bool:
        return (
            self.start_s <= t < self.end_s
            and tier in self.tiers
            and (self.models is None or model_id in self.models)
        )


class RateLimit(_Strict):
    """Tokens per second a model accepts from us before answering 429 (None: no limit)."""

    prompt_tokens_per_s: float | None = Field(None, gt=0)
    generated_tokens_per_s: float | None = Field(None, gt=0)
    burst_s: float = Field(1.0, gt=0)


class RateLimits(RateLimit):
    models: dict[str, RateLimit] = Field(default_factory=dict)

    def for_model(self, model_id: str) -> RateLimit:
        own = self.models.get(model_id)
        if own is None:
            return self
        return RateLimit(
            prompt_tokens_per_s=own.prompt_tokens_per_s or self.prompt_tokens_per_s,
            generated_tokens_per_s=own.generated_tokens_per_s or self.generated_tokens_per_s,
            burst_s=own.burst_s if "burst_s" in own.model_fields_set else self.burst_s,
        )


class Latency(_Strict):
    overhead_ms: float = Field(_LATENCY.overhead_ms, ge=0)
    prefill_ms_per_token: float = Field(_LATENCY.prefill_ms_per_token, ge=0)
    queue_ms_per_batch_slot: float = Field(_LATENCY.queue_ms_per_batch_slot, ge=0)
    decode_ms: float = Field(_LATENCY.decode_ms, gt=0)
    decode_ms_per_batch_slot: float = Field(_LATENCY.decode_ms_per_batch_slot, ge=0)
    priority_queue_share: float = Field(_LATENCY.priority_queue_share, ge=0, le=1)
    jitter: float = Field(_LATENCY.jitter, ge=0, lt=1)
    shed_ms: float = Field(_LATENCY.shed_ms, ge=0)
    rate_limited_ms: float = Field(_LATENCY.rate_limited_ms, ge=0)
    error_ms: float = Field(_LATENCY.error_ms, ge=0)

    def params(self) -> LatencyParams:
        return LatencyParams(**self.model_dump())


class Errors(_Strict):
    error_rate: float = Field(0.0, ge=0, le=1)
    stream_break_rate: float = Field(0.0, ge=0, le=1)


class Scenario(_Strict):
    """A validated scenario. Load one with `load_scenario`."""

    name: str
    description: str = ""
    pools: dict[str, Pool]
    shedding: dict[str, ShedCurve]
    outages: tuple[Outage, ...] = ()
    rate_limit: RateLimits = RateLimits()
    latency: Latency = Latency()
    errors: Errors = Errors()
    default_max_tokens: int = Field(256, ge=1)
    answer_tokens: int | None = Field(None, ge=1)
    cache_ttl_s: float = Field(300.0, ge=0)
    echo_service_tier: bool = True
    shed_retry_after_s: float | None = Field(None, ge=0)
    _origin: str = PrivateAttr("<memory>")

    @property
    def origin(self) -> str:
        """Where the scenario was read from (a file path, or ``<memory>``)."""
        return self._origin

    def pool_name(self, tier: str, uses_router: bool) -> str:
        """The pool serving ``tier``: a router tier's own entry, else ``router``, or ``shared``."""
        if not uses_router:
            return SHARED_POOL
        return tier if tier in self.pools else ROUTER_POOL

    def shed_curve(self, tier: str, uses_router: bool) -> ShedCurve:
        if tier in self.shedding:
            return self.shedding[tier]
        return self.shedding[ROUTER_POOL if uses_router else "standard"]


_DEFAULTS: dict[str, Any] = {
    "pools": {
        SHARED_POOL: {"slots": 64, "speedup": 1.0, "background": 0.3},
        ROUTER_POOL: {"slots": 64, "speedup": 5.5, "background": 0.3},
    },
    "shedding": {
        "standard": {"start": 0.9, "full": 1.3, "max": 0.9},
        "priority": {"start": 1.2, "full": 2.0, "max": 0.1},
        ROUTER_POOL: {"start": 1.0, "full": 1.5, "max": 0.5},
    },
}


def _with_defaults(raw: dict[str, Any], file: str) -> dict[str, Any]:
    out = dict(raw)
    for section in ("pools", "shedding"):
        given = out.get(section, {}) or {}
        if not isinstance(given, Mapping):
            raise ScenarioError(file, section, "must be a mapping")
        merged: dict[str, Any] = copy.deepcopy(_DEFAULTS[section])
        for name, entry in given.items():
            if not isinstance(entry, Mapping):
                raise ScenarioError(file, f"{section}.{name}", "must be a mapping")
            # A router tier's own pool starts from the `router` pool's settings.
            base = merged.get(name) or (merged[ROUTER_POOL] if section == "pools" else {})
            merged[str(name)] = {**base, **entry}
        out[section] = merged
    return out


def _problem(err: Any) -> str:
    kind = err.get("type", "")
    if kind == "missing":
        return "missing field"
    if kind == "extra_forbidden":
        return "unknown field"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    given = err.get("input")
    if isinstance(given, (int, float, str)) and not isinstance(given, bool):
        return f"{msg[:1].lower()}{msg[1:]} (got {given!r})"
    return f"{msg[:1].lower()}{msg[1:]}"


def parse_scenario(raw: Any, origin: str, default_name: str = "scenario") -> Scenario:
    """Validate a scenario given as a mapping (the parsed YAML); ``origin`` names it in errors."""
    if not isinstance(raw, Mapping):
        raise ScenarioError(origin, "", "a scenario must be a YAML mapping")
    data = _with_defaults(dict(raw), origin)
    data.setdefault("name", default_name)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ScenarioError(origin, loc, _problem(err)) from None
    scenario._origin = origin
    return scenario


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(str(path), "", f"bad YAML at {where}{problem}") from None


@functools.lru_cache(maxsize=1)
def _bundled() -> dict[str, Path]:
    folder = resources.files("tiersel.sim") / "scenarios"
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }


@functools.cache
def _load_bundled(name: str) -> Scenario:
    # Scenarios are frozen: one parse of each bundled file serves the whole process.
    path = _bundled()[name]
    return parse_scenario(_read(path), str(path), default_name=name)


def list_scenarios() -> dict[str, str]:
    """The bundled scenarios' names and descriptions."""
    return {name: load_scenario(name).description for name in sorted(_bundled())}


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A bundled scenario by name (``calm``, ``busy``, ``peak``, ``outage``,
    ``flapping``), or a YAML file.

    Raises `ScenarioError` naming the file, the key path and the problem.
    """
    if isinstance(name_or_path, str) and name_or_path in _bundled():
        return _load_bundled(name_or_path)
    path = Path(name_or_path)
    if not path.is_file() and path.suffix == "" and "/" not in str(name_or_path):
        known = ", ".join(sorted(_bundled()))
        raise ScenarioError(
            str(name_or_path), "", f"no such scenario (bundled: {known}) and no such file"
        )
    return parse_scenario(_read(path), str(path), default_name=path.stem)
