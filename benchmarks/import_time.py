"""How long does ``import tiersel`` take, against ``import httpx, pydantic`` in the same run?

    python benchmarks/import_time.py [--rounds 30]

Each statement runs in a fresh interpreter (so nothing is cached in ``sys.modules``), in a
rotating order round by round; each child times only its statement (interpreter start-up is left
out). Three statements:

- ``import httpx, pydantic``: the baseline (target: ``import tiersel`` <= 1.5x it);
- ``import tiersel``: the package alone (its public names load their modules on first use);
- ``import tiersel; tiersel.Selector``: the decision and the send path loaded, as a program that
  decides pays it before its first decision (shown beside the target, not under it);
- ``tiersel.Selector(api_key='')``: the same and the bundled price table read (the whole
  Fireworks catalogue), which the first selector pays once per process.

Prints the medians and the ratios to the baseline, then the modules ``import tiersel`` must not
load (batch, sim, replay, redis, httpx2, asyncio) that it did load: none is the target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import json, sys, time
t = time.perf_counter()
{statement}
took = time.perf_counter() - t
print(json.dumps({{"s": took, "modules": sorted(sys.modules)}}))
"""

BASELINE = "import httpx, pydantic"
TIERSEL = "import tiersel"
DECISION_PATH = "import tiersel; tiersel.Selector"
FIRST_SELECTOR = "import tiersel; tiersel.Selector(api_key='')"
STATEMENTS = (BASELINE, TIERSEL, DECISION_PATH, FIRST_SELECTOR)
FORBIDDEN = ("tiersel.batch", "tiersel.sim", "tiersel.replay", "redis", "httpx2", "asyncio")


def measure(statement: str) -> tuple[float, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(statement=statement)],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(done.stdout)
    return float(doc["s"]), list(doc["modules"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30, help="imports of each kind to time")
    args = ap.parse_args()
    measure(FIRST_SELECTOR)  # warm the file system's caches and the bytecode caches
    times: dict[str, list[float]] = {statement: [] for statement in STATEMENTS}
    modules: list[str] = []
    for i in range(args.rounds):
        for k in range(len(STATEMENTS)):
            statement = STATEMENTS[(i + k) % len(STATEMENTS)]
            took, loaded = measure(statement)
            times[statement].append(took)
            if statement == TIERSEL:
                modules = loaded
    median = {statement: statistics.median(t) for statement, t in times.items()}
    base = median[BASELINE]
    print(f"{args.rounds} rounds, each statement in a fresh interpreter (medians):")
    for statement in STATEMENTS:
        ratio = "" if statement == BASELINE else f"  {median[statement] / base:.2f}x the baseline"
        print(f"  {statement:<46} {median[statement] * 1000:7.1f} ms{ratio}")
    print(f"  import tiersel: {median[TIERSEL] / base:.2f}x  [target <= 1.5x]")
    bad = [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    print(f"  modules import tiersel must not load, loaded: {', '.join(bad) or 'none'}")


if __name__ == "__main__":
    main()
