"""The demo behind ``tiersel demo``: one mixed workload, three ways of buying tiers, side by side.

A workload of interactive calls (short answers, tight deadlines) and background calls (long
answers, loose deadlines) goes through the real openai SDK three times: with tiersel choosing
each call's tier, always on standard, and always on priority (the two baselines are tiersel's
own transport with a fixed-tier policy, so retries and measurement are the same in every arm).
For each arm the demo prints which tiers served, what the calls cost, and how many met their
deadline.

By default it runs against the simulator (`tiersel.sim`) served over real HTTP on loopback, in
the ``peak`` scenario (standard heavily shed), with simulated time running fast: no API key and
no network. ``tiersel demo --live`` sends the same workload, smaller, to the real Fireworks API
with ``$FIREWORKS_API_KEY`` (it costs a little money); the code path is the same.

Times are simulated seconds: a `ScaledClock` runs the selector on the simulator's time, so
deadlines, latencies and backoffs mean the same as they would at full speed.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2

from tiersel.clock import Clock
from tiersel.errors import TierselError
from tiersel.http.context import requirements
from tiersel.policy import CheapestFeasible, FixedTier, Policy
from tiersel.selector import Selector
from tiersel.wrap.record import CallRecord
from tiersel.wrap.transport import AsyncTierTransport

__all__ = [
    "ARMS",
    "ArmResult",
    "CallOutcome",
    "DemoCall",
    "format_report",
    "run_arm",
    "workload",
]

ARMS: tuple[tuple[str, Callable[[], Policy]], ...] = (
    ("tiersel", CheapestFeasible),
    ("always standard", lambda: FixedTier("standard")),
    ("always priority", lambda: FixedTier("priority")),
)
"""The demo's arms: a name and the policy each runs with."""


@dataclass(frozen=True, slots=True)
class DemoCall:
    """One call of the workload: when it starts (seconds into the run), its size, its deadline."""

    kind: str  # "interactive" or "background"
    at_s: float
    prompt_words: int
    max_tokens: int
    deadline_s: float
    reliability: float | None = None


def workload(
    n: int, *, span_s: float = 150.0, seed: int = 0, interactive_share: float = 0.5
) -> list[DemoCall]:
    """``n`` calls spread evenly over ``span_s`` seconds, interactive and background mixed.

    Interactive: a short prompt, up to 60 output tokens, an 8 s deadline to meet with
    probability 0.95 (a person is waiting).
    Background: a long prompt, up to 400 output tokens, a 10 minute deadline (a batch job).
    """
    if n < 1:
        raise ValueError(f"the workload needs at least one call, got {n}")
    rng = random.Random(seed)
    calls = []
    for i in range(n):
        at = span_s * i / n
        if rng.random() < interactive_share:
            calls.append(DemoCall("interactive", at, rng.randint(150, 400), 60, 8.0, 0.95))
        else:
            calls.append(DemoCall("background", at, rng.randint(1500, 3000), 400, 600.0))
    return calls


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """How one call of an arm went, seen from the caller (times in the selector's seconds)."""

    call: DemoCall
    ok: bool
    elapsed_s: float
    record: CallRecord | None
    error: str = ""

    @property
    def met_deadline(self) -> bool:
        return self.ok and self.elapsed_s <= self.call.deadline_s

    @property
    def tier(self) -> str:
        return str(self.record.tier) if self.record is not None and self.record.tier else "-"

    @property
    def cost_usd(self) -> float:
        return self.record.cost_usd if self.record is not None else 0.0


@dataclass(slots=True)
class ArmResult:
    """An arm's outcomes, in workload order."""

    name: str
    outcomes: list[CallOutcome] = field(default_factory=list)

    @property
    def cost_usd(self) -> float:
        return sum(o.cost_usd for o in self.outcomes)

    def met(self, kind: str) -> tuple[int, int]:
        of_kind = [o for o in self.outcomes if o.call.kind == kind]
        return sum(o.met_deadline for o in of_kind), len(of_kind)

    def tiers(self, kind: str) -> Counter[str]:
        return Counter(o.tier for o in self.outcomes if o.call.kind == kind and o.ok)


def _messages(call: DemoCall, index: int) -> list[dict[str, str]]:
    words = " ".join(f"w{(index * 7 + j) % 97}" for j in range(call.prompt_words))
    return [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": f"Request {index}: {words}"},
    ]


