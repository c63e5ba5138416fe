"""Price tables: loading, validation, overlays and model-id resolution.

A table is YAML (see ``pricing/fireworks.yaml``): a ``tiers`` section that says how each tier is
requested and what to assume about it before any traffic is seen, and a ``models`` section with
USD prices per 1M tokens per tier. ``load_pricing()`` with no argument loads the bundled table.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

from tiersel.errors import PricingError, UnknownModel
from tiersel.tiers import DEFAULT_LOG_SPREAD, TierPriors, TierSpec, tier_name

__all__ = ["ModelPrices", "Pricing", "TierPrice", "bundled_pricing_path", "load_pricing"]

_PER_TOKEN = 1e-6
_SCHEMA = 1  # the table format this module reads
# USD per 1M tokens: hundreds of times any real price, and low enough that no call's cost, up to
# `tiersel.dialects.TOKEN_LIMIT` tokens, can overflow a float (an infinite cost would reach JSON
# output as `Infinity`, which is not JSON).
_MAX_PRICE_PER_1M = 100_000.0
_MAX_PRIOR_S = 86_400.0  # a day
_MIN_PRIOR_TPS = 0.001


# -- file schema (validated with pydantic, then turned into the plain runtime objects below) ----

# A number, never a string or a boolean that merely converts to one (`output: true` is a typo).
_Number = Annotated[float, Strict()]


class _Strict(BaseModel):
    # defer_build: the table's models build their validators when a table is first read.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, defer_build=True)


class _PriorsDoc(_Strict):
    # Bounded so that a call's expected latency, up to `TOKEN_LIMIT` output tokens, stays finite.
    shed_rate: _Number = Field(0.02, ge=0.0, le=1.0)
    error_rate: _Number = Field(0.005, ge=0.0, le=1.0)
    ttft_s: _Number = Field(0.8, gt=0.0, le=_MAX_PRIOR_S)
    output_tps: _Number = Field(50.0, ge=_MIN_PRIOR_TPS)
    shed_latency_s: _Number = Field(0.3, ge=0.0, le=_MAX_PRIOR_S)
    log_spread: _Number = Field(DEFAULT_LOG_SPREAD, gt=0.0)


class _RequestDoc(_Strict):
    body: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    model: Literal["router"] | None = None


class _TierDoc(_Strict):
    description: str = ""
    request: _RequestDoc = Field(default_factory=_RequestDoc)
    priors: _PriorsDoc = Field(default_factory=_PriorsDoc)


class _PriceDoc(_Strict):
    input: _Number = Field(ge=0.0, le=_MAX_PRICE_PER_1M)
    output: _Number = Field(ge=0.0, le=_MAX_PRICE_PER_1M)
    cached_input: _Number | None = Field(None, ge=0.0, le=_MAX_PRICE_PER_1M)
    router: str | None = None
    source: str | None = None
    as_of: str | None = None


class _TableDoc(_Strict):
    schema_: Any = Field(_SCHEMA, alias="schema")
    provider: str
    source: str
    as_of: str
    currency: Literal["USD"] = "USD"
    model_prefix: str = ""
    cached_input_ratio: _Number = Field(0.5, ge=0.0, le=1.0)
    tiers: dict[str, _TierDoc]
    models: dict[str, dict[str, _PriceDoc]]

    @field_validator("schema_")
    @classmethod
    def _known_schema(cls, v: Any) -> int:
        if type(v) is not int or v != _SCHEMA:
            raise ValueError(f"unsupported schema version {v!r} (this tiersel reads {_SCHEMA})")
        return v


# -- runtime objects ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TierPrice:
    """One model's price on one tier, in USD per token, and the model id to send for it."""

    spec: TierSpec
    input_per_token: float
    cached_input_per_token: float
    output_per_token: float
    model_id: str
    source: str
    as_of: str
    # What a decision's `Step` for this tier holds besides the call's costs (precomputed).
    step_fields: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spec = self.spec
        fields = (spec.name, self.model_id, self.service_tier, spec.body, spec.headers)
        object.__setattr__(self, "step_fields", fields)

    @property
    def tier(self) -> str:
        return self.spec.name

    @property
    def service_tier(self) -> str | None:
        """The ``service_tier`` body field this tier sets, if any."""
        value = self.spec.body.get("service_tier")
        return value if isinstance(value, str) else None

    @property
    def input_per_1m(self) -> float:
        return self.input_per_token / _PER_TOKEN

    @property
    def cached_input_per_1m(self) -> float:
        return self.cached_input_per_token / _PER_TOKEN

    @property
    def output_per_1m(self) -> float:
        return self.output_per_token / _PER_TOKEN


