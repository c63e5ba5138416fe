"""A separate process for the shared-budget test (run as a script, not collected).

python budget_worker.py BASE_URL STORE_URL BUDGET_USD N
    N openai SDK calls, 4 at a time, through AsyncTierTransport to BASE_URL, on the budget at
    STORE_URL; prints how many were served and how many refused for the budget.
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
import openai

import tiersel
from tiersel.stores import open_async_ledger
from tiersel.wrap import AsyncTierTransport


async def main(base_url: str, store_url: str, budget: float, n: int) -> None:
    ledger = open_async_ledger(store_url, limit_usd=budget, name="shared")
    sel = tiersel.Selector(ledger=ledger, api_key="")
    http = httpx.AsyncClient(transport=AsyncTierTransport(sel), timeout=60)
    client = openai.AsyncOpenAI(
        api_key="sk-sim", base_url=base_url, http_client=http, max_retries=0
    )

    async def one(i: int) -> str:
        try:
            await client.chat.completions.create(
                model="kimi-k3",
                messages=[{"role": "user", "content": f"question {i}: " + "why? " * 200}],
                max_tokens=300,
            )
        except tiersel.BudgetExhausted:
            return "refused"
        except openai.APIStatusError as exc:
            return f"http_{exc.status_code}"
        return "served"

    outcomes: list[str] = []
    for wave in range(0, n, 4):
        outcomes += await asyncio.gather(*(one(i) for i in range(wave, min(n, wave + 4))))
    await http.aclose()
    await ledger.aclose()
    print(json.dumps({o: outcomes.count(o) for o in set(outcomes)}))


if __name__ == "__main__":
    url, store, budget, n = sys.argv[1:5]
    asyncio.run(main(url, store, float(budget), int(n)))
