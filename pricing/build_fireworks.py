"""Build pricing/fireworks.yaml from LiteLLM's price map and the hand-kept overlay.

    python pricing/build_fireworks.py [--map PATH] [--date YYYY-MM-DD] [--out PATH] [--check]

The map is ``litellm/model_prices_and_context_window_backup.json`` from the litellm version the
overlay pins (``map.version``; its SHA-256 must match ``map.sha256``). By default it is read from
the installed litellm distribution (a dev dependency pinned to that version), without importing
litellm. ``--date`` is the build date recorded in the table and used to tell retired models
(a deprecation date on or before it); it defaults to today, and ``--check`` uses the committed
table's own date, so a rebuild of an unchanged map and overlay is identical byte for byte.

What the table holds, per model (see pricing/fireworks_overlay.yaml for the facts laid over it):
- every chat model the map lists for Fireworks, by its short name (``kimi-k3``), with each tier it
  sells: standard and priority from the model's own entry; fast, fast_us, spot, ultrafast, us and
  us_priority from router entries named ``<model><suffix>`` (or ``spot-<model>``);
- ``status``: ``retired`` (a deprecation date on or before the build date), ``current`` (the map
  or the overlay cites a Fireworks source), or ``legacy`` (a size-class price with no source);
- ``deprecation_date`` and ``successor`` where the map dates it; ``max_input_tokens`` and
  ``max_output_tokens``; ``aliases`` (other ids that name it: LiteLLM's short forms and
  ``alias_of`` entries such as ``kimi-latest``, and the overlay's ids);
- models the map lists with no price (Fireworks' own ``routers/auto``) with no tiers: tiersel
  passes them through unpriced, and refuses them under a budget.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
OVERLAY = HERE / "fireworks_overlay.yaml"
TABLE = HERE / "fireworks.yaml"
SCHEMA = 2
PER_1M = 1_000_000
# The map's fields for a tier's three prices, by the suffix its priority variant adds.
PRICE_FIELDS = {
    "input": "input_cost_per_token",
    "cached_input": "cache_read_input_token_cost",
    "output": "output_cost_per_token",
}


class BuildError(Exception):
    """The map or the overlay cannot make a table; the message says which and why."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--map", type=Path, help="the map file (default: the installed litellm's)")
    parser.add_argument("--date", help="build date, YYYY-MM-DD (default: today)")
    parser.add_argument("--out", type=Path, default=TABLE, help=f"default: {TABLE}")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if --out is not what a build makes"
    )
    args = parser.parse_args(argv)
    overlay = yaml.safe_load(OVERLAY.read_text(encoding="utf-8"))
    try:
        map_path = args.map or installed_map(overlay["map"])
        if args.date is not None and not args.date:
            raise BuildError("--date is empty (give YYYY-MM-DD, or leave it out for today)")
        date = args.date or (committed_date(args.out) if args.check else None)
        text = build(read_map(map_path, overlay["map"]), overlay, date or today())
    except BuildError as exc:
        print(f"build_fireworks: error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if not args.out.is_file():
            print(f"{args.out}: missing (no table to compare with a rebuild)")
            return 1
        same = args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'differs from a rebuild'}")
        return 0 if same else 1
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(
            f"build_fireworks: error: cannot write {args.out}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    print(f"wrote {args.out}")
    return 0


def today() -> str:
    return datetime.date.today().isoformat()


def committed_date(table: Path) -> str | None:
    if not table.is_file():
        return None
    doc = yaml.safe_load(table.read_text(encoding="utf-8"))
    return str(doc.get("as_of")) if isinstance(doc, dict) else None


def installed_map(pin: dict[str, Any]) -> Path:
    """The map file inside the installed litellm, which must be the pinned version."""
    from importlib import metadata

    try:
        dist = metadata.distribution(pin["package"])
    except metadata.PackageNotFoundError:
        raise BuildError(
            f"{pin['package']} is not installed: pip install {pin['package']}=={pin['version']}"
            " (a dev dependency), or pass --map"
        ) from None
    if dist.version != pin["version"]:
        raise BuildError(
            f"installed {pin['package']} is {dist.version}, the overlay pins {pin['version']}:"
            " install the pinned version, or change the pin (version and sha256) and rebuild"
        )
    return Path(str(dist.locate_file(pin["file"])))


def read_map(path: Path, pin: dict[str, Any]) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BuildError(f"cannot read the map {path}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != pin["sha256"]:
        raise BuildError(
            f"the map {path} has SHA-256 {digest}, the overlay pins {pin['sha256']}"
            f" ({pin['package']} {pin['version']})"
        )
    entries: dict[str, Any] = json.loads(data)
    return entries


def per_1m(value: float) -> float | int:
    """USD per token as USD per 1M tokens, without float noise (3.75e-06 -> 3.75)."""
    out = round(value * PER_1M, 9)
    return int(out) if out == int(out) else out


def prices(entry: dict[str, Any], suffix: str = "") -> dict[str, Any] | None:
    """A tier's prices from a map entry (``suffix`` "_priority" for its priority variant)."""
    got = {name: entry.get(f"{field}{suffix}") for name, field in PRICE_FIELDS.items()}
    if got["input"] is None or got["output"] is None:
        return None
    return {name: per_1m(v) for name, v in got.items() if v is not None}


class Catalogue:
    """The map's Fireworks chat entries, grouped into models and their tiers."""

    def __init__(self, entries: dict[str, Any], overlay: dict[str, Any], date: str) -> None:
        self.overlay = overlay
        self.date = date
        self.key_prefix: str = overlay["map"]["key_prefix"]
        self.model_prefix: str = overlay["model_prefix"]
        self.router_prefix: str = overlay["router_prefix"]
        self.entries = {
            k[len(self.key_prefix) :]: v
            for k, v in entries.items()
            if k.startswith(self.key_prefix) and v.get("mode") == "chat"
        }
        self.aliases_of = {
            k[len(self.key_prefix) :]: v["alias_of"][len(self.key_prefix) :]
            for k, v in entries.items()
            if k.startswith(self.key_prefix) and "alias_of" in v
        }
        self.models: dict[str, dict[str, Any]] = {}
        self.owner: dict[str, tuple[str, str | None]] = {}  # full id -> (model, tier or None)

    def build(self) -> dict[str, dict[str, Any]]:
        for full, entry in sorted(self.entries.items()):
            if full.startswith(self.model_prefix):
                self.add_model(full[len(self.model_prefix) :], full, entry)
        for full, entry in sorted(self.entries.items()):
            if full.startswith(self.router_prefix):
                self.add_router(full, entry)
        self.add_short_aliases()
        self.apply_overlay()
        return {name: self.ordered(m) for name, m in sorted(self.models.items())}

    def lifecycle(self, entry: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "deprecation_date" in entry:
            out["deprecation_date"] = str(entry["deprecation_date"])
        if "successor_model" in entry:
            # An id of the map ("fireworks_ai/accounts/fireworks/models/glm-5p3"), or a name
            # the map gives as it is ("Nemotron Super VL").
            successor = str(entry["successor_model"]).removeprefix(self.key_prefix)
            out["successor"] = self.short(successor)
        return out

    def status(self, entry: dict[str, Any]) -> str:
        date = entry.get("deprecation_date")
        if date is not None and str(date) <= self.date:
            return "retired"
        return "current" if "source" in entry else "legacy"

    def short(self, full: str) -> str:
        return full[len(self.model_prefix) :] if full.startswith(self.model_prefix) else full

    def add_model(self, name: str, full: str, entry: dict[str, Any]) -> None:
        model: dict[str, Any] = {"status": self.status(entry), **self.lifecycle(entry)}
        for field in ("max_input_tokens", "max_output_tokens"):
            if isinstance(entry.get(field), int):
                model[field] = entry[field]
        if "source" in entry:
            model["source"] = entry["source"]
        for tier, suffix in (("standard", ""), ("priority", "_priority")):
            got = prices(entry, suffix)
            if got is not None:
                model[tier] = got
        self.models[name] = model
        self.owner[full] = (name, None)

    def router_tier(self, slug: str) -> tuple[str, str] | None:
        """The model and tier a router's slug names, by its ending or start."""
        for suffix, tier in self.overlay["router_suffixes"].items():
            if slug.endswith(suffix) and slug[: -len(suffix)] in self.models:
                return slug[: -len(suffix)], tier
        for prefix, tier in self.overlay["router_prefixes"].items():
            if slug.startswith(prefix) and slug[len(prefix) :] in self.models:
                return slug[len(prefix) :], tier
        return None

    def add_router(self, full: str, entry: dict[str, Any]) -> None:
        slug = full[len(self.router_prefix) :]
        named = self.router_tier(slug)
        standard = prices(entry)
        if named is None or standard is None:
            # A router of its own (Fireworks' model routers) or one with no base model: a model
            # by its full id, with what price it has.
            model: dict[str, Any] = {"status": self.status(entry), **self.lifecycle(entry)}
            if "source" in entry:
                model["source"] = entry["source"]
            if standard is not None:
                model["standard"] = standard
            self.models[full] = model
            self.owner[full] = (full, None)
            return
        name, tier = named
        tier_doc: dict[str, Any] = {"router": full, **standard, **self.lifecycle(entry)}
        self.models[name][tier] = tier_doc
        self.owner[full] = (name, tier)
        priority = prices(entry, "_priority")
        if priority is not None:
            if f"{tier}_priority" not in self.overlay["tiers"]:
                raise BuildError(
                    f"{full} has priority prices, the overlay has no {tier}_priority tier"
                )
            self.models[name][f"{tier}_priority"] = {
                "router": full,
                **priority,
                **self.lifecycle(entry),
            }

    def add_short_aliases(self) -> None:
        """LiteLLM's short keys (``kimi-k3``, ``kimi-k3-fast``) and ``alias_of`` entries."""
        for short in sorted(self.entries):
            if short.startswith("accounts/"):
                continue
            target = next(
                (
                    p + short
                    for p in (self.model_prefix, self.router_prefix)
                    if p + short in self.owner
                ),
                None,
            )
            if target is None:
                raise BuildError(f"the map's {self.key_prefix}{short} matches no model or router")
            name, tier = self.owner[target]
            if tier is None and short != name:
                self.models[name].setdefault("aliases", []).append(short)
            # A router's short id (its slug) resolves without an alias.
        for alias, target in sorted(self.aliases_of.items()):
            name, tier = self.owner[target]
            if tier is not None:
                raise BuildError(
                    f"the map's alias {alias} names a router; only models are expected"
                )
            self.models[name].setdefault("aliases", []).append(alias)

    def apply_overlay(self) -> None:
        for alias in self.overlay.get("aliases", []):
            model = self.models.get(alias["model"])
            if model is None or alias["tier"] not in model:
                raise BuildError(
                    f"overlay alias {alias['id']}: no {alias['model']} {alias['tier']}"
                )
            model[alias["tier"]].setdefault("aliases", []).append(alias["id"])
        for name, fix in self.overlay.get("corrections", {}).items():
            model = self.models.get(name)
            if model is None:
                raise BuildError(f"overlay correction of {name}: the map has no such model")
            for tier in fix.get("drop", []):
                model.pop(tier, None)
            for tier in self.overlay["tiers"]:
                if tier in fix:
                    model[tier] = dict(fix[tier])
            if "status" in fix and model["status"] != "retired":
                model["status"] = fix["status"]
            model["corrected"] = " ".join(str(fix["source"]).split())

    def ordered(self, model: dict[str, Any]) -> dict[str, Any]:
        meta = [k for k in model if k not in self.overlay["tiers"]]
        tiers = [t for t in self.overlay["tiers"] if t in model]
        return {k: model[k] for k in meta + tiers}


def build(entries: dict[str, Any], overlay: dict[str, Any], date: str) -> str:
    try:
        datetime.date.fromisoformat(date)
    except ValueError:
        raise BuildError(f"--date {date!r} is not a date (YYYY-MM-DD)") from None
    models = Catalogue(entries, overlay, date).build()
    pin = overlay["map"]
    tiers = {
        name: {k: v for k, v in spec.items() if k != "source"}
        for name, spec in overlay["tiers"].items()
    }
    table = {
        "schema": SCHEMA,
        "provider": overlay["provider"],
        "source": f"LiteLLM {pin['version']} price map + pricing/fireworks_overlay.yaml",
        "as_of": date,
        "built_from": {
            "package": pin["package"],
            "version": pin["version"],
            "file": pin["file"],
            "sha256": pin["sha256"],
            "overlay": "pricing/fireworks_overlay.yaml",
            "tool": "pricing/build_fireworks.py",
        },
        "currency": "USD",
        "model_prefix": overlay["model_prefix"],
        "id_prefixes": [pin["key_prefix"]],
        "cached_input_ratio": overlay["cached_input_ratio"],
        "tiers": tiers,
        "models": models,
    }
    head = (
        "# Fireworks serverless prices, USD per 1M tokens, per serving tier. BUILT, do not\n"
        "# edit: edit pricing/fireworks_overlay.yaml, then run python pricing/build_fireworks.py.\n"
        f"# From LiteLLM {pin['version']}'s price map ({pin['licence']})\n"
        "# and the overlay's checked Fireworks facts. `status` is current, legacy (a size-class\n"
        "# price, no current source) or retired (its deprecation date has passed). Tiers are\n"
        "# data: `request` says how a tier is asked for, `priors` what the policy assumes before\n"
        "# any traffic is seen; `opt_in` tiers are chosen only when a call's tiers name them.\n"
    )
    body = yaml.safe_dump(
        table, sort_keys=False, allow_unicode=True, width=100, default_flow_style=None
    )
    return head + body


if __name__ == "__main__":
    sys.exit(main())
