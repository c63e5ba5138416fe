"""A separate process for the cross-process signals test (run as a script, not collected).

python signal_worker.py send URL STORE N   # N calls on standard only; prints their statuses
python signal_worker.py decide STORE       # prints the plan a deadline call gets, and why
"""

from __future__ import annotations

import json
import sys

from tiersel import Call, Requirements, Selector
from tiersel.stores import close_store, open_signal_store

BODY = {
    "model": "accounts/fireworks/models/kimi-k3",
    "messages": [{"role": "user", "content": "summarise the news in one line"}],
    "max_tokens": 100,
}


def send(base_url: str, store_url: str, n: int) -> None:
    store = open_signal_store(store_url)
    with Selector(signals=store, base_url=base_url, api_key="sk-sim", max_attempts=1) as sel:
        statuses = []
        for _ in range(n):
            # A short deadline: no waiting out a cooldown, just record what standard does.
            need = Requirements(tiers=["standard"], deadline_s=1.0, best_effort=True)
            result = sel.send(BODY, requirements=need)
            statuses.append(result.reply.status if result.reply is not None else 0)
    close_store(store)
    print(json.dumps({"statuses": statuses}))


def decide(store_url: str) -> None:
    store = open_signal_store(store_url)
    sel = Selector(signals=store, api_key="")
    call = Call(model="kimi-k3", input_tokens=500, max_output_tokens=200)
    decision = sel.decide(call, Requirements(deadline_s=20, reliability=0.95))
    close_store(store)
    plan = [step.tier.value for step in decision.plan]
    print(json.dumps({"plan": plan, "reasons": [str(r) for r in decision.reasons]}))


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        decide(sys.argv[2])
