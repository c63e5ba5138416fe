"""Hedged attempts: a second request that races the first when the first is slow to answer.

A hedge is a schedule of two attempts on two tiers, A then B. A is sent first (once its cooldown
ends). If A has not answered ``h`` seconds later, B is sent too, and the two race: the first to
answer with a success wins and the other is cancelled. If A fails fast (a shed, a rate limit, a
server error) before ``h``, B goes at once, as the next attempt of a ladder would.

A ladder waits for a failure before it tries again, and a late answer is a failure no later
attempt can repair: a served attempt that will miss the deadline says so only at the deadline.
A hedge buys insurance against that lateness. It pays off where the deadline is tight for the
cheap tier's latency spread, and costs little where the cheap tier mostly answers before ``h``.

Pricing (see `tiersel.schedule` for the attempts' numbers: refusal, error, log-normal latency):

- A is served with probability ``s_A`` and answers within ``x`` seconds with ``F_A(x)``.
- Answered before ``h``: A alone, billed ``c_A``.
- Failed fast: B is sent then, and succeeds with ``s_B F_B(D - t)``, credited at most what the
  served-A branch achieves (the cap of `tiersel.schedule`: a shed on A must never make the
  schedule likelier).
- Not answered by ``h``: B is sent at ``h``. The call fails only if both are late, or B is
  refused and A is late (A's and B's latencies are taken as independent). The winner is billed
  in full and the loser as cancelled: its prompt, plus half its expected output (it is
  cancelled part way; the provider bills a cancelled request its prompt and the output
  generated until then). Which one wins is averaged over B's latency.

The worst case is both attempts' worst cases: both may be billed in full, and both are reserved
against the budget before A is sent.

The search (`cheapest_hedge`) weighs every pair of candidates, B dearer than A, and delays of a
quarter, a half, one, one and a half and two times A's median latency, and keeps the cheapest
pair that meets the target. The policy takes it only where it is at least `HEDGE_SAVING` cheaper
than the cheapest ladder: a hedge sends two requests where a ladder sends one at a time, and a
sync shell cannot cancel its loser (`tiersel.engine.race`), so a saving within the model's error is
not worth it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

from tiersel.schedule import Candidate, Schedule, p_refused, p_within

__all__ = ["CANCEL_OUTPUT_SHARE", "HEDGE_SAVING", "cheapest_hedge", "price_hedge"]

CANCEL_OUTPUT_SHARE = 0.5
"""The share of its expected output a cancelled attempt is assumed to be billed (it is cancelled
part way through): its prompt is billed in full."""
HEDGE_SAVING = 0.01
"""How much cheaper than the cheapest ladder a hedge must be expected to cost to be chosen."""
DELAYS = (0.25, 0.5, 1.0, 1.5, 2.0)
"""The hedge delays weighed, as multiples of the first attempt's median latency."""
_GRID = tuple(NormalDist().inv_cdf((j + 0.5) / 8) for j in range(8))
"""Quantiles of the standard normal: the second attempt's latencies the race is averaged over."""
_SQRT2 = math.sqrt(2.0)


def _cancelled(c: Candidate) -> float:
    """What an attempt on ``c`` cancelled part way is assumed to be billed."""
    return c.prompt + CANCEL_OUTPUT_SHARE * max(0.0, c.expected - c.prompt)


def _a_wins(a: Candidate, b: Candidate, h: float, offset: float) -> float:
    """P(A answers before B), given A had not answered at ``h`` and B is sent at ``offset``
    (both from A's send), averaged over B's latency."""
    tail = 1.0 - p_within(a, h)
    if tail <= 0.0:
        return 0.0
    sigma = 1.0 / (b.scale * _SQRT2) if b.scale else 0.0
    base = p_within(a, h)
    won = 0.0
    for z in _GRID:
        won += p_within(a, offset + b.latency * math.exp(z * sigma)) - base
    return min(1.0, won / (len(_GRID) * tail))


