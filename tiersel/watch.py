"""Watched attempts: an attempt whose pace is checked part way, and cut when it will be late.

A ladder learns that a served attempt is late only at the deadline, when no time is left for
another. But a model generates at a steady pace: a second or two in, an attempt's first token and
the tokens since say when it will end. A watched attempt is checked ``w`` seconds after it is
sent (`checkpoint_s`: its tier's expected time to the first token, half as much again, and then
a second of tokens), or, when it has fewer than two tokens by then, once it has two (`check_at`),
and at the latest when it must end. If its end, projected from its pace (`projected_finish`),
falls later than `WATCH_MARGIN` short of the deadline, it is cut (closed, so the provider stops
generating) and the schedule's next attempt goes at once, on a tier of a quicker pace. A shell
that watches an attempt reads its answer as a stream: for a caller that wants it whole, it hands
it back whole; for a caller that streams, it holds the tokens until the check, so that a cut
attempt's tokens never reach the caller (its first token comes no sooner than the check).

Pricing, with the numbers of `tiersel.schedule` (a refusal rate, an error rate, a log-normal
latency). Attempt A, sent at ``s`` with ``L`` seconds left, is served with probability
``s_A``. Served, it is kept when its latency ``X <= (1 - m) L`` (``m`` the margin), with
``q_A = F_A((1 - m) L)``, and then answers on time; otherwise it is cut at ``w``. The
projection is taken as exact: the simulator's pace is steady within a request, and a real
provider's wanders, which is what the margin is for. Every way A fails (refused, a server
error, cut) hands the call to the rest of the schedule, priced as a ladder from ``s + w``
(a refusal answers sooner; the flow then plans again, with the time it has). So
``P = s_A q_A + (1 - s_A q_A) P_rest``: a higher shed rate on A lowers P(success), never raises
it, and the cap of `tiersel.schedule` (an attempt credited at most the on-time chance of the
attempts before it) need not count ``q_A`` for the attempts after A.

A cut attempt is billed its prompt and the output generated until the cut: `cut_bill` counts it
at the tier's expected pace in the expected cost. The worst case is A's worst case and the
dearest later attempt's: attempts run one at a time, but a cut one is billed too.

`cheapest_watched` weighs every candidate as A, followed by attempts on one candidate of a quicker
pace, and keeps the cheapest that meets the target; the policy takes it where it is
`WATCH_SAVING` cheaper than the cheapest ladder, or where no ladder meets the target. The shells
that watch: the replay's (`tiersel.replay`) and `tiersel.wrap.TierTransport` and its async twin
(`tiersel.wrap.pace`; a call that wants its answer whole is read as a stream and handed back
whole, `tiersel.http.assemble`); for a call of any other shell the flow plans no watch.
"""

from __future__ import annotations

from collections.abc import Sequence

from tiersel.decision import watched_label
from tiersel.schedule import ROOT, Candidate, Node, Schedule, extend, p_refused, p_within

_new = tuple.__new__

__all__ = [
    "WATCH_MARGIN",
    "WATCH_SAVING",
    "cheapest_watched",
    "check_at",
    "checkpoint_s",
    "cut_bill",
    "price_watched",
    "projected_finish",
]

WATCH_MARGIN = 0.03
"""How far short of its deadline (a share of the time the attempt had) a watched attempt's
projected end must fall for it to be kept."""
WATCH_SAVING = 0.1
"""How much cheaper than the cheapest ladder a watched schedule must be expected to cost to be
chosen over it. The bundled replays' strict calls (20 s, 0.999) saw about twice the cuts the
model predicted (azure-conv: 1,039 cut of 3,459 watched, 682 predicted; synth-multiturn: 519 of
1,509, 241 predicted: the latency's median runs a few percent short for calls near their
deadline), and each cut bills its prompt again on the next tier, so a thin expected saving was a
loss: at 1% the synth-multiturn strict replay cost 1.5% more than with no watch, at 10% 0.5%
less."""
_QUICKER = 1.5
"""How much quicker a pace (output tokens per second) the tier a watched attempt is cut for must
have than the watched one's: sent on to a tier that generates no faster (priority shares
standard's pool), a call cut for its pace would be no better off."""
_PACE_S = 1.0
"""How long after its expected first token an attempt's pace is watched before it is judged."""


def checkpoint_s(c: Candidate) -> float:
    """When an attempt on ``c`` is checked, in seconds after it is sent: its tier's expected time
    to the first token, half as much again (a slow first token is common), then `_PACE_S`."""
    return 1.5 * c.ttft + _PACE_S


def check_at(at_s: float, second_token_s: float) -> float:
    """When a watched attempt is checked, in seconds after its send: at its checkpoint
    ``at_s``, or, when its second token (``second_token_s``) comes later, then: its pace is
    known from then on."""
    return max(at_s, second_token_s)


