"""``tiersel prices``: the price table's catalogue, per model and tier."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

from tiersel.cli.common import add_pricing_args, fail, pricing_from
from tiersel.errors import TierselError
from tiersel.pricing import ModelPrices, Pricing, TierPrice


def add_parser(subs: Any, help: str) -> None:
    p = subs.add_parser(
        "prices",
        help=help,
        description=(
            "Print the price table: its size, source and date, then for each model and tier the"
            " USD price per million input, cached input and output tokens, the premium over the"
            " model's standard price, and how the tier is requested. Current models by default;"
            " --all adds legacy (size-class prices with no current source) and retired ones."
            " --model shows one model whole: its ids, tiers, request forms and lifecycle."
            " --pricing and --overlay read another table or lay your own figures over it."
        ),
    )
    p.add_argument("--model", help="one model, by any id that names it")
    p.add_argument("--all", action="store_true", help="legacy and retired models too")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_pricing_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        pricing = pricing_from(args)
        if args.model:
            models = [pricing.model(args.model)]
        else:
            models = [m for m in pricing.models.values() if args.all or m.status == "current"]
    except TierselError as exc:
        return fail(str(exc))
    docs = [_model_doc(pricing, m) for m in models]
    if args.json:
        json.dump(
            {**_table_doc(pricing), "models": docs, "prices": _rows(docs)}, sys.stdout, indent=2
        )
        sys.stdout.write("\n")
        return 0
    print(_headline(pricing, len(docs), args.all or bool(args.model)))
    if args.model:
        _print_model(docs[0])
    else:
        _print_rows(_rows(docs), with_status=args.all)
    return 0


def _table_doc(pricing: Pricing) -> dict[str, Any]:
    statuses = Counter(m.status for m in pricing.models.values())
    return {
        "provider": pricing.provider,
        "source": pricing.source,
        "as_of": pricing.as_of,
        "built_from": dict(pricing.built_from),
        "catalogue": {
            "models": len(pricing.models),
            **{s: statuses.get(s, 0) for s in ("current", "legacy", "retired")},
            "unpriced": sum(1 for m in pricing.models.values() if not m.priced),
        },
    }


def _headline(pricing: Pricing, shown: int, everything: bool) -> str:
    c = _table_doc(pricing)["catalogue"]
    which = "" if everything else f"; {shown} current shown (--all for every model)"
    built = pricing.built_from
    source = (
        f"built {pricing.as_of} from {built['package']} {built['version']}'s price map and"
        f" {built.get('overlay', 'an overlay')}"
        if built
        else f"{pricing.source}, as of {pricing.as_of}"
    )
    return (
        f"{pricing.provider}: {c['models']} models ({c['current']} current, {c['legacy']} legacy,"
        f" {c['retired']} retired){which}; USD per 1M tokens; {source}"
    )


def _request_form(pricing: Pricing, price: TierPrice) -> dict[str, Any]:
    spec = pricing.tiers[price.tier]
    form: dict[str, Any] = {}
    if spec.uses_router:
        form["model"] = price.model_id
    if spec.body:
        form["body"] = dict(spec.body)
    if spec.headers:
        form["headers"] = dict(spec.headers)
    if spec.base_url:
        form["base_url"] = spec.base_url
    return form


def _tier_doc(pricing: Pricing, m: ModelPrices, name: str, price: TierPrice) -> dict[str, Any]:
    standard = m.tiers.get("standard") or m.retired_tiers.get("standard")
    premium = (
        round(price.input_per_token / standard.input_per_token, 4)
        if standard is not None and standard.input_per_token > 0
        else None
    )
    return {
        "tier": name,
        "input_usd_per_1m": round(price.input_per_1m, 6),
        "cached_input_usd_per_1m": round(price.cached_input_per_1m, 6),
        "output_usd_per_1m": round(price.output_per_1m, 6),
        "premium": premium,
        "model_id": price.model_id,
        "aliases": list(price.aliases),
        "request": _request_form(pricing, price),
        "opt_in": pricing.tiers[name].opt_in,
        "deprecation_date": str(price.deprecation_date) if price.deprecation_date else None,
        "as_of": price.as_of,
    }


def _model_doc(pricing: Pricing, m: ModelPrices) -> dict[str, Any]:
    return {
        "model": m.name,
        "model_id": m.model_id,
        "status": m.status,
        "deprecation_date": str(m.deprecation_date) if m.deprecation_date else None,
        "successor": m.successor,
        "ids": list(m.ids()),
        "max_input_tokens": m.max_input_tokens,
        "max_output_tokens": m.max_output_tokens,
        "source": m.source,
        "tiers": [_tier_doc(pricing, m, n, p) for n, p in m.tiers.items()],
        "retired_tiers": [_tier_doc(pricing, m, n, p) for n, p in m.retired_tiers.items()],
    }


def _rows(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row a model and tier; a model with no price has one row, its tier None."""
    unpriced: dict[str, Any] = {"tier": None, "request": {}, "premium": None}
    rows: list[dict[str, Any]] = []
    for d in docs:
        for t in d["tiers"] or [unpriced]:
            rows.append({"model": d["model"], "status": d["status"], **t})
    return rows


