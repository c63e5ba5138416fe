"""How fast does a batch job run, and does its memory grow with its input?

    python benchmarks/batch_throughput.py [--lines 20000] [--memory 20000,200000]
                                          [--concurrency 64] [--scenario calm]

Runs ``tiersel.batch.arun_batch`` on a generated input against the in-process simulator
(`tiersel.sim.AsyncSimTransport`), each job in a fresh subprocess, on the virtual-time loop
(`tiersel.virtual_time.run_virtual` over a `FakeClock`). Every job goes through the whole path:
reading and validating lines, the policy, the ledger and its journal (fsynced), the transport,
the simulator, and one row per line in OUT. It prints:

- the runner's throughput: lines per wall-clock second with the simulator answering at once
  (``wait=False``: no simulated latency, so the figure is the runner's own cost plus the
  simulator's; target on the project's 2-core machine: >= 1,000), and per CPU second of the
  process (the same figure with the other load on a shared machine taken out); measured as
  ``tiersel batch`` runs (``gc.freeze()`` once the modules and the price table are loaded) and as
  a plain library call (the collector untouched);
- the same job with the simulated latency, on virtual time: calls in flight overlap as they would
  in real time, and the virtual seconds the job spans are printed beside its wall time. Here each
  line's reservation must reach the disk before the line is sent, and virtual time stands still
  while a write is under way (it takes no simulated time), so the wall time is bounded by one
  journal fsync per instant at which lines start;
- peak memory (``ru_maxrss``) and the baseline after imports, for each input size in
  ``--memory`` (target: the peak does not grow with the input).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_input(path: Path, lines: int) -> None:
    """A deterministic input: OpenAI batch lines of a few hundred bytes, 128 output tokens."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            doc = {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "kimi-k3",
                    "messages": [
                        {"role": "system", "content": "You are terse."},
                        {"role": "user", "content": f"Summarise item {i}: " + "lorem ipsum " * 20},
                    ],
                    "max_tokens": 128,
                },
            }
            f.write(json.dumps(doc) + "\n")


def rss_mb() -> float:
    # ru_maxrss is KiB on Linux (bytes on macOS).
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def worker(
    src: Path, out: Path, concurrency: int, scenario: str, freeze: bool, wait: bool
) -> dict[str, float]:
    """One job in this process; returns its figures."""
    from tiersel.batch import arun_batch
    from tiersel.clock import FakeClock
    from tiersel.pricing import load_pricing
    from tiersel.sim import AsyncSimTransport
    from tiersel.virtual_time import run_virtual

    pricing = load_pricing()
    clock = FakeClock()
    transport = AsyncSimTransport(scenario=scenario, clock=clock, pricing=pricing, wait=wait)
    if freeze:
        gc.freeze()  # as tiersel batch does
    baseline = rss_mb()
    wall, cpu = time.perf_counter(), time.process_time()
    summary = run_virtual(
        arun_batch(
            src,
            out,
            budget_usd=1e9,
            transport=transport,
            clock=clock,
            concurrency=concurrency,
            api_key="",
            pricing=pricing,
            progress=False,
        ),
        clock,
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert summary.complete, summary.render()
    return {
        "lines": summary.lines,
        "ok": summary.calls_ok,
        "wall_s": wall,
        "virtual_s": clock.now(),
        "cpu_s": cpu,
        "calls_per_s": summary.lines / wall,
        "calls_per_cpu_s": summary.lines / cpu,
        "baseline_mb": baseline,
        "peak_mb": rss_mb(),
    }


def run_job(
    lines: int,
    concurrency: int,
    scenario: str,
    where: Path,
    *,
    freeze: bool = True,
    wait: bool = False,
) -> dict[str, float]:
    src = where / f"in-{lines}.jsonl"
    out = where / f"out-{lines}.jsonl"
    write_input(src, lines)
    argv = [__file__, "--worker", str(src), str(out), str(concurrency), scenario]
    argv += [str(freeze), str(wait)]
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=True)
    for path in (src, out, Path(f"{out}.journal"), Path(f"{out}.lock")):
        path.unlink(missing_ok=True)
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        src, out, concurrency, scenario, freeze, wait = sys.argv[2:8]
        figures = worker(
            Path(src), Path(out), int(concurrency), scenario, freeze == "True", wait == "True"
        )
        print(json.dumps(figures))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=20_000, help="lines in the throughput job")
    p.add_argument("--memory", default="20000,200000", help="input sizes to compare memory at")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--scenario", default="calm")
    args = p.parse_args()
    sizes = [int(s) for s in args.memory.split(",") if s]
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="tiersel-bench-") as d:
        where = Path(d)
        jobs = {args.lines: run_job(args.lines, args.concurrency, args.scenario, where)}
        plain = run_job(args.lines, args.concurrency, args.scenario, where, freeze=False)
        timed = run_job(args.lines, args.concurrency, args.scenario, where, wait=True)
        for n in sizes:
            if n not in jobs:
                jobs[n] = run_job(n, args.concurrency, args.scenario, where)
    print(f"throughput, {args.lines:,} lines, concurrency {args.concurrency}, {args.scenario}:")
    print("  the runner (the simulator answering at once):")
    for label, t in (("as tiersel batch runs", jobs[args.lines]), ("library, gc as is", plain)):
        print(
            f"    {label:<22} {t['calls_per_s']:>6,.0f} calls/s ({t['wall_s']:.1f} s wall),"
            f" {t['calls_per_cpu_s']:>6,.0f} calls per CPU second ({t['cpu_s']:.1f} s CPU)"
            "  [target >= 1,000 calls/s]"
        )
    print(
        f"  with the simulated latency, on virtual time: {timed['calls_per_s']:,.0f} calls/s"
        f" ({timed['wall_s']:.1f} s wall for {timed['virtual_s']:,.0f} s of virtual time),"
        f" {timed['calls_per_cpu_s']:,.0f} calls per CPU second ({timed['cpu_s']:.1f} s CPU)"
    )
    print("memory (peak RSS of the job's process; baseline: after imports, before the job):")
    for n in sizes:
        m = jobs[n]
        print(
            f"  {n:>8,} lines: peak {m['peak_mb']:.1f} MB, baseline {m['baseline_mb']:.1f} MB,"
            f" growth {m['peak_mb'] - m['baseline_mb']:.1f} MB"
            f"  ({m['calls_per_s']:,.0f} calls/s)"
        )
    if len(sizes) >= 2:
        small, large = jobs[sizes[0]], jobs[sizes[-1]]
        print(
            f"  peak at {sizes[-1]:,} / peak at {sizes[0]:,} lines:"
            f" {large['peak_mb'] / small['peak_mb']:.2f}x  [target: no growth]"
        )


if __name__ == "__main__":
    main()