def projected_finish(
    at_s: float,
    first_token_s: float | None,
    last_token_s: float | None,
    tokens: int,
    expected_tokens: int,
    expected_tps: float,
) -> float:
    """When an attempt checked ``at_s`` seconds after its send will end, in seconds after its
    send: from its pace between its first and its last token so far (``tokens`` of them) when
    it has two or more, else from its tier's expected pace (``expected_tps``) after now, for
    the ``expected_tokens`` of output the call is planned on."""
    left = max(0, expected_tokens - tokens)
    if first_token_s is not None and last_token_s is not None and tokens >= 2:
        per_token = (last_token_s - first_token_s) / (tokens - 1)
        if per_token > 0.0:
            return last_token_s + left * per_token
    return at_s + left / expected_tps


def cut_bill(c: Candidate, at_s: float) -> float:
    """What an attempt on ``c`` cut ``at_s`` seconds after its send is expected to be billed:
    its prompt, and its output until then at the tier's expected pace."""
    generating = c.latency - c.ttft
    share = (at_s - c.ttft) / generating if generating > 0.0 else 1.0
    share = 0.0 if share < 0.0 else 1.0 if share > 1.0 else share
    return c.prompt + (c.expected - c.prompt) * share


def _watched(
    c: Candidate, k: int, w: float, deadline: float, max_ttft: float | None
) -> Node | None:
    """The search node of a first attempt on ``c`` (candidate ``k``), watched at ``w``; None
    when it cannot start in time or its check would come too late to help."""
    start = c.wait
    if max_ttft is not None and start + c.ttft > max_ttft:
        return None
    keep_by = (deadline - start) * (1.0 - WATCH_MARGIN)
    if w >= keep_by:
        return None
    serve = 1.0 - p_refused(c, start) - c.error
    if serve <= 0.0:
        return None
    kept = serve * p_within(c, keep_by)
    spend = kept * c.expected + serve * (1.0 - kept / serve) * cut_bill(c, w)
    late = kept * (start + c.latency)
    # Every failure of the attempt hands the call on at the check: the cap stays as it was.
    node = (ROOT, k, 1, start, 1.0, kept, kept, kept, spend, late, c.worst, start + w)
    return _new(Node, (*node, 1.0 - kept, 1.0, start))


def price_watched(
    a: Candidate,
    rest: Sequence[Candidate],
    *,
    deadline: float,
    backoff_s: float,
    max_ttft: float | None = None,
) -> Schedule | None:
    """Price a watched attempt on ``a`` followed by the attempts ``rest``, in order (a ladder
    from ``a``'s check on); None when an attempt cannot start in time."""
    tiers: list[Candidate] = [a]
    w = checkpoint_s(a)
    node = _watched(a, 0, w, deadline, max_ttft)
    if node is None:
        return None
    nodes = [node]
    for c in rest:
        k = next((j for j, t in enumerate(tiers) if t.tier == c.tier), len(tiers))
        if k == len(tiers):
            tiers.append(c)
        nxt = extend(node, k, c, deadline, backoff_s, max_ttft)
        if nxt is None:
            return None
        node = nxt
        nodes.append(node)
    return _schedule(nodes, [a, *rest], w)


def _schedule(nodes: list[Node], attempts: list[Candidate], w: float) -> Schedule:
    last = nodes[-1]
    later = max((c.worst for c in attempts[1:]), default=0.0)
    return _new(
        Schedule,
        (
            tuple(attempts),
            tuple([n.start for n in nodes]),
            tuple([n.reach for n in nodes]),
            tuple([n.ok for n in nodes]),
            min(1.0, last.p),
            last.spend / last.weight if last.weight > 0.0 else attempts[-1].expected,
            attempts[0].worst + later,
            last.late / last.weight if last.weight > 0.0 else last.start,
            watched_label([c.tier for c in attempts]),
            None,
            w,
        ),
    )


def cheapest_watched(
    cands: Sequence[Candidate],
    *,
    target: float,
    attempts: int,
    deadline: float,
    backoff_s: float,
    max_ttft: float | None = None,
) -> Schedule | None:
    """The cheapest schedule of a watched attempt followed by attempts on one quicker candidate
    (as many as it takes, within ``attempts`` in all) that meets ``target``; None if none does."""
    best: list[Node] | None = None
    best_cost = 0.0
    for i, a in enumerate(cands):
        w = checkpoint_s(a)
        head = _watched(a, i, w, deadline, max_ttft)
        if head is None:
            continue
        for j, b in enumerate(cands):
            if b.health.output_tps < _QUICKER * a.health.output_tps:
                continue  # a cut for its pace goes to a tier of a quicker pace
            node, nodes = head, [head]
            for _ in range(attempts - 1):
                nxt = extend(node, j, b, deadline, backoff_s, max_ttft)
                if nxt is None:
                    break
                node = nxt
                nodes.append(node)
                if node.p >= target:
                    cost = node.spend / node.weight
                    if best is None or cost < best_cost:
                        best, best_cost = nodes, cost
                    break
    if best is None:
        return None
    attempts_of = [cands[n.k] for n in best]
    return _schedule(best, attempts_of, checkpoint_s(attempts_of[0]))