@dataclass(frozen=True, slots=True)
class ModelPrices:
    """Every tier a model offers, cheapest-first by output price."""

    name: str
    model_id: str
    tiers: Mapping[str, TierPrice]

    def offers(self, tier: str) -> bool:
        return tier in self.tiers


class Pricing:
    """A loaded price table: tiers (as data) and per-model, per-tier prices.

    >>> pricing = load_pricing()
    >>> pricing.model("kimi-k2p6").tiers["fast"].model_id
    'accounts/fireworks/routers/kimi-k2p6-fast'
    """

    __slots__ = (
        "_by_id",
        "_doc",
        "_sources",
        "as_of",
        "models",
        "origin",
        "provider",
        "source",
        "tiers",
    )

    def __init__(self, doc: _TableDoc, origin: str, sources: _Sources | None = None) -> None:
        self._doc = doc
        self.origin = origin
        self._sources = sources if sources is not None else _Sources(origin)
        self.provider = doc.provider
        self.source = doc.source
        self.as_of = doc.as_of
        self.tiers: Mapping[str, TierSpec] = MappingProxyType(
            {
                name: TierSpec(
                    name=tier_name(name),
                    description=t.description,
                    body=MappingProxyType(dict(t.request.body)),
                    headers=MappingProxyType(dict(t.request.headers)),
                    uses_router=t.request.model == "router",
                    priors=TierPriors(**t.priors.model_dump()),
                )
                for name, t in doc.tiers.items()
            }
        )
        models: dict[str, ModelPrices] = {}
        by_id: dict[str, tuple[ModelPrices, str]] = {}
        for name, entries in doc.models.items():
            model_id = _model_id(name, doc.model_prefix)
            prices: dict[str, TierPrice] = {}
            for tname, p in entries.items():
                spec = self.tiers[tname]
                sent_id = p.router if spec.uses_router and p.router else model_id
                cached = (
                    p.cached_input
                    if p.cached_input is not None
                    else (p.input * doc.cached_input_ratio)
                )
                prices[tname] = TierPrice(
                    spec=spec,
                    input_per_token=p.input * _PER_TOKEN,
                    cached_input_per_token=cached * _PER_TOKEN,
                    output_per_token=p.output * _PER_TOKEN,
                    model_id=sent_id,
                    source=p.source or doc.source,
                    as_of=p.as_of or doc.as_of,
                )
            mp = ModelPrices(name=name, model_id=model_id, tiers=MappingProxyType(prices))
            models[name] = mp
            for key in {name, model_id}:
                by_id[key] = (mp, "standard")
            for tname, tp in prices.items():
                if tp.model_id != model_id:
                    by_id[tp.model_id] = (mp, tname)
        self.models: Mapping[str, ModelPrices] = MappingProxyType(models)
        self._by_id = by_id

    def model(self, model: str) -> ModelPrices:
        """Prices for a model, by short name, full id or router id."""
        hit = self._by_id.get(model)
        if hit is None:
            raise UnknownModel(model, self.origin)
        return hit[0]

    def resolve(self, model: str) -> tuple[ModelPrices, str | None]:
        """The model an id names, and the tier it implies if it is a router id (else None)."""
        hit = self._by_id.get(model)
        if hit is None:
            raise UnknownModel(model, self.origin)
        mp, tier = hit
        return mp, (tier if model not in (mp.name, mp.model_id) else None)

    def check_tiers(self, names: Iterable[str]) -> None:
        """Raise `ValueError` naming the first of ``names`` this table declares no tier for.

        >>> load_pricing().check_tiers(["standrd"])
        Traceback (most recent call last):
        ...
        ValueError: unknown tier 'standrd' (known: standard, priority, fast, ...)
        """
        for name in names:
            if name not in self.tiers:
                raise ValueError(f"unknown tier {name!r} (known: {', '.join(self.tiers)})")

    def overlay(self, other: Pricing) -> Pricing:
        """A new table: this one with ``other``'s tiers and model entries laid over it, per tier."""
        sources = self._sources.copy()
        raw = _merge(self._raw(), other._raw(), other._sources.base, sources)
        sources.extend(other._sources)
        return _build(raw, f"{self.origin}+{other.origin}", sources)

    def _raw(self) -> dict[str, Any]:
        return self._doc.model_dump(by_alias=True, exclude_none=True)

    def __repr__(self) -> str:
        return (
            f"Pricing(provider={self.provider!r}, models={len(self.models)},"
            f" origin={self.origin!r})"
        )


