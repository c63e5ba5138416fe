"""What `tiersel.prompts.PromptMemory` costs: memory per remembered prefix, and the time to take
a body's prefixes and look them up (what `Engine.start` adds to a call of 1,024 tokens or more).

    python benchmarks/prompt_memory.py [--n 100000]

Prints the bytes per prefix kept when the memory is full (tracemalloc), and the median time of
`prompt_prefixes` plus `PromptMemory.cached` for a conversation of 20 messages and about 40,000
tokens, against `tiersel.dialects.input_tokens` on the same body (which every call pays already).
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="prefixes remembered")
    args = parser.parse_args()

    from tiersel.dialects import Dialect, input_tokens
    from tiersel.prompts import PromptMemory, prompt_prefixes

    # Real keys: the prefixes of as many distinct one-message prompts.
    keys = [
        prompt_prefixes({"messages": [{"role": "user", "content": f"{i}"}]}, Dialect.openai, 9)[0][
            0
        ]
        for i in range(args.n)
    ]
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    memory = PromptMemory()
    for i, key in enumerate(keys):
        memory.remember("kimi-k3", [(key, 1000)], float(i))
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    kept = len(memory._seen)  # a benchmark reads the count
    print(
        f"{kept:,} prefixes kept (maxsize {memory.maxsize:,}) in {(after - before) / 1e6:.1f} MB:"
        f" {(after - before) / kept:.0f} bytes each"
    )

    body = {
        "model": "kimi-k3",
        "messages": [{"role": "system", "content": "s" * 60_000}]
        + [{"role": "user" if i % 2 else "assistant", "content": "m" * 3_000} for i in range(19)],
    }
    tokens = input_tokens(body, dialect=Dialect.openai)[0]

    def lookup() -> None:
        memory.cached("kimi-k3", prompt_prefixes(body, Dialect.openai, tokens), 0.0)

    def estimate() -> None:
        input_tokens(body, dialect=Dialect.openai)

    timings: dict[str, list[float]] = {"lookup": [], "estimate": []}
    for _ in range(2000):
        for name, f in (("lookup", lookup), ("estimate", estimate)):
            t = time.perf_counter()
            f()
            timings[name].append(time.perf_counter() - t)
    look, est = (statistics.median(timings[k]) * 1e6 for k in ("lookup", "estimate"))
    print(
        f"a {tokens:,}-token body of 20 messages: prefixes taken and looked up in {look:.0f} us,"
        f" {look / est:.1f}x the token estimate every call pays ({est:.0f} us)"
    )


if __name__ == "__main__":
    main()
