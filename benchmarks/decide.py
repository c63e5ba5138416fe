"""How fast is a decision? Times `Selector.decide()` for a realistic call with live signals.

    python benchmarks/decide.py [--n 50000]

Prints decisions per second and the p50 / p99 latency of one decide() call (target on the
project's 2-core machine: p50 <= 20 us, p99 <= 100 us). The policy remembers its choice for
calls of one shape on one snapshot of the signals, so a second arm times calls that all differ
(a new prompt size each time): the schedule search runs for every one of them. The decisions
are timed in ``--rounds`` rounds: it prints each round's p50, the p50 and p99 over every sample,
and the least disturbed round's p50 (the machine is shared: other tenants only ever add time,
which is why ``timeit`` reports the best of its repeats too). Where litellm happens to be installed,
also times its Router's cost-based choice among three equivalent deployments in the same run and
prints the ratio (litellm is not a dependency of tiersel).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import random
import statistics
import time
import warnings
from collections.abc import Callable

import tiersel
from tiersel import Call, Requirements, Selector
from tiersel.clock import FakeClock
from tiersel.signals import Observation, Outcome


def live_selector(clock: FakeClock) -> Selector:
    """A selector whose signals have seen a minute of mixed traffic on all three tiers."""
    sel = Selector(clock=clock, api_key="")
    rng = random.Random(7)
    for i in range(600):
        clock.advance(0.1)
        tier, shed = rng.choice([("standard", 0.15), ("priority", 0.01), ("fast", 0.02)])
        outcome = Outcome.shed if rng.random() < shed else Outcome.ok
        obs = Observation(
            outcome,
            latency_s=rng.uniform(1, 8),
            ttft_s=rng.uniform(0.2, 1.5),
            output_tps=rng.uniform(30, 160) if outcome is Outcome.ok else None,
        )
        sel.record("kimi-k3", tier, obs)
        if i % 50 == 0:
            sel.record("kimi-k3", "standard", Observation(Outcome.ok))  # keep its circuit closed
    return sel


def time_each(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(n):
            t0 = clock()
            fn()
            out.append((clock() - t0) / 1000.0)
    finally:
        gc.enable()
    return out


def summary(name: str, samples: list[float]) -> float:
    q = statistics.quantiles(samples, n=100)
    p50, p99 = statistics.median(samples), q[98]
    rate = 1e6 / statistics.fmean(samples)
    print(f"{name:<34} p50 {p50:7.2f} us   p99 {p99:7.2f} us   {rate:>10,.0f} decisions/s")
    return p50


def time_litellm(n: int) -> list[float] | None:
    """Per-call latency of litellm's Router choosing among three equivalent deployments by cost.

    Its cost-based strategy exists only as an async call, so it is timed inside an event loop.
    """
    # No network here: use litellm's bundled cost map, and keep its log quiet.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    try:
        import litellm  # type: ignore[import-not-found]
    except ImportError:
        return None
    litellm.suppress_debug_info = True
    logging.getLogger("LiteLLM").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    model_list = [
        {
            "model_name": "kimi",
            "litellm_params": {
                "model": f"fireworks_ai/accounts/fireworks/models/kimi-k3-{name}",
                "api_key": "none",
                "input_cost_per_token": inp,
                "output_cost_per_token": out,
            },
            "model_info": {"id": name},
        }
        for name, inp, out in (
            ("standard", 0.95e-6, 4e-6),
            ("priority", 1.5e-6, 6e-6),
            ("fast", 2e-6, 8e-6),
        )
    ]
    router = litellm.Router(model_list=model_list, routing_strategy="cost-based-routing")
    messages = [{"role": "user", "content": "x" * 6000}]

    async def run() -> list[float]:
        pick = router.async_get_available_deployment
        for _ in range(200):  # warm up
            await pick(model="kimi", messages=messages, request_kwargs={})
        out = []
        clock = time.perf_counter_ns
        for _ in range(n):
            t0 = clock()
            await pick(model="kimi", messages=messages, request_kwargs={})
            out.append((clock() - t0) / 1000.0)
        return out

    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="decisions to time")
    ap.add_argument("--rounds", type=int, default=5, help="rounds the decisions are timed in")
    args = ap.parse_args()

    clock = FakeClock()
    sel = live_selector(clock)
    call = Call(model="kimi-k3", input_tokens=2000, cached_input_tokens=500, max_output_tokens=400)
    req = Requirements(deadline_s=20.0, reliability=0.98, max_cost_usd=0.05)
    first = sel.decide(call, req)
    print(f"tiersel {tiersel.__version__}: a call to kimi-k3 with live signals on 3 tiers")
    print(
        f"decision: {first.label} (P(success) {first.p_success:.4f},"
        f" ${first.estimated_cost_usd:.6f})"
    )
    for _ in range(2000):  # warm up
        sel.decide(call, req)
    rounds = [
        time_each(lambda: sel.decide(call, req), args.n // args.rounds) for _ in range(args.rounds)
    ]
    medians = [statistics.median(r) for r in rounds]
    ours = summary("tiersel Selector.decide()", [t for r in rounds for t in r])
    print(
        f"  p50 by round: {', '.join(f'{m:.2f}' for m in medians)} us;"
        f" least disturbed round {min(medians):.2f} us (target p50 <= 20 us)"
    )
    # Prompts of 1,000-1,999 tokens and caps of 300-399: 100,000 shapes, none seen twice.
    shapes = [
        Call(
            model="kimi-k3",
            input_tokens=1000 + i % 1000,
            cached_input_tokens=500,
            max_output_tokens=300 + (i // 1000) % 100,
        )
        for i in range(args.n)
    ]
    each = iter(shapes)
    varied = [
        time_each(lambda: sel.decide(next(each), req), args.n // args.rounds)
        for _ in range(args.rounds)
    ]
    fresh = summary("  ... every call a new shape", [t for r in varied for t in r])
    theirs_samples = time_litellm(max(2000, args.n // 10))
    if theirs_samples is None:
        print("litellm is not installed: no comparison run (pip install litellm to add one)")
        return
    theirs = summary("litellm Router cost-based routing", theirs_samples)
    print(f"ratio (litellm p50 / tiersel p50): {theirs / ours:.1f}x")
    print(f"ratio (litellm p50 / tiersel p50, every call a new shape): {theirs / fresh:.1f}x")


if __name__ == "__main__":
    main()