def bundled_pricing_path() -> Path:
    """Where the bundled Fireworks table lives: inside the wheel, or in the source tree."""
    here = Path(__file__).resolve().parent
    for candidate in (
        here / "_pricing" / "fireworks.yaml",
        here.parent / "pricing" / "fireworks.yaml",
    ):
        if candidate.is_file():
            return candidate
    raise PricingError(
        str(here / "_pricing"), "", "bundled price table is missing from the install"
    )


def load_pricing(
    path: str | Path | None = None, *, overlay: str | Path | Iterable[str | Path] | None = None
) -> Pricing:
    """Load a price table (the bundled Fireworks one when ``path`` is None), then any overlays.

    An overlay is a partial table laid over the base. A model's price for a tier is replaced
    whole, so ``models: {kimi-k2p6: {standard: {input: 0.8, output: 3.5}}}`` changes one price;
    a tier the base declares is merged into field by field, so ``tiers: {priority: {priors:
    {shed_rate: 0.01}}}`` changes that prior alone and keeps how the tier is requested.

    Raises `PricingError` naming the file the bad value came from, the key path and the problem.
    """
    base_path = Path(path) if path is not None else bundled_pricing_path()
    raw = _read(base_path)
    origin = str(base_path)
    sources = _Sources(origin)
    if overlay is not None:
        paths = [overlay] if isinstance(overlay, (str, Path)) else list(overlay)
        for p in paths:
            raw = _merge(raw, _read(Path(p)), str(p), sources)
            origin += f"+{p}"
    return _build(raw, origin, sources)