async def run_arm(
    name: str,
    policy: Policy,
    calls: Sequence[DemoCall],
    *,
    base_url: str,
    api_key: str,
    clock: Clock,
    model: str,
) -> ArmResult:
    """Send ``calls`` through the openai SDK with a `AsyncTierTransport` running ``policy``,
    each at its time, all concurrently; return how each went."""
    import openai  # the demo's one extra dependency: the SDK people already use

    records: dict[str, CallRecord] = {}
    selector = Selector(policy=policy, clock=clock, api_key="")
    transport = AsyncTierTransport(selector, on_call=lambda r: records.__setitem__(r.call_id, r))
    result = ArmResult(name)
    async with httpx2.AsyncClient(transport=transport, timeout=httpx2.Timeout(600.0)) as http:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, http_client=http)
        start = clock.now()

        async def one(index: int, call: DemoCall) -> CallOutcome:
            await clock.asleep(start + call.at_s - clock.now())
            began = clock.now()
            with requirements(deadline_s=call.deadline_s, reliability=call.reliability):
                try:
                    raw = await client.chat.completions.with_raw_response.create(
                        model=model,
                        messages=_messages(call, index),
                        max_tokens=call.max_tokens,
                    )
                    raw.parse()
                    ok, error = True, ""
                    call_id = raw.headers.get("x-tiersel-call-id", "")
                except (openai.APIError, TierselError) as exc:
                    ok, error = False, type(exc).__name__
                    response = getattr(exc, "response", None)
                    call_id = response.headers.get("x-tiersel-call-id", "") if response else ""
            return CallOutcome(call, ok, clock.now() - began, records.get(call_id), error)

        result.outcomes = list(await asyncio.gather(*(one(i, c) for i, c in enumerate(calls))))
    return result


def format_report(
    arms: Sequence[ArmResult],
    *,
    unit: str = "simulated s",
    start_s: float = 0.0,
    bucket_s: float = 60.0,
) -> str:
    """The demo's printout: one row per arm, what the first arm (tiersel) chose per kind of
    call, and its choices over time (``start_s``: the scenario time the workload began at)."""
    lines = []
    head = (
        f"{'':17s} {'interactive on time':>20s} {'background on time':>19s}"
        f" {'total cost':>12s}   tiers that served"
    )
    lines.append(head)
    for arm in arms:
        im, it = arm.met("interactive")
        bm, bt = arm.met("background")
        served = Counter(o.tier for o in arm.outcomes if o.ok)
        failed = sum(not o.ok for o in arm.outcomes)
        mix = ", ".join(f"{t} {n}" for t, n in served.most_common())
        if failed:
            mix += f", failed {failed}"
        lines.append(
            f"{arm.name:17s} {f'{im}/{it}':>20s} {f'{bm}/{bt}':>19s} {f'${arm.cost_usd:.4f}':>12s}"
            f"   {mix}"
        )
    chosen = arms[0]
    lines.append("")
    lines.append(f"what {chosen.name} chose:")
    for kind in ("interactive", "background"):
        of_kind = [o for o in chosen.outcomes if o.call.kind == kind]
        if not of_kind:
            continue
        first = of_kind[0].call
        need = f"deadline {first.deadline_s:g} {unit}"
        if first.reliability is not None:
            need += f" at {first.reliability:g}"
        tiers = ", ".join(f"{t} {n}" for t, n in chosen.tiers(kind).most_common()) or "none"
        tried = [o.record.tried for o in of_kind if o.record is not None]
        climbed = sum(1 for t in tried if len(set(t)) > 1)
        retried = sum(1 for t in tried if len(t) > 1 and len(set(t)) == 1)
        elapsed = sorted(o.elapsed_s for o in of_kind if o.ok)
        median = f"{elapsed[len(elapsed) // 2]:.1f} {unit}" if elapsed else "-"
        cost = sum(o.cost_usd for o in of_kind) / len(of_kind)
        lines.append(
            f"  {kind:11s} ({need}): {tiers}; {retried} retried on the same tier,"
            f" {climbed} climbed to a dearer one;"
            f" median {median}; ${cost:.5f} a call"
        )
    lines.append("")
    lines.append(f"{chosen.name}'s tiers over time (scenario seconds):")
    buckets: dict[int, Counter[str]] = {}
    for o in chosen.outcomes:
        at = start_s + o.call.at_s
        buckets.setdefault(int(at // bucket_s), Counter())[o.tier if o.ok else "failed"] += 1
    for b in sorted(buckets):
        lo, hi = b * bucket_s, (b + 1) * bucket_s
        mix = ", ".join(f"{t} {n}" for t, n in buckets[b].most_common())
        lines.append(f"  {lo:5.0f}-{hi:<5.0f} {mix}")
    return "\n".join(lines)


def run_demo(
    calls: Sequence[DemoCall],
    *,
    base_url: str,
    api_key: str,
    clock: Clock,
    model: str,
    before_arm: Callable[[str], Any] | None = None,
    after_arm: Callable[[ArmResult], Any] | None = None,
    progress: Callable[[str], Any] | None = None,
) -> list[ArmResult]:
    """Run every arm of `ARMS` on ``calls`` in turn. ``before_arm(name)`` runs before each (the
    simulator resets its scenario there, so every arm meets the same conditions) and
    ``after_arm(result)`` after each."""
    results = []
    for name, make in ARMS:
        if before_arm is not None:
            before_arm(name)
        if progress is not None:
            progress(f"running {len(calls)} calls {name} ...")
        arm = asyncio.run(
            run_arm(
                name,
                make(),
                calls,
                base_url=base_url,
                api_key=api_key,
                clock=clock,
                model=model,
            )
        )
        results.append(arm)
        if after_arm is not None:
            after_arm(arm)
    return results
