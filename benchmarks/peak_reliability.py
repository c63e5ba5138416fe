"""Are three nines kept under peak load? Calls through the openai SDK and `AsyncTierTransport`
against a real `tiersel sim serve --scenario peak` process, each asking P(success within the
deadline) >= the reliability given; prints how many were served within their deadline.

    python benchmarks/peak_reliability.py [--calls 1000] [--gap 0.25] [--deadline 20]
                                          [--reliability 0.999] [--start 100] [--time-scale 0.05]

The simulator runs 20 times faster than real time (the client's clock is scaled the same way;
at that speed a millisecond the busy event loop loses counts as 20 simulated ones, so a run at
``--time-scale 0.2`` is the fairer test of the policy),
from ``--start`` seconds into the scenario (100-350 s is its busiest stretch); one call starts
every ``--gap`` simulated seconds. A call counts as served in time when tiersel measured it
ending within its deadline (every attempt included), as tests/transport/test_peak.py does.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter

import httpx2
import openai

import tiersel
from tiersel.clock import ScaledClock
from tiersel.sim.server import RunningServer, serve_in_subprocess
from tiersel.wrap import AsyncTierTransport, CallRecord, requirements

TIME_SCALE = 0.05
MODEL = "accounts/fireworks/models/kimi-k3"


async def run(server: RunningServer, args: argparse.Namespace) -> list[CallRecord | None]:
    clock = ScaledClock(args.time_scale)
    records: list[CallRecord] = []
    selector = tiersel.Selector(clock=clock, api_key="")
    transport = AsyncTierTransport(selector, on_call=records.append)
    async with httpx2.AsyncClient(transport=transport) as http:
        client = openai.AsyncOpenAI(
            api_key="sk-sim", base_url=server.openai_base_url, http_client=http, max_retries=0
        )
        await client.models.list()
        start = clock.now()

        async def one(i: int) -> str | None:
            await clock.asleep(start + i * args.gap - clock.now())
            with requirements(deadline_s=args.deadline, reliability=args.reliability):
                try:
                    raw = await client.chat.completions.with_raw_response.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": "hello " * 200}],
                        max_tokens=60,
                    )
                except openai.APIStatusError as exc:
                    return exc.response.headers.get("x-tiersel-call-id")
                except openai.APIError:
                    return None
            return raw.headers["x-tiersel-call-id"]

        ids = await asyncio.gather(*(one(i) for i in range(args.calls)))
    by_id = {r.call_id: r for r in records}
    return [by_id.get(i) if i is not None else None for i in ids]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--gap", type=float, default=0.25, help="simulated seconds between calls")
    ap.add_argument("--deadline", type=float, default=20.0)
    ap.add_argument("--reliability", type=float, default=0.999)
    ap.add_argument("--start", type=float, default=100.0, help="scenario time to start at")
    ap.add_argument(
        "--time-scale",
        type=float,
        default=TIME_SCALE,
        help="real seconds per simulated second (default 0.05: 20 times faster)",
    )
    args = ap.parse_args()
    with serve_in_subprocess("peak", time_scale=args.time_scale, seed=3) as server:
        server.reset(time_s=args.start)
        done = asyncio.run(run(server, args))
        stats = server.stats()
    kept = [r for r in done if r is not None and r.ok and r.elapsed_s <= args.deadline]
    refused = sum(1 for r in done if r is None or r.attempts == 0)
    tiers = Counter(str(r.tier) for r in kept)
    print(
        f"{len(kept)}/{len(done)} served within {args.deadline:g} s"
        f" ({100 * len(kept) / len(done):.2f}%; asked {100 * args.reliability:g}%);"
        f" {refused} given no tier"
    )
    print("served by:", ", ".join(f"{t} {n}" for t, n in tiers.most_common()))
    for r in done:
        if r is not None and not (r.ok and r.elapsed_s <= args.deadline):
            print(
                f"  missed: {r.call_id} tried {'>'.join(map(str, r.tried))} in"
                f" {r.elapsed_s:.2f} s, p_success {r.decision.p_success if r.decision else None}:"
                f" {r.detail or 'served late'}"
            )
    print("the simulator saw:", stats["by_tier"])


if __name__ == "__main__":
    main()
