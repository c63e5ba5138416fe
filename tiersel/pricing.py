"""Price tables: loading, validation, overlays and model-id resolution.

A table is YAML (see ``pricing/fireworks.yaml``): a ``tiers`` section that says how each tier is
requested and what to assume about it before any traffic is seen, and a ``models`` section with
USD prices per 1M tokens per tier. ``load_pricing()`` with no argument loads the bundled table.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import functools
import itertools
import re
import threading
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

from tiersel.errors import PricingError, RetiredTier, TierselWarning, UnknownModel
from tiersel.tiers import DEFAULT_LOG_SPREAD, DEFAULT_PREFILL_S, TierPriors, TierSpec, tier_name

__all__ = ["ModelPrices", "Pricing", "TierPrice", "bundled_pricing_path", "load_pricing"]

_PER_TOKEN = 1e-6
_SCHEMAS = (1, 2)  # the table formats this module reads (2 adds each model's lifecycle and ids)
_STALE_AFTER = datetime.timedelta(days=90)  # a table older than this warns once
# The keys of a model's entry that describe the model; every other key is a tier's price.
_MODEL_KEYS = frozenset(
    {
        "status",
        "deprecation_date",
        "successor",
        "max_input_tokens",
        "max_output_tokens",
        "source",
        "aliases",
        "corrected",
    }
)
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
    memory_after_shed: _Number = Field(0.75, ge=0.0, le=1.0)
    memory_after_ok: _Number = Field(0.4, ge=0.0, le=1.0)
    memory_s: _Number = Field(45.0, gt=0.0, le=_MAX_PRIOR_S)
    # At most a millisecond a token (eight times the default).
    prefill_s_per_token: _Number = Field(DEFAULT_PREFILL_S, ge=0.0, le=1e-3)


class _RequestDoc(_Strict):
    body: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    model: Literal["router"] | None = None
    # A tier served from its own host (Fireworks' US-only fast variant): the scheme, host and
    # port the request goes to; its path is kept.
    base_url: str | None = None

    @field_validator("base_url")
    @classmethod
    def _origin(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if not parts.hostname or not (
            parts.scheme == "https" or (parts.scheme == "http" and loopback)
        ):
            # An API key goes with the request: only over TLS, but to a server on this machine.
            raise ValueError(f"must be an https:// URL (http:// only on loopback), got {v!r}")
        return f"{parts.scheme}://{parts.netloc}"


class _TierDoc(_Strict):
    description: str = ""
    source: str = ""
    request: _RequestDoc = Field(default_factory=_RequestDoc)
    priors: _PriorsDoc = Field(default_factory=_PriorsDoc)
    # A router tier that also sets service_tier (Fireworks' US-only routers sell priority).
    priority_on_router: bool = False
    # Chosen only when a call's or job's tiers name it (preemptible or region-bound capacity).
    opt_in: bool = False


class _PriceDoc(_Strict):
    input: _Number = Field(ge=0.0, le=_MAX_PRICE_PER_1M)
    output: _Number = Field(ge=0.0, le=_MAX_PRICE_PER_1M)
    cached_input: _Number | None = Field(None, ge=0.0, le=_MAX_PRICE_PER_1M)
    router: str | None = None
    aliases: list[str] = Field(default_factory=list)
    deprecation_date: datetime.date | None = None
    successor: str | None = None
    source: str | None = None
    as_of: str | None = None


class _ModelDoc(_Strict):
    status: Literal["current", "legacy", "retired"] = "current"
    deprecation_date: datetime.date | None = None
    successor: str | None = None
    max_input_tokens: int | None = Field(None, gt=0)
    max_output_tokens: int | None = Field(None, gt=0)
    source: str | None = None
    aliases: list[str] = Field(default_factory=list)
    corrected: str | None = None
    tiers: dict[str, _PriceDoc] = Field(default_factory=dict)


class _TableDoc(_Strict):
    schema_: Any = Field(_SCHEMAS[-1], alias="schema")
    provider: str
    source: str
    as_of: str
    built_from: dict[str, str] | None = None
    currency: Literal["USD"] = "USD"
    model_prefix: str = ""
    id_prefixes: list[str] = Field(default_factory=list)
    cached_input_ratio: _Number = Field(0.5, ge=0.0, le=1.0)
    tiers: dict[str, _TierDoc]
    models: dict[str, _ModelDoc]

    @field_validator("schema_")
    @classmethod
    def _known_schema(cls, v: Any) -> int:
        if type(v) is not int or v not in _SCHEMAS:
            known = " and ".join(map(str, _SCHEMAS))
            raise ValueError(f"unsupported schema version {v!r} (this tiersel reads {known})")
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
    aliases: tuple[str, ...] = ()  # other ids that name this model on this tier
    deprecation_date: datetime.date | None = None  # of this tier's own id (an old router)
    successor: str | None = None  # what the provider names in its place, once retired
    # What a decision's `Step` for this tier holds besides the call's costs (precomputed).
    step_fields: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spec = self.spec
        fields = (
            spec.name,
            self.model_id,
            self.service_tier,
            spec.body,
            spec.headers,
            spec.base_url,
        )
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
    """A model: every tier it sells today, its lifecycle, and the ids that name it.

    ``status`` is ``current``, ``legacy`` (a size-class price with no current source) or
    ``retired`` (its deprecation date has passed: it still resolves, and warns once naming its
    ``successor``). ``tiers`` holds the tiers on sale; a tier whose own deprecation date has
    passed (an old fast router) is in ``retired_tiers``, and its id resolves to the model.
    A model with no tiers is known but unpriced: it is sent as written, never under a budget.
    """

    name: str
    model_id: str
    tiers: Mapping[str, TierPrice]
    status: str = "current"
    deprecation_date: datetime.date | None = None
    successor: str | None = None
    aliases: tuple[str, ...] = ()
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    source: str = ""
    retired_tiers: Mapping[str, TierPrice] = field(default_factory=lambda: MappingProxyType({}))
    # The tiers a call may use when it names none: every tier on sale but the opt-in ones.
    default_tiers: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        chosen = tuple(n for n, tp in self.tiers.items() if not tp.spec.opt_in)
        object.__setattr__(self, "default_tiers", chosen)

    def offers(self, tier: str) -> bool:
        return tier in self.tiers

    @property
    def priced(self) -> bool:
        return bool(self.tiers)

    @property
    def retired(self) -> bool:
        return self.status == "retired"

    def beyond(self, tokens: int | None, *, output: bool) -> str | None:
        """What the model allows, said, when ``tokens`` (of output, or of prompt) is more than
        the price table's limit for it: "kimi-k3 writes at most 131,072 tokens (the price
        table's max_output_tokens)"; None within it, or when the table gives no limit. The
        provider refuses such a call."""
        limit = self.max_output_tokens if output else self.max_input_tokens
        if tokens is None or not limit or tokens <= limit:
            return None
        verb, field_name = (
            ("writes", "max_output_tokens") if output else ("reads", "max_input_tokens")
        )
        return f"{self.name} {verb} at most {limit:,} tokens (the price table's {field_name})"

    def ids(self) -> tuple[str, ...]:
        """Every id that names this model (its own, its aliases, its tiers' router ids)."""
        out = dict.fromkeys((self.model_id, self.name, *self.aliases))
        for tp in (*self.tiers.values(), *self.retired_tiers.values()):
            out.update(dict.fromkeys((tp.model_id, *tp.aliases)))
        return tuple(out)


class Pricing:
    """A loaded price table: tiers (as data) and per-model, per-tier prices.

    ``today`` (default: the date it is loaded) decides which models and tiers are retired.

    >>> pricing = load_pricing()
    >>> pricing.model("kimi-k3").tiers["fast"].model_id
    'accounts/fireworks/routers/kimi-k3-fast'
    >>> pricing.resolve("fireworks_ai/kimi-k3-fast")[1]
    'fast'
    """

    __slots__ = (
        "_by_id",
        "_doc",
        "_sources",
        "_warned",
        "as_of",
        "built_from",
        "id_prefixes",
        "models",
        "origin",
        "provider",
        "source",
        "tiers",
        "today",
    )

    def __init__(
        self,
        doc: _TableDoc,
        origin: str,
        sources: _Sources | None = None,
        today: datetime.date | None = None,
    ) -> None:
        self._doc = doc
        self.origin = origin
        self._sources = sources if sources is not None else _Sources(origin)
        self._warned: set[str] = set()
        self.today = today if today is not None else datetime.date.today()
        self.provider = doc.provider
        self.source = doc.source
        self.as_of = doc.as_of
        self.built_from: Mapping[str, str] = MappingProxyType(dict(doc.built_from or {}))
        self.id_prefixes = tuple(doc.id_prefixes)
        self.tiers: Mapping[str, TierSpec] = MappingProxyType(
            {
                name: TierSpec(
                    name=tier_name(name),
                    description=t.description,
                    body=MappingProxyType(copy.deepcopy(t.request.body)),
                    headers=MappingProxyType(dict(t.request.headers)),
                    base_url=t.request.base_url,
                    uses_router=t.request.model == "router",
                    priors=TierPriors(**t.priors.model_dump()),
                    opt_in=t.opt_in,
                )
                for name, t in doc.tiers.items()
            }
        )
        models: dict[str, ModelPrices] = {}
        for name, entry in doc.models.items():
            models[name] = self._model(name, entry)
        self.models: Mapping[str, ModelPrices] = MappingProxyType(models)
        self._by_id = _index(models.values())

    def _model(self, name: str, entry: _ModelDoc) -> ModelPrices:
        doc, today = self._doc, self.today
        model_id = _model_id(name, doc.model_prefix)
        live: dict[str, TierPrice] = {}
        gone: dict[str, TierPrice] = {}
        for tname, p in entry.tiers.items():
            spec = self.tiers[tname]
            sent_id = p.router if spec.uses_router and p.router else model_id
            cached = (
                p.cached_input if p.cached_input is not None else (p.input * doc.cached_input_ratio)
            )
            tp = TierPrice(
                spec=spec,
                input_per_token=p.input * _PER_TOKEN,
                cached_input_per_token=cached * _PER_TOKEN,
                output_per_token=p.output * _PER_TOKEN,
                model_id=sent_id,
                source=p.source or entry.source or doc.source,
                as_of=p.as_of or doc.as_of,
                aliases=tuple(p.aliases),
                deprecation_date=p.deprecation_date,
                successor=p.successor,
            )
            retired = p.deprecation_date is not None and p.deprecation_date <= today
            (gone if retired else live)[tname] = tp
        status = entry.status
        if entry.deprecation_date is not None and entry.deprecation_date <= today:
            status = "retired"
        return ModelPrices(
            name=name,
            model_id=model_id,
            tiers=MappingProxyType(live),
            status=status,
            deprecation_date=entry.deprecation_date,
            successor=entry.successor,
            aliases=tuple(entry.aliases),
            max_input_tokens=entry.max_input_tokens,
            max_output_tokens=entry.max_output_tokens,
            source=entry.source or doc.source,
            retired_tiers=MappingProxyType(gone),
        )

    def model(self, model: str) -> ModelPrices:
        """Prices for a model, by any id that names it (see `resolve`)."""
        return self.resolve(model)[0]

    def resolve(self, model: str) -> tuple[ModelPrices, str | None]:
        """The model an id names, and the tier it implies if it is a router id (else None).

        Any id resolves: the short name (``kimi-k3``), the full id, an alias (``kimi-latest``),
        a router id (``accounts/fireworks/routers/kimi-k3-fast``) or its slug (``kimi-k3-fast``),
        each also with LiteLLM's provider prefix (``fireworks_ai/``). A retired model resolves
        and warns once, naming its successor; a retired router's id resolves to its model.
        Raises `UnknownModel` naming the closest known ids.
        """
        hit = self._by_id.get(model)
        if hit is None:
            hit = self._by_id.get(self._unprefixed(model))
            if hit is None:
                raise self.unknown(model)
        mp, implied, gone = hit
        if gone is not None and self.tiers[gone].opt_in:
            # A retired US-only (or spot) router: its model id is another place and kind of
            # capacity, so it is never sent in its stead.
            tp = mp.retired_tiers[gone]
            raise RetiredTier(model, gone, mp.name, tp.deprecation_date, tp.successor)
        if mp.status == "retired" or gone:
            self._warn_retired(model, mp, gone)
        return mp, implied

    def unknown(self, model: str) -> UnknownModel:
        """The error for an id this table does not know, naming the closest ids it does."""
        bare = self._unprefixed(model) if isinstance(model, str) else ""
        # Current models first: a retired one is named only when nothing current is close.
        current = [i for i, hit in self._by_id.items() if not hit[0].retired]
        closest = difflib.get_close_matches(bare, current, n=3, cutoff=0.6)
        if not closest:
            closest = difflib.get_close_matches(bare, list(self._by_id), n=3, cutoff=0.6)
        return UnknownModel(model, self.origin, closest)

    def _unprefixed(self, model: str) -> str:
        for prefix in self.id_prefixes:
            if model.startswith(prefix):
                return model[len(prefix) :]
        return model

    def _warn_retired(self, model: str, mp: ModelPrices, tier: str | None) -> None:
        key = f"{mp.name}:{tier or ''}"
        if key in self._warned:
            return
        self._warned.add(key)
        when = f" on {mp.deprecation_date}" if mp.deprecation_date else ""
        if tier:
            what = f"{model!r} ({tier} of {mp.name}) is retired; it is sent as {mp.model_id!r}"
            if mp.retired:  # (the model's own warning is given once, maybe before this one)
                what += f", itself retired{when}"
        else:
            what = f"model {mp.name!r} was retired{when}"
        if mp.retired:
            if mp.successor:
                what += f"; its successor is {mp.successor!r}"
            else:
                what += "; the price table names no successor"
        warnings.warn(f"{what} (price table {self.as_of})", TierselWarning, stacklevel=3)

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
        return _build(raw, f"{self.origin}+{other.origin}", sources, self.today)

    def stale(self) -> bool:
        """Whether the table is older than 90 days on ``today``."""
        try:
            built = datetime.date.fromisoformat(self.as_of)
        except ValueError:  # "2026-11": a month
            try:
                built = datetime.date.fromisoformat(f"{self.as_of}-01")
            except ValueError:
                return False
        return self.today - built > _STALE_AFTER

    def _raw(self) -> dict[str, Any]:
        raw = self._doc.model_dump(by_alias=True, exclude_none=True)
        raw["models"] = {
            name: {**{k: v for k, v in m.items() if k != "tiers"}, **m.get("tiers", {})}
            for name, m in raw["models"].items()
        }
        return raw

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
    path: str | Path | None = None,
    *,
    overlay: str | Path | Iterable[str | Path] | None = None,
    today: datetime.date | None = None,
) -> Pricing:
    """Load a price table (the bundled Fireworks one when ``path`` is None), then any overlays.

    An overlay is a partial table laid over the base. A model's price for a tier is replaced
    whole, so ``models: {kimi-k3: {standard: {input: 0.8, output: 3.5}}}`` changes one price;
    a tier the base declares is merged into field by field, so ``tiers: {priority: {priors:
    {shed_rate: 0.01}}}`` changes that prior alone and keeps how the tier is requested.

    ``today`` (default: today) decides which models are retired; a table older than 90 days
    on that date warns once (`TierselWarning`).

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
    table = _build(raw, origin, sources, today)
    if table.stale():
        _warn_stale(table)
    return table


_stale_warned: set[str] = set()


def _warn_stale(table: Pricing) -> None:
    if table.origin in _stale_warned:
        return
    _stale_warned.add(table.origin)
    warnings.warn(
        f"the price table {Path(table.origin.split('+')[0]).name} is from {table.as_of}, more than"
        " 90 days ago: prices and models may have changed (rebuild it, or lay an overlay over it)",
        TierselWarning,
        stacklevel=3,
    )


@functools.cache
def _loader() -> type[Any]:
    """PyYAML's safe loader, reading ``1e-3`` and ``2E+1`` as numbers (as YAML 1.2 does), not as
    the strings YAML 1.1 makes of exponents without a dot: prices must be numbers. Built on first
    use, so ``import tiersel`` does not load yaml. LibYAML's parser when PyYAML has it: the
    bundled catalogue takes about 25 ms to read with it and 150 ms without."""
    import yaml

    base: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[misc]
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )
    return Loader


_READ_KEPT = 8
_read_cache: dict[tuple[str, str], dict[str, Any]] = {}
_read_lock = threading.Lock()


def _read(path: Path) -> dict[str, Any]:
    """A table file's YAML document. Parsing the bundled catalogue takes about 16 ms, and each
    `Selector()` without a table of its own loads it: the document of a file's text is kept for
    the next load of the same text (at most `_READ_KEPT` files; reading the file again takes
    a fraction of a millisecond). The document is shared: `_merge` and `_build` read it and
    never change it, and a `Pricing` copies the nested values it hands out (a tier's request
    body), so nothing a caller does to them reaches the next load."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PricingError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    key = (str(path), text)
    kept = _read_cache.get(key)
    if kept is not None:
        return kept
    data = _parse(path, text)
    with _read_lock:
        if len(_read_cache) >= _READ_KEPT:
            _read_cache.clear()
        _read_cache[key] = data
    return data


