"""Price tables: loading, validation, overlays and model-id resolution.

A table is YAML (see ``pricing/fireworks.yaml``): a ``tiers`` section that says how each tier is
requested and what to assume about it before any traffic is seen, and a ``models`` section with
USD prices per 1M tokens per tier. ``load_pricing()`` with no argument loads the bundled table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tiersel.errors import PricingError, UnknownModel
from tiersel.tiers import DEFAULT_LOG_SPREAD, TierPriors, TierSpec, tier_name

__all__ = ["ModelPrices", "Pricing", "TierPrice", "bundled_pricing_path", "load_pricing"]

_PER_TOKEN = 1e-6


# -- file schema (validated with pydantic, then turned into the plain runtime objects below) ----


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _PriorsDoc(_Strict):
    shed_rate: float = Field(0.02, ge=0.0, le=1.0)
    error_rate: float = Field(0.005, ge=0.0, le=1.0)
    ttft_s: float = Field(0.8, gt=0.0)
    output_tps: float = Field(50.0, gt=0.0)
    shed_latency_s: float = Field(0.3, ge=0.0)
    log_spread: float = Field(DEFAULT_LOG_SPREAD, gt=0.0)


class _RequestDoc(_Strict):
    body: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    model: Literal["router"] | None = None


class _TierDoc(_Strict):
    description: str = ""
    request: _RequestDoc = Field(default_factory=_RequestDoc)
    priors: _PriorsDoc = Field(default_factory=_PriorsDoc)


class _PriceDoc(_Strict):
    input: float = Field(ge=0.0)
    output: float = Field(ge=0.0)
    cached_input: float | None = Field(None, ge=0.0)
    router: str | None = None
    source: str | None = None
    as_of: str | None = None


class _TableDoc(_Strict):
    schema_: int = Field(1, alias="schema")
    provider: str
    source: str
    as_of: str
    currency: Literal["USD"] = "USD"
    model_prefix: str = ""
    cached_input_ratio: float = Field(0.5, ge=0.0, le=1.0)
    tiers: dict[str, _TierDoc]
    models: dict[str, dict[str, _PriceDoc]]


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

    __slots__ = ("_by_id", "_doc", "as_of", "models", "origin", "provider", "source", "tiers")

    def __init__(self, doc: _TableDoc, origin: str) -> None:
        self._doc = doc
        self.origin = origin
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
            model_id = name if "/" in name else doc.model_prefix + name
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

    def overlay(self, other: Pricing) -> Pricing:
        """A new table: this one with ``other``'s tiers and model entries laid over it, per tier."""
        return _build(_merge(self._raw(), other._raw()), f"{self.origin}+{other.origin}")

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

    An overlay is a partial table: its tiers and model entries replace or extend the base's, tier
    by tier, so ``models: {kimi-k2p6: {standard: {input: 0.8, output: 3.5}}}`` changes one price.

    Raises `PricingError` naming the file, the key path and the problem.
    """
    base_path = Path(path) if path is not None else bundled_pricing_path()
    raw = _read(base_path)
    origin = str(base_path)
    if overlay is not None:
        paths = [overlay] if isinstance(overlay, (str, Path)) else list(overlay)
        for p in paths:
            raw = _merge(raw, _read(Path(p)), origin=str(p))
            origin += f"+{p}"
    return _build(raw, origin)


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PricingError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PricingError(str(path), "", f"bad YAML at {where}{problem}") from None
    if not isinstance(data, dict):
        raise PricingError(str(path), "", "the table must be a YAML mapping")
    return data


def _merge(base: dict[str, Any], top: dict[str, Any], origin: str = "overlay") -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if key in ("tiers", "models"):
            if not isinstance(value, dict):
                raise PricingError(origin, key, "must be a mapping")
            section = dict(out.get(key) or {})
            for name, entry in value.items():
                if (
                    key == "models"
                    and isinstance(entry, dict)
                    and isinstance(section.get(name), dict)
                ):
                    section[name] = {**section[name], **entry}
                else:
                    section[name] = entry
            out[key] = section
        else:
            out[key] = value
    return out


def _build(raw: dict[str, Any], origin: str) -> Pricing:
    file = origin.split("+")[-1]
    try:
        doc = _TableDoc.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise PricingError(file, loc, _problem(err)) from None
    for name, entries in doc.models.items():
        if not entries:
            raise PricingError(file, f"models.{name}", "a model needs at least one tier")
        for tname, price in entries.items():
            spec = doc.tiers.get(tname)
            if spec is None:
                known = ", ".join(doc.tiers)
                raise PricingError(
                    file, f"models.{name}.{tname}", f"unknown tier {tname!r} (declared: {known})"
                )
            if spec.request.model == "router" and not price.router:
                raise PricingError(
                    file,
                    f"models.{name}.{tname}.router",
                    "missing field: this tier needs a router id",
                )
    for tname, t in doc.tiers.items():
        if t.request.model == "router" and "service_tier" in t.request.body:
            raise PricingError(
                file, f"tiers.{tname}.request", "a router tier must not also set service_tier"
            )
    return Pricing(doc, origin)


def _problem(err: Any) -> str:
    kind = err.get("type", "")
    if kind == "missing":
        return "missing field"
    if kind == "extra_forbidden":
        return "unknown field"
    msg = str(err.get("msg", "invalid"))
    given = err.get("input")
    if isinstance(given, (int, float, str)) and not isinstance(given, bool):
        return f"{msg[:1].lower()}{msg[1:]} (got {given!r})"
    return f"{msg[:1].lower()}{msg[1:]}"
