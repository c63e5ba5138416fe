"""``tiersel prices``: the price table, per model and tier."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tiersel.cli.common import add_pricing_args, fail, pricing_from
from tiersel.errors import TierselError


def add_parser(subs: Any, help: str) -> None:
    p = subs.add_parser(
        "prices",
        help=help,
        description=(
            "Print the price table: for each model and tier, the USD price per million input,"
            " cached input and output tokens, and the tier's priors (shed and error rates, time"
            " to first token, output tokens/s). --model shows one model; --pricing and"
            " --overlay read another table or lay your own figures over the bundled one."
        ),
    )
    p.add_argument("--model", help="only this model (short name, full id or router id)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_pricing_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        pricing = pricing_from(args)
        models = [pricing.model(args.model)] if args.model else list(pricing.models.values())
    except TierselError as exc:
        return fail(str(exc))
    rows: list[dict[str, Any]] = []
    for m in models:
        for name, price in m.tiers.items():
            spec = pricing.tiers[name]
            how = (
                f"model={price.model_id}"
                if spec.uses_router
                else ", ".join(f"{k}={v}" for k, v in spec.body.items()) or "(default)"
            )
            rows.append(
                {
                    "model": m.name,
                    "tier": str(name),
                    "input_usd_per_1m": round(price.input_per_1m, 6),
                    "cached_input_usd_per_1m": round(price.cached_input_per_1m, 6),
                    "output_usd_per_1m": round(price.output_per_1m, 6),
                    "model_id": price.model_id,
                    "requested_by": how,
                    "as_of": price.as_of,
                }
            )
    if args.json:
        doc = {"provider": pricing.provider, "source": pricing.source, "as_of": pricing.as_of}
        json.dump({**doc, "prices": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{pricing.provider} prices, USD per 1M tokens, as of {pricing.as_of} ({pricing.source})")
    header = ("model", "tier", "input", "cached", "output", "requested by")
    table = [
        (
            r["model"],
            r["tier"],
            f"{r['input_usd_per_1m']:g}",
            f"{r['cached_input_usd_per_1m']:g}",
            f"{r['output_usd_per_1m']:g}",
            r["requested_by"],
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=False)]
    for line in (header, *table):
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())
    return 0