def price_hedge(a: Candidate, b: Candidate, h: float, deadline: float) -> Schedule | None:
    """The hedge of ``a`` by ``b`` after ``h`` seconds, priced; None if B could not be sent
    before the deadline or either tier cannot serve."""
    start = a.wait
    if start + h >= deadline or h < 0.0:
        return None
    r_a = p_refused(a, start)
    serve_a = 1.0 - r_a - a.error
    if serve_a <= 0.0:
        return None
    left = deadline - start
    answered = p_within(a, h)  # A answers before the hedge goes out
    on_time_a = p_within(a, left)
    # A not answered by h: B goes at h (or once its cooldown ends).
    t_race = max(start + h, b.wait)
    serve_b = 1.0 - p_refused(b, t_race) - b.error
    if serve_b <= 0.0 or t_race >= deadline:
        return None
    late_b = 1.0 - p_within(b, deadline - t_race)
    both_late = (1.0 - on_time_a) * late_b
    raced_ok = (1.0 - answered) - both_late  # A on time after h, or B on time
    refused_ok = on_time_a - answered  # B refused: A alone, on time after h
    served_ok = answered + serve_b * raced_ok + (1.0 - serve_b) * refused_ok
    # A failed fast: B goes then (no later than h), credited at most the served branch.
    t_fail = max(start + min(a.fail_s, h), b.wait)
    serve_b_fail = max(0.0, 1.0 - p_refused(b, t_fail) - b.error)
    fail_ok = serve_b_fail * min(p_within(b, deadline - t_fail), served_ok)
    p = serve_a * served_ok + (1.0 - serve_a) * fail_ok

    a_wins = _a_wins(a, b, h, t_race - start)
    race_cost = a_wins * (a.expected + _cancelled(b)) + (1.0 - a_wins) * (
        b.expected + _cancelled(a)
    )
    w_alone = serve_a * answered  # A alone, before the hedge
    w_race = serve_a * (1.0 - answered) * serve_b
    w_a_late = serve_a * (1.0 - answered) * (1.0 - serve_b)  # B refused: A billed, maybe late
    w_fail = (1.0 - serve_a) * serve_b_fail
    weight = w_alone + w_race + w_a_late + w_fail
    if weight <= 0.0:
        return None
    spend = (w_alone + w_a_late) * a.expected + w_race * race_cost + w_fail * b.expected
    late = (
        w_alone * (start + min(h, a.latency))
        + w_race * (t_race + min(b.latency, max(0.0, a.latency - h)))
        + w_a_late * (start + a.latency)
        + w_fail * (t_fail + b.latency)
    )
    ok_a = serve_a * answered
    return Schedule(
        (a, b),
        (start, t_race),
        (1.0, 1.0 - ok_a),
        (ok_a, max(0.0, p - ok_a)),
        min(1.0, p),
        spend / weight,
        a.worst + b.worst,
        late / weight,
        f"{a.tier}~{b.tier}",
        t_race - start,
    )


def cheapest_hedge(
    cands: Sequence[Candidate],
    *,
    target: float,
    deadline: float,
    spendable: float | None = None,
    worst_limit: float | None = None,
    max_ttft: float | None = None,
) -> Schedule | None:
    """The cheapest hedge of two candidates whose P(success) reaches ``target``, expected to
    cost at most ``spendable``, with both worst cases within ``worst_limit``; of equal cost, the
    likelier. None if there is none."""
    best: Schedule | None = None
    for a in cands:
        if max_ttft is not None and a.wait + a.ttft > max_ttft:
            continue
        for b in cands:
            if b.expected <= a.expected or b.wait > 0.0:
                # The hedge climbs: a dearer tier backs up a cheaper one, and one that may be
                # sent at any moment (not a tier cooling down).
                continue
            if worst_limit is not None and a.worst + b.worst > worst_limit:
                continue
            for k in DELAYS:
                s = price_hedge(a, b, k * a.latency, deadline)
                if s is None or s.p_success < target:
                    continue
                if spendable is not None and s.expected_cost > spendable:
                    continue
                if (
                    best is None
                    or s.expected_cost < best.expected_cost * (1.0 - 1e-9)
                    or (s.expected_cost <= best.expected_cost and s.p_success > best.p_success)
                ):
                    best = s
    return best
