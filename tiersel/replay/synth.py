"""A second kind of trace, generated: long multi-turn conversations arriving in bursts.

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
  the user reads the answer and writes.

>>> t = multiturn(duration_s=300.0, seed=1)
>>> t.name, len(t) > 100, max(r.input_tokens for r in t) > 10_000
('synth-multiturn', True, True)
"""

from __future__ import annotations

import math
import random

from tiersel.replay.traces import Trace, TraceRequest

__all__ = ["multiturn"]

_CALM_RATE = 0.25
_BURST_RATE = 2.0
_CALM_S = 120.0
_BURST_S = 20.0
_MAX_PROMPT = 128_000
_MAX_ANSWER = 4_000


def multiturn(*, duration_s: float = 2400.0, seed: int = 0) -> Trace:
    """Conversations opening over ``duration_s`` seconds (turns may run on past it)."""
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be a finite number > 0, got {duration_s!r}")
    rng = random.Random(f"tiersel-multiturn:{seed}")
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
    shifted = tuple(
        TraceRequest(r.arrival_s - first, r.input_tokens, r.output_tokens) for r in requests
    )
    return Trace("synth-multiturn", shifted)


def _session(rng: random.Random, start: float, out: list[TraceRequest]) -> None:
    turns = min(30, 1 + int(math.log(1.0 - rng.random()) / math.log(5.0 / 6.0)))
    history = int(rng.lognormvariate(math.log(2500.0), 0.5))
    at = start
    for _ in range(turns):
        message = max(1, int(rng.lognormvariate(math.log(150.0), 0.8)))
        answer = min(_MAX_ANSWER, max(1, int(rng.lognormvariate(math.log(300.0), 0.7))))
        prompt = min(_MAX_PROMPT, history + message)
        out.append(TraceRequest(at, prompt, answer))
        history = prompt + answer
        at += rng.lognormvariate(math.log(20.0), 0.8)
