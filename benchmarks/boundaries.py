"""How many module boundaries one call through `TierTransport` crosses, counted, not estimated.

    python benchmarks/boundaries.py

One non-streamed chat completion through ``httpx.Client(transport=TierTransport(Selector()))``
over an ``httpx.MockTransport`` (after three warm-up calls), traced with ``sys.setprofile``:
every call into a tiersel function whose caller (the nearest tiersel frame, or httpx's client)
is in another module is one crossing. Printed twice: by module (``tiersel.engine.flow``), and by
room, the folders and the few top-level modules a newcomer sees (``engine``, ``http``, ``wrap``,
``policy`` with ``schedule`` and ``decision``, ``signals``, ``pricing`` with ``cost`` and
``tiers``, ``dialects``, ``clock``, ``selector``).

The default clock's ``now`` is ``time.monotonic`` itself, so its readings enter no tiersel
function and are not counted; under a `tiersel.clock.FakeClock` they would be (engine -> clock).
"""

from __future__ import annotations

import collections
import sys
from types import FrameType

import httpx

import tiersel
from tiersel.wrap import TierTransport

COMPLETION = (
    b'{"id":"c","object":"chat.completion","choices":[],'
    b'"usage":{"prompt_tokens":14,"completion_tokens":3}}'
)
BODY = {
    "model": "accounts/fireworks/models/kimi-k3",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 16,
}
URL = "https://api.fireworks.ai/inference/v1/chat/completions"
ENTRY = ("httpx._client", "httpx._transports.base")


def answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "application/json"}, content=COMPLETION)


def module(frame: FrameType) -> str:
    name: str = frame.f_globals.get("__name__", "")
    return name


def trace_one_call() -> tuple[set[str], collections.Counter[tuple[str, str]]]:
    """The tiersel modules one call enters, and its crossings (caller, callee) counted."""
    client = httpx.Client(
        transport=TierTransport(tiersel.Selector(api_key=""), httpx.MockTransport(answer))
    )
    for _ in range(3):
        client.post(URL, json=BODY)
    entered: set[str] = set()
    edges: collections.Counter[tuple[str, str]] = collections.Counter()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        callee = module(frame)
        if event != "call" or not callee.startswith("tiersel"):
            return
        caller = frame.f_back
        while caller is not None and not (
            module(caller).startswith("tiersel") or module(caller) in ENTRY
        ):
            caller = caller.f_back
        entered.add(callee)
        source = module(caller) if caller is not None else "?"
        if source != callee:
            edges[(source, callee)] += 1

    sys.setprofile(profile)
    client.post(URL, json=BODY)
    sys.setprofile(None)
    return entered, edges


ROOMS = {"schedule": "policy", "decision": "policy", "cost": "pricing", "tiers": "pricing"}


def room(name: str) -> str:
    parts = name.split(".")
    if parts[0] != "tiersel":
        return parts[0]
    top = parts[1] if len(parts) > 1 else "tiersel"
    return ROOMS.get(top, top)


def show(title: str, entered: set[str], edges: collections.Counter[tuple[str, str]]) -> None:
    print(f"{title}: {len(entered)} entered; {sum(edges.values())} calls cross from one to")
    print(f"another, over {len(edges)} distinct boundaries (caller -> callee):")
    for (a, b), n in sorted(edges.items(), key=lambda x: (-x[1], x[0])):
        print(f"  {n:3d}  {a} -> {b}")


def main() -> None:
    entered, edges = trace_one_call()
    show("modules", entered, edges)
    rooms: collections.Counter[tuple[str, str]] = collections.Counter()
    for (a, b), n in edges.items():
        if room(a) != room(b):
            rooms[(room(a), room(b))] += n
    show("rooms", {room(m) for m in entered}, rooms)


if __name__ == "__main__":
    main()
