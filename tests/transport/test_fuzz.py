"""A few thousand mutated request bodies and headers through the wrapper: no uncaught exception,
every refusal a 4xx naming the problem, and nothing upstream that carries a hint header or asks
for priority on a fast router."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import httpx
import pytest

import tiersel
from tiersel.errors import TierselError
from tiersel.wrap import TierTransport

SEED_BODY: dict[str, Any] = {
    "model": "accounts/fireworks/models/kimi-k3",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
    ],
    "max_tokens": 64,
    "temperature": 0.5,
    "stream": False,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
}
HEADERS = {
    "x-tiersel-deadline": "10",
    "x-tiersel-reliability": "0.9",
    "x-tiersel-tiers": "standard,priority",
    "x-tiersel-max-cost": "0.5",
}
ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**64,
    1e308,
    float("nan"),
    "",
    "\ud800",
    "x" * 5000,
    [],
    {},
    [[[[["deep"]]]]],
    {"a": {"b": {"c": None}}},
    "accounts/fireworks/routers/kimi-k3-fast",
    "priority",
]
ODD_HEADER_VALUES = ["", "-5", "nan", "inf", "1e400", "0", "abc", "1_0", "standard,bogus", " 3 "]


def mutate(rng: random.Random, body: dict[str, Any]) -> Any:
    doc: Any = copy.deepcopy(body)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        if kind == 0 and isinstance(doc, dict):  # a top-level field gets an odd value
            doc[rng.choice([*doc.keys(), "service_tier", "max_completion_tokens", "system"])] = (
                rng.choice(ODD_VALUES)
            )
        elif kind == 1 and isinstance(doc, dict):  # a field goes
            if doc:
                doc.pop(rng.choice(list(doc.keys())))
        elif kind == 2 and isinstance(doc, dict) and isinstance(doc.get("messages"), list):
            msgs = doc["messages"]
            if msgs:
                m = rng.choice(msgs)
                if isinstance(m, dict):
                    m[rng.choice(["role", "content", "name", "tool_calls"])] = rng.choice(
                        ODD_VALUES
                    )
                else:
                    msgs.append(rng.choice(ODD_VALUES))
        elif kind == 3:  # the whole body is something else
            doc = rng.choice(ODD_VALUES)
        elif kind == 4 and isinstance(doc, dict):  # priority on a fast router
            doc["model"] = "accounts/fireworks/routers/kimi-k3-fast"
            doc["service_tier"] = "priority"
        elif kind == 5 and isinstance(doc, dict):
            doc["messages"] = rng.choice(ODD_VALUES)
    return doc


def encode(rng: random.Random, doc: Any) -> bytes:
    try:
        raw = json.dumps(doc, allow_nan=True).encode()
    except (TypeError, ValueError):
        raw = b"{"
    if rng.random() < 0.1:  # cut off, or bytes that are not UTF-8
        raw = raw[: rng.randrange(len(raw) + 1)] if rng.random() < 0.5 else raw + b"\xff\xfe"
    return raw


@pytest.mark.parametrize("budget", [None, 0.05])
def test_mutated_requests_get_an_answer_or_a_clear_refusal(budget: float | None) -> None:
    rng = random.Random(20261203 if budget is None else 7)
    upstream: list[httpx.Request] = []

    def provider(request: httpx.Request) -> httpx.Response:
        upstream.append(request)
        sent = json.loads(request.content)
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}}
        return httpx.Response(
            200, json={"id": "x", "model": sent.get("model"), "choices": [choice], "usage": usage}
        )

    ledger = tiersel.MemoryLedger(budget) if budget is not None else None
    sel = tiersel.Selector(api_key="", ledger=ledger)
    outcomes: dict[str, int] = {}
    with httpx.Client(
        transport=TierTransport(sel, httpx.MockTransport(provider), refusals="respond")
    ) as client:
        for _ in range(1500):
            raw = encode(rng, mutate(rng, SEED_BODY))
            headers = {
                k: (rng.choice(ODD_HEADER_VALUES) if rng.random() < 0.3 else v)
                for k, v in HEADERS.items()
                if rng.random() < 0.7
            }
            path = rng.choice(["/v1/chat/completions", "/v1/messages"])
            try:
                response = client.post(f"http://x{path}", content=raw, headers=headers)
            except TierselError as exc:  # raised only for the modes that raise; not here
                pytest.fail(f"raised {exc!r} in respond mode")
            status = response.status_code
            outcomes[str(status)] = outcomes.get(str(status), 0) + 1
            if status >= 400:
                assert 400 <= status < 500, (status, response.text)
                message = response.json()["error"]["message"]
                assert message and len(message) < 2000
    assert outcomes.get("200", 0) > 50, outcomes  # the fuzzing did not refuse everything
    for request in upstream:
        assert not any(k.lower().startswith("x-tiersel-") for k in request.headers)
        sent = json.loads(request.content)
        assert not ("/routers/" in sent["model"] and "service_tier" in sent), sent
    if ledger is not None:
        state = ledger.state(0.0)
        assert state.spent_usd <= budget and state.reserved_usd == 0  # type: ignore[operator]