def _how(request: dict[str, Any], opt_in: bool) -> str:
    parts = [f"model={request['model']}"] if "model" in request else []
    parts += [f"{k}={v}" for k, v in request.get("body", {}).items()]
    parts += [f"{k}: {v}" for k, v in request.get("headers", {}).items()]
    parts += [f"at {request['base_url']}"] if "base_url" in request else []
    how = ", ".join(parts) or "(default)"
    return f"{how} (opt-in)" if opt_in else how


def _print_rows(rows: list[dict[str, Any]], *, with_status: bool) -> None:
    header: tuple[str, ...] = (
        "model",
        "tier",
        "input",
        "cached",
        "output",
        "premium",
        "requested by",
    )
    if with_status:
        header = ("model", "status", *header[1:])
    table: list[tuple[str, ...]] = []
    for r in rows:
        if r["tier"] is None:
            cells: tuple[str, ...] = (
                r["model"],
                "-",
                "",
                "",
                "",
                "",
                "no price: sent as written, never budgeted",
            )
        else:
            premium = f"{r['premium']:g}x" if r["premium"] is not None else ""
            cells = (
                r["model"],
                r["tier"],
                f"{r['input_usd_per_1m']:g}",
                f"{r['cached_input_usd_per_1m']:g}",
                f"{r['output_usd_per_1m']:g}",
                premium,
                _how(r["request"], r["opt_in"]),
            )
        table.append((cells[0], r["status"], *cells[1:]) if with_status else cells)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=False)]
    for line in (header, *table):
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())


def _print_model(d: dict[str, Any]) -> None:
    life = d["status"]
    if d["deprecation_date"]:
        life += f", deprecated {d['deprecation_date']}"
    if d["successor"]:
        life += f", successor {d['successor']}"
    print(f"model:      {d['model']} ({life})")
    print(f"ids:        {', '.join(d['ids'])}")
    limits = [
        f"{k.split('_')[1]} {d[k]:,}" for k in ("max_input_tokens", "max_output_tokens") if d[k]
    ]
    if limits:
        print(f"limits:     {', '.join(limits)} tokens")
    if d["source"]:
        print(f"source:     {d['source']}")
    if not d["tiers"]:
        print("tiers:      none priced: sent as written without a budget, refused under one")
    rows = [{"model": d["model"], "status": d["status"], **t} for t in d["tiers"]]
    if rows:
        print()
        _print_rows(rows, with_status=False)
    for t in d["retired_tiers"]:
        print(
            f"retired:    {t['tier']} ({t['model_id']}, {t['deprecation_date']}):"
            f" its id is sent as {d['model_id']}"
        )
