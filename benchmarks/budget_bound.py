"""What does reserving the prompt at its bound cost? The share of a budget usable before the first
refusal, on the shipped traces, with the old estimate and with the bound.

    python benchmarks/budget_bound.py [--requests 3000] [--concurrency 16]

Each request of a shipped Azure trace (its real input and output token counts) becomes a chat
call to kimi-k3 through `Selector.asend`, ``concurrency`` at a time, on a `MemoryLedger` whose
limit is half of what the calls would cost. A fake provider bills each call its true tokens: the
trace's input tokens and all of ``max_tokens`` (the trace's output tokens). Prompts are made of
text of two kinds:

- English-like: about 4 bytes a token (an assumption: BPE tokenizers average about 4 bytes a
  token on English), which the 3-bytes-a-token estimate over-counts;
- digits ("1 2 3 ..."): 2 bytes a token, which the estimate under-counts.

Two ways to reserve: ``estimate`` (the prompt at 3 bytes a token, as reservations were before
the bound) and ``bound`` (one token a byte, `tiersel.dialects.input_token_bound`). For each it
prints the share of the budget spent when the first call was refused, the share spent at the
end, and whether spent passed the cap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Mapping
from typing import Any

import httpx

import tiersel
from tiersel.budget import MemoryLedger
from tiersel.clock import FakeClock
from tiersel.cost import charge
from tiersel.dialects import Dialect
from tiersel.pricing import load_pricing
from tiersel.replay import load_trace

MODEL = "kimi-k3"
TEXT = {"english": ("lorem ", 4.0), "digits": ("7 ", 2.0)}  # filler, bytes a true token


class EstimatingSelector(tiersel.Selector):
    """Reserves the prompt at its estimate, as tiersel did before the bound."""

    def call_for(self, body: Mapping[str, Any], dialect: Dialect) -> tuple[tiersel.Call, Any]:
        call, implied = super().call_for(body, dialect)
        return call.model_copy(update={"max_input_tokens": None}), implied


def provider(true_tokens: dict[str, int]) -> httpx.MockTransport:
    async def handler(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        usage = {
            "prompt_tokens": true_tokens[sent["metadata"]["id"]],
            "completion_tokens": sent["max_tokens"],
        }
        await asyncio.sleep(0)
        choice = {"index": 0, "message": {"role": "assistant", "content": "."}}
        return httpx.Response(
            200, json={"id": "x", "model": sent["model"], "choices": [choice], "usage": usage}
        )

    return httpx.MockTransport(handler)


async def run(
    trace: str, kind: str, mode: str, requests: int, concurrency: int
) -> tuple[float, float, float]:
    filler, bytes_a_token = TEXT[kind]
    calls = load_trace(trace).requests[:requests]
    bodies, true_tokens = [], {}
    for i, r in enumerate(calls):
        text = filler * max(1, round(r.input_tokens * bytes_a_token / len(filler)))
        bodies.append(
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": text}],
                "max_tokens": max(1, r.output_tokens),
                "metadata": {"id": str(i)},
            }
        )
        true_tokens[str(i)] = r.input_tokens
    prices = load_pricing().model(MODEL)
    total = sum(
        charge(prices, "standard", true_tokens[b["metadata"]["id"]], 0, b["max_tokens"])
        for b in bodies
    )
    budget = total / 2
    ledger = MemoryLedger(budget)
    cls = EstimatingSelector if mode == "estimate" else tiersel.Selector
    sel = cls(
        clock=FakeClock(),
        ledger=ledger,
        async_transport=provider(true_tokens),
        api_key="",
        requirements=tiersel.Requirements(tiers=("standard",)),
    )
    first_refusal: float | None = None
    queue = list(reversed(bodies))

    async def worker() -> None:
        nonlocal first_refusal
        while queue:
            body = queue.pop()
            try:
                await sel.asend(body)
            except tiersel.BudgetExhausted:
                if first_refusal is None:
                    first_refusal = ledger.state(0.0).spent_usd
                with contextlib.suppress(IndexError):
                    queue.clear()  # stop at the first refusal, as a capped job would

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    spent = ledger.state(0.0).spent_usd
    at_refusal = first_refusal if first_refusal is not None else spent
    return at_refusal / budget, spent / budget, budget


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    print(
        f"{args.requests} requests a trace, {args.concurrency} at a time, budget = half their cost;"
        " share of the budget spent at the first refusal / at the end"
    )
    for trace in ("azure-code", "azure-conv"):
        for kind in TEXT:
            row = []
            for mode in ("estimate", "bound"):
                share, end, budget = asyncio.run(
                    run(trace, kind, mode, args.requests, args.concurrency)
                )
                over = "  OVER THE CAP" if end > 1 + 1e-9 else ""
                row.append(f"{mode} {share:6.1%} / {end:6.1%}{over}")
            print(f"  {trace:<10} {kind:<8} (budget ${budget:.2f}): " + ";  ".join(row))


if __name__ == "__main__":
    main()