def _parse(path: Path, text: str) -> dict[str, Any]:
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

    A part is a key path (``("models", "kimi-k3", "standard")``). The file of a key path is
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


def _split_models(raw: dict[str, Any]) -> dict[str, Any]:
    """A table's raw models with each entry's tier prices under ``tiers`` (a file writes them
    beside the model's own keys: ``kimi-k3: {status: current, standard: {...}}``)."""
    models = raw.get("models")
    if not isinstance(models, dict):
        return raw
    split: dict[str, Any] = {}
    for name, entry in models.items():
        if isinstance(entry, dict):
            meta = {k: v for k, v in entry.items() if k in _MODEL_KEYS}
            meta["tiers"] = {k: v for k, v in entry.items() if k not in _MODEL_KEYS}
            split[name] = meta
        else:
            split[name] = entry
    return {**raw, "models": split}


def _build(
    raw: dict[str, Any], origin: str, sources: _Sources, today: datetime.date | None = None
) -> Pricing:
    def refuse(loc: tuple[str, ...], problem: str) -> PricingError:
        return PricingError(sources.file_of(loc), ".".join(loc), problem)

    try:
        doc = _TableDoc.model_validate(_split_models(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(p) for p in err["loc"])
        if len(loc) > 3 and loc[0] == "models" and loc[2] == "tiers":
            loc = loc[:2] + loc[3:]  # written beside the model's own keys
        raise refuse(loc, _problem(err)) from None
    for name, entry in doc.models.items():
        for tname, price in entry.tiers.items():
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
            if not t.priority_on_router:
                raise refuse(
                    ("tiers", tname, "request"),
                    "a router tier must not also set service_tier"
                    " (unless the tier says priority_on_router: true)",
                )
        elif t.priority_on_router:
            raise refuse(
                ("tiers", tname, "priority_on_router"),
                "only a tier that sends a router id with service_tier may say so",
            )
    _check_ids(doc, refuse)
    return Pricing(doc, origin, sources, today)


def _check_ids(doc: _TableDoc, refuse: Any) -> None:
    """Every id a table resolves (model names, model ids, aliases, router ids) names one model
    and tier: a router id that is also another model's id would silently take that model over.
    Tiers of one model may share a router id only where one of them is `priority_on_router`."""
    owner: dict[str, str] = {}

    def claim(key: str, loc: tuple[str, ...], what: str) -> None:
        if key in owner:
            raise refuse(loc, f"{key!r} is already {owner[key]}")
        owner[key] = what

    for name in doc.models:
        for model_id in dict.fromkeys((name, _model_id(name, doc.model_prefix))):
            claim(model_id, ("models", name), f"the id of model {name}")
    for name, entry in doc.models.items():
        for alias in entry.aliases:
            claim(alias, ("models", name, "aliases"), f"an alias of model {name}")
    for name, entry in doc.models.items():
        own = {name, _model_id(name, doc.model_prefix)}
        for tname, price in entry.tiers.items():
            for alias in price.aliases:
                claim(alias, ("models", name, tname, "aliases"), f"an alias of {name} ({tname})")
            router = price.router
            tier = doc.tiers[tname]
            if router is None or tier.request.model != "router" or tier.priority_on_router:
                continue
            loc = ("models", name, tname, "router")
            if router in own:
                raise refuse(loc, f"{router!r} is the model's own id, not a router's")
            claim(router, loc, f"the router of model {name} ({tname})")


_Hit = tuple["ModelPrices", "str | None", "str | None"]


def _index(models: Iterable[ModelPrices]) -> dict[str, _Hit]:
    """Every id to (model, the tier it implies or None, the retired tier it named or None).

    Router ids of tiers on sale imply their tier; a retired tier's id names its model (the map
    gives the model as every retired router's successor). A router's last path part (its slug,
    as LiteLLM's short keys write it) resolves too, where no other id has it.
    """
    by_id: dict[str, _Hit] = {}
    slugs: dict[str, _Hit] = {}
    for mp in models:
        for key in (mp.name, mp.model_id, *mp.aliases):
            by_id[key] = (mp, None, None)
        for tiers, live in ((mp.tiers, True), (mp.retired_tiers, False)):
            for tname, tp in tiers.items():
                if tp.model_id == mp.model_id:
                    continue
                hit: _Hit = (mp, tname, None) if live else (mp, None, tname)
                for key in (tp.model_id, *tp.aliases):
                    by_id.setdefault(key, hit)
                    if "/routers/" in key:
                        slugs.setdefault(key.rsplit("/", 1)[-1], hit)
    for slug, hit in slugs.items():
        by_id.setdefault(slug, hit)
    return by_id


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