@functools.cache
def _loader() -> type[Any]:
    """PyYAML's safe loader, reading ``1e-3`` and ``2E+1`` as numbers (as YAML 1.2 does), not as
    the strings YAML 1.1 makes of exponents without a dot: prices must be numbers. Built on first
    use, so ``import tiersel`` does not load yaml."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )
    return Loader


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PricingError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    import yaml

    try:
        data = yaml.load(text, Loader=_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PricingError(str(path), "", f"bad YAML at {where}{problem}") from None
    if not isinstance(data, dict):
        raise PricingError(str(path), "", "the table must be a YAML mapping")
    return data


class _Sources:
    """Which file set each part of a merged table, so an error names the file its value came from.

    A part is a key path (``("models", "kimi-k2p6", "standard")``). The file of a key path is
    the one that last set it, a part of it, or a part holding it; the base file when no overlay
    touched it.
    """

    __slots__ = ("_order", "_set", "base")

    def __init__(self, base: str) -> None:
        self.base = base
        self._set: dict[tuple[str, ...], tuple[int, str]] = {}
        self._order = itertools.count()

    def record(self, path: tuple[str, ...], file: str) -> None:
        for key in [k for k in self._set if k[: len(path)] == path]:
            del self._set[key]  # replaced along with what holds it
        self._set[path] = (next(self._order), file)

    def file_of(self, loc: tuple[str, ...]) -> str:
        best = (-1, self.base)
        for path, hit in self._set.items():
            n = min(len(path), len(loc))
            if path[:n] == loc[:n] and hit[0] > best[0]:
                best = hit
        return best[1]

    def copy(self) -> _Sources:
        out = _Sources(self.base)
        out.extend(self)
        return out

    def extend(self, other: _Sources) -> None:
        for path, (_, file) in sorted(other._set.items(), key=lambda kv: kv[1][0]):
            self.record(path, file)


def _merge(
    base: dict[str, Any], top: dict[str, Any], origin: str, sources: _Sources
) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if key not in ("tiers", "models"):
            sources.record((key,), origin)
            out[key] = value
            continue
        if not isinstance(value, dict):
            raise PricingError(origin, key, "must be a mapping")
        existing = out.get(key)
        if existing is not None and not isinstance(existing, dict):
            raise PricingError(sources.file_of((key,)), key, "must be a mapping")
        section = dict(existing or {})
        for name, entry in value.items():
            old = section.get(name)
            if not (isinstance(entry, dict) and isinstance(old, dict)):
                sources.record((key, name), origin)
                section[name] = entry
            elif key == "models":  # a model's price for a tier is replaced whole
                for tier in entry:
                    sources.record((key, name, tier), origin)
                section[name] = {**old, **entry}
            else:  # a tier: merged field by field, and its request and priors likewise
                merged = dict(old)
                for part, given in entry.items():
                    if isinstance(given, dict) and isinstance(old.get(part), dict):
                        for leaf in given:
                            sources.record((key, name, part, leaf), origin)
                        merged[part] = {**old[part], **given}
                    else:
                        sources.record((key, name, part), origin)
                        merged[part] = given
                section[name] = merged
        out[key] = section
    return out


def _model_id(name: str, prefix: str) -> str:
    return name if "/" in name else prefix + name


def _build(raw: dict[str, Any], origin: str, sources: _Sources) -> Pricing:
    def refuse(loc: tuple[str, ...], problem: str) -> PricingError:
        return PricingError(sources.file_of(loc), ".".join(loc), problem)

    try:
        doc = _TableDoc.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise refuse(tuple(str(p) for p in err["loc"]), _problem(err)) from None
    for name, entries in doc.models.items():
        if not entries:
            raise refuse(("models", name), "a model needs at least one tier")
        for tname, price in entries.items():
            spec = doc.tiers.get(tname)
            if spec is None:
                known = ", ".join(doc.tiers)
                raise refuse(("models", name, tname), f"unknown tier {tname!r} (declared: {known})")
            if spec.request.model == "router" and not price.router:
                raise refuse(
                    ("models", name, tname, "router"),
                    "missing field: this tier needs a router id",
                )
    for tname, t in doc.tiers.items():
        if t.request.model == "router" and "service_tier" in t.request.body:
            raise refuse(
                ("tiers", tname, "request"), "a router tier must not also set service_tier"
            )
    _check_ids(doc, refuse)
    return Pricing(doc, origin, sources)


def _check_ids(doc: _TableDoc, refuse: Any) -> None:
    """Every id a table resolves (model names, model ids, router ids) names one model and tier:
    a router id that is also another model's id would silently take that model over."""
    owner: dict[str, str] = {}
    for name in doc.models:
        for model_id in dict.fromkeys((name, _model_id(name, doc.model_prefix))):
            if model_id in owner:
                raise refuse(("models", name), f"{model_id!r} is already {owner[model_id]}")
            owner[model_id] = f"the id of model {name}"
    for name, entries in doc.models.items():
        own = {name, _model_id(name, doc.model_prefix)}
        for tname, price in entries.items():
            router = price.router
            if router is None or doc.tiers[tname].request.model != "router":
                continue
            loc = ("models", name, tname, "router")
            if router in own:
                raise refuse(loc, f"{router!r} is the model's own id, not a router's")
            if router in owner:
                raise refuse(loc, f"{router!r} is already {owner[router]}")
            owner[router] = f"the router of model {name} ({tname})"


def _problem(err: Any) -> str:
    kind = err.get("type", "")
    if kind == "missing":
        return "missing field"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "value_error" and "error" in err.get("ctx", {}):
        return str(err["ctx"]["error"])
    msg = str(err.get("msg", "invalid"))
    msg = f"{msg[:1].lower()}{msg[1:]}"
    given = err.get("input")
    if isinstance(given, (int, float, str)):
        shown = repr(given)
        if len(shown) > 40:
            shown = f"{shown[:20]}...({len(shown)} characters)"
        return f"{msg} (got {shown})"
    return msg
