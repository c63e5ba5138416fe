"""A few thousand mutated request bodies and headers through the wrapper: no uncaught exception,
every refusal a 4xx naming the problem, and nothing upstream that carries a hint header or asks
for priority on a fast router."""

from __future__ import annotations

import copy
import json
import math
import random
from typing import Any

import httpx
import pytest

import tiersel
from tiersel.budget import MemoryLedger
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


def odd(rng: random.Random) -> Any:
    """One of `ODD_VALUES`, a copy: a mutation must not change the list (or make a cycle)."""
    return copy.deepcopy(rng.choice(ODD_VALUES))


def mutate(rng: random.Random, body: dict[str, Any]) -> Any:
    doc: Any = copy.deepcopy(body)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        if kind == 0 and isinstance(doc, dict):  # a top-level field gets an odd value
            doc[rng.choice([*doc.keys(), "service_tier", "max_completion_tokens", "system"])] = odd(
                rng
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
                    msgs.append(odd(rng))
        elif kind == 3:  # the whole body is something else
            doc = odd(rng)
        elif kind == 4 and isinstance(doc, dict):  # priority on a fast router
            doc["model"] = "accounts/fireworks/routers/kimi-k3-fast"
            doc["service_tier"] = "priority"
        elif kind == 5 and isinstance(doc, dict):
            doc["messages"] = odd(rng)
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

    ledger = MemoryLedger(budget) if budget is not None else None
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


def test_mutated_bodies_through_selector_send_and_the_simulator() -> None:
    """`Selector.send` refuses with a `TierselError` or sends; the simulator answers every body
    it is sent with a status, never a 500 of its own making."""
    from tiersel.clock import FakeClock
    from tiersel.sim import SimTransport

    rng = random.Random(11)
    clock = FakeClock()
    sim = SimTransport(scenario="calm", clock=clock)
    sel = tiersel.Selector(api_key="", clock=clock, transport=sim, ledger=MemoryLedger(1.0))
    sent = refused = 0
    # The openai SDK's timeout, not httpx's 5 s: the simulator honours a client's, as a server.
    with httpx.Client(transport=sim, timeout=600.0) as raw_client:
        for _ in range(1000):
            doc = mutate(rng, SEED_BODY)
            try:
                result = sel.send(doc)  # type: ignore[arg-type]
            except TierselError:
                refused += 1
            else:
                sent += 1
                assert result.reply is not None
            response = raw_client.post(
                "http://sim/inference/v1/chat/completions", content=encode(rng, doc)
            )
            assert response.status_code != 500, response.text
    assert sent > 50 and refused > 50, (sent, refused)
    state = sel.ledger.state(clock.now())  # type: ignore[union-attr]
    assert state.reserved_usd == 0


def test_mutated_lines_through_a_batch_job(tmp_path: Any) -> None:
    """Every line of a batch of mutated ones gets its row: sent, or invalid with its reason."""
    from tiersel.batch import run_batch
    from tiersel.clock import FakeClock
    from tiersel.sim import AsyncSimTransport

    rng = random.Random(5)
    src = tmp_path / "in.jsonl"
    with open(src, "wb") as f:
        for i in range(2000):
            doc = mutate(rng, SEED_BODY)
            line: Any = {"custom_id": f"c{i}", "body": doc} if rng.random() < 0.8 else doc
            raw = encode(rng, line).replace(b"\n", b" ")
            f.write(raw + b"\n")
    clock = FakeClock()
    summary = run_batch(
        src,
        tmp_path / "out.jsonl",
        budget_usd=0.5,
        transport=AsyncSimTransport(scenario="calm", clock=clock),
        clock=clock,
        api_key="",
        progress=False,
    )
    assert summary.complete and summary.rows == summary.lines
    assert summary.calls_ok > 50 and summary.calls_invalid > 50
    assert summary.spent_usd <= 0.5
    with open(tmp_path / "out.jsonl", encoding="utf-8") as f:
        for raw_row in f:
            row = json.loads(raw_row)
            if row["status"] == "invalid":
                assert row["error"]["message"].startswith(f"line {row['line']}: ")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("cyclic", "Circular reference"),
        (
            {"model": "accounts/fireworks/models/kimi-k3", "messages": [], "temperature": math.nan},
            "Out of range float",
        ),
        ({"model": "accounts/fireworks/models/kimi-k3", "messages": [{1, 2}]}, "set"),
        (["not", "an", "object"], "must be a JSON object"),
    ],
)
def test_selector_send_refuses_a_body_json_cannot_carry(body: Any, problem: str) -> None:
    """A Python body can hold what a parsed request cannot; it is refused before any send (a
    cycle once hung the token count)."""
    from tiersel.clock import FakeClock
    from tiersel.errors import RequestNotUnderstood
    from tiersel.sim import SimTransport

    if body == "cyclic":
        body = {"model": "accounts/fireworks/models/kimi-k3", "messages": []}
        body["messages"].append({"role": "user", "content": body})
    clock = FakeClock()
    sim = SimTransport(scenario="calm", clock=clock)
    sel = tiersel.Selector(api_key="", clock=clock, transport=sim, ledger=MemoryLedger(1.0))
    with pytest.raises(RequestNotUnderstood, match=problem):
        sel.send(body)
    assert sim.stats()["requests"] == 0
    assert sel.ledger.state(clock.now()).reserved_usd == 0  # type: ignore[union-attr]
