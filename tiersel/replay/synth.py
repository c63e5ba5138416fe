"""Two more kinds of trace, generated: long multi-turn conversations arriving in bursts
(`multiturn`), and retrieval-augmented calls whose prompts carry long context (`rag`).

The bundled Azure traces are single requests of a few thousand tokens at a fairly steady pace.
This one is shaped differently, so that a policy is not tuned to one shape. Sessions open in
bursts: a two-state process alternates calm spells with bursts at eight times the rate. Each
session is a conversation of several turns that re-sends its whole history, so prompts grow
long. The numbers are drawn from a seeded generator, so a seed gives the same trace every time:

- sessions open at 0.25/s on average in calm spells (mean 120 s) and 2/s in bursts (mean 20 s);
- a session has 1-30 turns (geometric, mean 6), with a system prompt of about 2,500 tokens
  (log-normal, median 2,500, sigma 0.5);
- each user message is about 150 tokens (median; sigma 0.8), each answer about 300 tokens
  (median; sigma 0.7, at most 4,000), and a turn's prompt is the system prompt plus every
  message and answer before it plus the new message, at most 128,000 tokens;
- the next turn comes about 20 s after the last one arrived (log-normal, median 20 s, sigma 0.8):
  the user reads the answer and writes;
- a turn's prompt but its new message is the session's prefix (``TraceRequest.prefix``, one per
  session): the provider reads it from its cache when the session's last turn reached the model
  within its cache's lifetime (the simulator's ``cache_ttl_s``), as a prefix cache does.

>>> t = multiturn(duration_s=300.0, seed=1)
>>> t.name, len(t) > 100, max(r.input_tokens for r in t) > 10_000
('synth-multiturn', True, True)

`rag` mixes prompt lengths instead, where a tier's time to first token is most a matter of the
prompt (`tiersel.tiers.TierPriors.prefill_s`): calls arrive steadily (Poisson, 4/s); each has
a system prompt of about 800 tokens (log-normal, sigma 0.3) and a question of about 60 (sigma
0.6); a third carry no retrieved context, the rest about 20,000 tokens of it (log-normal,
sigma 0.8, at most 120,000 in all); answers are about 250 tokens (sigma 0.7, at most 4,000).
The system prompt is one prefix shared by every call (the provider's cache serves it to all
after the first); the retrieved context is never cached.

>>> r = rag(duration_s=60.0, seed=1)
>>> r.name, 150 < len(r) < 350, max(x.input_tokens for x in r) > 30_000
('synth-rag', True, True)
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from tiersel.replay.traces import Trace, TraceRequest

__all__ = ["multiturn", "rag"]

_CALM_RATE = 0.25
_BURST_RATE = 2.0
_CALM_S = 120.0
_BURST_S = 20.0
_MAX_PROMPT = 128_000
_MAX_ANSWER = 4_000


def _start(kind: str, duration_s: float, seed: int) -> random.Random:
    """The seeded generator of a ``kind`` of trace, once ``duration_s`` is checked."""
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be a finite number > 0, got {duration_s!r}")
    return random.Random(f"tiersel-{kind}:{seed}")


def multiturn(*, duration_s: float = 2400.0, seed: int = 0) -> Trace:
    """Conversations opening over ``duration_s`` seconds (turns may run on past it)."""
    rng = _start("multiturn", duration_s, seed)
    requests: list[TraceRequest] = []
    now, burst = 0.0, False
    spell_end = rng.expovariate(1.0 / _CALM_S)
    while now < duration_s:
        rate = _BURST_RATE if burst else _CALM_RATE
        gap = rng.expovariate(rate)
        if now + gap >= spell_end:  # the spell ends first: switch, and draw again from there
            now = spell_end
            burst = not burst
            spell_end = now + rng.expovariate(1.0 / (_BURST_S if burst else _CALM_S))
            continue
        now += gap
        if now < duration_s:
            _session(rng, now, requests)
    requests.sort(key=lambda r: r.arrival_s)
    first = requests[0].arrival_s if requests else 0.0
    shifted = tuple(replace(r, arrival_s=r.arrival_s - first) for r in requests)
    return Trace("synth-multiturn", shifted)


def _session(rng: random.Random, start: float, out: list[TraceRequest]) -> None:
    turns = min(30, 1 + int(math.log(1.0 - rng.random()) / math.log(5.0 / 6.0)))
    history = int(rng.lognormvariate(math.log(2500.0), 0.5))
    at = start
    session = f"multiturn/{len(out)}"  # the index of its first turn: one name per session
    for _ in range(turns):
        message = max(1, int(rng.lognormvariate(math.log(150.0), 0.8)))
        answer = min(_MAX_ANSWER, max(1, int(rng.lognormvariate(math.log(300.0), 0.7))))
        prompt = min(_MAX_PROMPT, history + message)
        out.append(
            TraceRequest(at, prompt, answer, prefix=session, prefix_tokens=max(0, prompt - message))
        )
        history = prompt + answer
        at += rng.lognormvariate(math.log(20.0), 0.8)


_RAG_RATE = 4.0
_RAG_SHARE = 2.0 / 3.0
_MAX_RAG_PROMPT = 120_000


def rag(*, duration_s: float = 2400.0, seed: int = 0) -> Trace:
    """Retrieval-augmented calls arriving over ``duration_s`` seconds (see the module)."""
    rng = _start("rag", duration_s, seed)
    requests: list[TraceRequest] = []
    now = 0.0
    while True:
        if requests:
            now += rng.expovariate(_RAG_RATE)
        if now >= duration_s:
            break
        system = rng.lognormvariate(math.log(800.0), 0.3)
        prompt = system + rng.lognormvariate(math.log(60.0), 0.6)
        if rng.random() < _RAG_SHARE:
            prompt += rng.lognormvariate(math.log(20_000.0), 0.8)
        answer = min(_MAX_ANSWER, max(1, int(rng.lognormvariate(math.log(250.0), 0.7))))
        size = min(_MAX_RAG_PROMPT, int(prompt))
        requests.append(
            TraceRequest(now, size, answer, prefix="rag/system", prefix_tokens=int(system))
        )
    return Trace("synth-rag", tuple(requests))
