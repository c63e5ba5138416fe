"""A call's schedule of attempts and its price: the one model both the policy and the flow use.

A schedule is the sequence of attempts a call will make: each on a tier, starting at a known
offset from the decision. Attempt *i* on tier *t*, started *s_i* seconds in, with *L_i* = deadline
- *s_i* left:

- is refused (shed or rate limited) with probability *r_i*, or fails with a server error with
  *e_t*. Both answer fast (the tier's `TierHealth.shed_latency_s`; Fireworks and the simulator
  answer 503, 429 and 500 before any token) and neither is billed. The next attempt starts then,
  or later if the schedule waits: after a backoff when it goes to the same tier again
  (``backoff_s * 2**(i-1)``), never before that tier's cooldown ends.
- is served otherwise. It is on time with probability ``Phi((ln L_i - ln m_t) / sigma_t)``: the
  latency is log-normal around the tier's median *m_t*. Served late, it runs into the deadline
  and the call fails: no time is left for another attempt.

Overload comes in spells (`tiersel.tiers.TierPriors`), so *r_i* is not a constant. A tier's
first attempt starts from its shed rate now (`TierHealth.refusal_now`, which leans towards its
last answer), fading to its window's rate *r_t* over ``memory_s``. An attempt on the tier just
refused starts from a shed, ``r_t + (1 - r_t) * m * exp(-d / memory_s)``, *d* seconds after it.
Retrying at once after a shed is therefore worth little during a spell. A call with time to
spare may instead wait: the search weighs delays of a half, one, two and four ``memory_s``
before an attempt, where its deadline leaves room.

So ``P(success) = sum_i R_i * (1 - r_i - e_i) * q_i`` with ``R_1 = 1`` and
``R_(i+1) = R_i * (r_i + e_i)``, except that an attempt is credited at most the on-time chance of
every attempt before it (``q_i`` is capped at ``min(q_1, ..., q_(i-1))``). Without that cap, a
tier shed more often would look better as a first attempt whenever what follows it is more
punctual than it is: each shed would hand the call on to the better tier. With it, a tier's
shed rate can only lower a schedule's P(success), never raise it, as it must. The cap costs
accuracy only where a slow, risky tier is tried before a quicker one.

The cost of a schedule is what the call is expected to be billed once served,
``sum_i R_i (1 - r_i - e_i) c_i / sum_i R_i (1 - r_i - e_i)``. A failed attempt is not billed;
counting it as free would make a shed-prone tier look cheaper. The worst case is the dearest
attempt's worst case: attempts run one at a time, and each reserves its own.

Schedules climb. They take tiers in the order of their expected cost, each as many times as it
pays. Appending an attempt then never lowers P(success) and never lowers the cost. The search
(`cheapest`) can therefore stop extending a schedule once it meets the target or costs more than
the best one found. That is a search over (attempt, time left), with the time left fixed by the
path. It skips attempts after which the target is out of reach with the attempts allowed, and
weighs the others by the fewest attempts in all with which their schedule could reach it, then
breadth first: a search allowed more attempts first weighs, in the same order, every attempt a
search allowed fewer weighs, so one cut short by its budget (`SEARCH_BUDGET`) never gives a
worse answer for being allowed more (depth first, it did: the extra depth spent the budget on
one branch; and plain breadth first, the schedules that only the extra attempts could bring to
the target spent it before deeper ones that fewer attempts find).
A schedule that meets the target is extended on its own tier (the same cost, perhaps more
reliability) only while that could still beat the best found (`_may_beat`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

from tiersel.decision import run_label
from tiersel.pricing import TierPrice
from tiersel.signals import TierHealth

__all__ = [
    "ROOT",
    "Candidate",
    "Node",
    "Schedule",
    "cheapest",
    "extend",
    "likeliest",
    "p_refused",
    "p_within",
    "price",
]

_SQRT2 = math.sqrt(2.0)
_erf = math.erf
_log = math.log
_new = tuple.__new__


class Candidate(NamedTuple):
    """One tier's numbers for one call, as the schedule's attempts use them."""

    tier: str
    price: TierPrice
    health: TierHealth
    worst: float  # the most one attempt can be billed
    expected: float  # what one served attempt is expected to be billed
    latency: float  # median seconds from send to last token, if served
    refusal: float  # P(refused) over the signals' window
    refused: float  # P(an attempt sent now is refused)
    error: float  # P(a server error or a timeout)
    fail_s: float  # seconds a refused or failed attempt takes to answer
    wait: float  # seconds until the tier's cooldown ends (0: usable now)
    scale: float  # 1 / (sigma * sqrt 2) of the latency's log-normal spread (0: no deadline)
    ttft: float  # expected seconds to the first token, if served
    memory: float  # how much of a shed carries over to the next attempt (0: none)
    memory_s: float  # over how many seconds it fades
    prompt: float = 0.0  # what the prompt alone is billed (a cancelled attempt's least bill)


class Schedule(NamedTuple):
    """A priced schedule: its attempts, when each starts, and what the call is expected to get.

    ``starts[i]`` is attempt *i*'s offset from the decision, ``reach[i]`` the probability that it
    is made, ``ok[i]`` the probability that it is made and succeeds in time. ``p_success`` is
    the sum of ``ok``.
    """

    attempts: tuple[Candidate, ...]
    starts: tuple[float, ...]
    reach: tuple[float, ...]
    ok: tuple[float, ...]
    p_success: float
    expected_cost: float
    worst_cost: float
    latency: float  # expected seconds to the answer, given the call is served
    label: str  # the tiers, repeats counted: ``standard*2>priority``; a hedge ``standard~fast``
    hedge_s: float | None = None  # a hedge (`tiersel.hedge`): the second attempt's delay
    watch_s: float | None = None  # a watched first attempt (`tiersel.watch`): its check


# A node of the search: the schedule so far as its last attempt and running sums, linked to the
# node before it (built as plain tuples: the search creates many). Public for `tiersel.watch`,
# which builds a watched first attempt's node and extends it here.
class Node(NamedTuple):
    parent: Node | None
    k: int  # the candidate of the last attempt
    depth: int  # attempts so far
    start: float  # when the last attempt starts
    reach: float  # P(the last attempt is made)
    ok: float  # P(the last attempt is made and succeeds in time)
    p: float  # P(success) so far
    weight: float  # sum of R_i * served_i
    spend: float  # sum of R_i * served_i * expected_i
    late: float  # sum of R_i * served_i * (s_i + latency_i)
    worst: float
    ends: float  # when the last attempt's failure answers (the next may start)
    remains: float  # P(the last attempt failed fast, so one more is made)
    cap: float  # the most a later attempt is credited: the least P(on time) of those before
    first: float  # when the first attempt starts (kept, not walked back to: the search asks often)


ROOT = Node(None, -1, 0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0)


def p_refused(c: Candidate, start: float) -> float:
    """P(an attempt on ``c`` sent ``start`` seconds from now, not right after a shed on it, is
    refused): its lean now, fading towards its window's rate over ``memory_s``."""
    if start <= 0.0:
        return c.refused
    return c.refusal + (c.refused - c.refusal) * math.exp(-start / c.memory_s)


def p_within(c: Candidate, seconds: float) -> float:
    """P(an attempt on ``c``, once served, answers within ``seconds`` of being sent): the
    log-normal latency around ``c.latency`` (a step at it when ``c.scale`` is 0: no spread)."""
    if seconds <= 0.0:
        return 0.0
    if c.scale == 0.0:
        return 1.0 if seconds >= c.latency else 0.0
    return 0.5 * (1.0 + _erf(_log(seconds / c.latency) * c.scale))


# `extend` computes `p_refused` and `p_within` inline: it is the search's hot path, where a
# function call per attempt priced adds up (benchmarks/decide.py).
def extend(
    node: Node,
    k: int,
    c: Candidate,
    deadline: float | None,
    backoff_s: float,
    max_ttft: float | None,
    delay: float = 0.0,
    bound: float = math.inf,
) -> Node | None:
    """``node`` with one more attempt on candidate ``k``, sent at least ``delay`` seconds after
    the last one answered; None when it cannot start in time or would cost more than ``bound``."""
    # Unpacked at once: the search's hot path, where attribute reads add up.
    _, last, depth, _, _, _, p, weight, spend, late, worst, ends, remains, cap, first = node
    (
        _,
        _,
        _,
        c_worst,
        expected,
        latency,
        refusal,
        refused,
        error,
        fail_s,
        wait,
        scale,
        ttft,
        memory,
        memory_s,
        _,
    ) = c
    repeat = last == k
    start = ends + delay
    if repeat:
        backoff = backoff_s * (1 << (depth - 1)) if depth < 32 else MAX_BACKOFF_S
        if backoff > MAX_BACKOFF_S:
            backoff = MAX_BACKOFF_S
        if backoff > delay:
            start = ends + backoff
    if wait > start:
        start = wait
    if repeat:  # right after this tier refused: leaning towards a shed, fading
        r = refusal + (1.0 - refusal) * memory * math.exp((ends - start) / memory_s)
    elif start > 0.0:  # the tier's lean now fades towards its window's rate
        r = refusal + (refused - refusal) * math.exp(-start / memory_s)
    else:
        r = refused
    serve = 1.0 - r - error
    if serve <= 0.0:
        return None  # an attempt that cannot be served is never worth sending
    served = remains * serve
    weight += served
    spend += served * expected
    if (spend / weight if weight > 0.0 else expected) > bound:
        return None
    if max_ttft is not None and start + ttft > max_ttft:
        return None
    if deadline is None:
        q = 1.0
    else:
        left = deadline - start
        if left <= 0.0:
            return None
        q = 0.5 * (1.0 + _erf(_log(left / latency) * scale))
    if q > cap:
        q = cap
    ok = served * q
    return _new(
        Node,
        (
            node,
            k,
            depth + 1,
            start,
            remains,
            ok,
            p + ok,
            weight,
            spend,
            late + served * (start + latency),
            c_worst if c_worst > worst else worst,
            start + fail_s,
            remains - served,
            q,
            first if depth else start,
        ),
    )


_NOTHING = 1e-12  # a chance of reaching another attempt too small to weigh
MAX_BACKOFF_S = 10.0
"""The longest backoff before a tier is tried again (it doubles from ``backoff_s`` up to this)."""
HOPELESS = 0.01
"""A schedule less likely than this to succeed is not worth sending: `CheapestFeasible` refuses
it for a call with no reliability target (its ``min_reliability``), and a call carried on at
best effort (`tiersel.engine.flow`) ends instead of sending it."""
SEARCH_BUDGET = 6000
"""The most attempts a search prices: past it, it keeps the best schedule found so far (calls with
long deadlines and many attempts have more schedules than are worth weighing; tens of
milliseconds at most)."""
_SAME_COST = 1.001
"""Costs within 0.1% of each other count as the same (see `_better`)."""


def _better(node: Node, best: Node | None) -> bool:
    """Of two schedules costing the same, whether ``node`` beats ``best``: the one whose first
    attempt goes out sooner (a call is not kept waiting for reliability it did not ask for),
    then the likelier (waits and attempts after a failure cost nothing), then the quicker."""
    if best is None:
        return True
    first, best_first = node.first, best.first
    if first != best_first:
        return first < best_first
    if abs(node.p - best.p) > 1e-9:
        return node.p > best.p
    return node.late / node.weight < best.late / best.weight


def _may_beat(node: Node, best: Node | None) -> bool:
    """Whether more attempts on ``node``'s last tier (costing the same) could make a schedule
    that `_better` prefers to ``best``: its first attempt goes out no later than the best's, and
    its P(success), which more attempts raise by at most ``node.remains``, could reach the
    best's."""
    if best is None:
        return True
    return node.p + node.remains >= best.p - 1e-9 and node.first <= best.first


_Queue = deque[tuple[Node, int, float]]


def _grow(
    queue: _Queue,
    cands: Sequence[Candidate],
    node: Node,
    first: int,
    end: int,
    deadline: float | None,
) -> None:
    """Queue the ways to extend ``node`` with an attempt on candidates ``first`` to ``end - 1``
    (climbing: never a cheaper tier than its last), cheapest tier first. Each with no wait,
    then with a wait of a half, one, two and four of its ``memory_s`` where that leaves the
    attempt twice its latency before the deadline (a call with no deadline is not kept
    waiting)."""
    push = queue.append
    ends = node.ends
    for j in range(first, end):
        c = cands[j]
        push((node, j, 0.0))
        if deadline is not None and c.memory:
            room = deadline - ends - 2.0 * c.latency
            m = c.memory_s
            # A wait that ends within the tier's cooldown starts the attempt when the cooldown
            # ends, as no wait does: the same attempt, queued once.
            cooled = c.wait - ends
            for d in (0.5 * m, m, 2.0 * m, 4.0 * m):
                if d <= room and d > cooled:
                    push((node, j, d))


def _start(cands: Sequence[Candidate], deadline: float | None) -> _Queue:
    """A search's queue of (the schedule so far, the candidate of the attempt to add, the wait
    before it), holding every first attempt."""
    queue: _Queue = deque()
    _grow(queue, cands, ROOT, 0, len(cands), deadline)
    return queue


def _schedule(node: Node, cands: Sequence[Candidate]) -> Schedule:
    chain = []
    at = node
    while at.depth:
        chain.append(at)
        at = at.parent  # type: ignore[assignment]  # only the root has none, at depth 0
    chain.reverse()
    attempts = tuple([cands[n.k] for n in chain])
    weight = node.weight
    return _new(
        Schedule,
        (
            attempts,
            tuple([n.start for n in chain]),
            tuple([n.reach for n in chain]),
            tuple([n.ok for n in chain]),
            min(1.0, node.p),
            node.spend / weight if weight > 0.0 else attempts[-1].expected,
            node.worst,
            node.late / weight if weight > 0.0 else node.start,
            run_label([c.tier for c in attempts]),
            None,
            None,
        ),
    )


def price(
    attempts: Sequence[Candidate],
    *,
    deadline: float | None,
    backoff_s: float,
    max_ttft: float | None = None,
    delays: Sequence[float] | None = None,
) -> Schedule | None:
    """Price one schedule, its attempts in the order given, each sent at least ``delays[i]``
    seconds after the one before answered; None if it is empty or an attempt cannot start in
    time. `cheapest` and `likeliest` price what they weigh the same way."""
    tiers: list[Candidate] = []
    node = ROOT
    for i, c in enumerate(attempts):
        k = next((j for j, t in enumerate(tiers) if t.tier == c.tier), len(tiers))
        if k == len(tiers):
            tiers.append(c)
        delay = delays[i] if delays is not None else 0.0
        nxt = extend(node, k, c, deadline, backoff_s, max_ttft, delay)
        if nxt is None:
            return None
        node = nxt
    return _schedule(node, tiers) if tiers else None


_ROUNDING = 1.0 + 1e-12
"""Room for rounding when `cheapest` compares `_least_cost` with a bound: computed in another
order than `extend` computes a schedule's cost, it can come out a unit in the last place above
it, and an attempt that just fits must not be skipped."""


def _most_served(c: Candidate) -> float:
    """The most of the calls reaching an attempt on ``c`` that it can serve, whenever it is
    sent: its shed rate is never below the lower of its window's rate and its lean now (see
    `extend`: after a shed on it, the rate is above its window's; otherwise it moves from
    its lean towards its window's)."""
    low = c.refusal if c.refusal < c.refused else c.refused
    served = 1.0 - low - c.error
    return 0.0 if served < 0.0 else 1.0 if served > 1.0 else served


def _fewest(
    p: float, remains: float, fails: list[float], depth: int, attempts: int, goal: float
) -> int:
    """The fewest attempts in all, at most ``attempts``, with which a schedule of ``depth``
    attempts (``p`` its P(success), ``remains`` the share of calls left after them) and one
    more, failing at least ``fails[e]`` of the calls left with ``e`` more after it, could
    reach ``goal``; 0 when none can."""
    for e in range(attempts - depth):
        if p + remains * (1.0 - fails[e]) >= goal:
            return depth + 1 + e
    return 0


def _least_cost(node: Node, k: int, c: Candidate) -> float:
    """The least a schedule can cost with one more attempt on ``c`` (candidate ``k``) after
    ``node``, whenever it starts. A schedule's cost is the average bill of its attempts,
    weighted by the chance each is served; the new attempt's bill is at least that average
    (schedules climb), so the cost grows with the chance it is served, which is least when its
    shed rate is highest: right after a shed on its own tier, or, on another tier, the higher
    of its lean now and its window's rate (its rate moves from one to the other). This holds
    only for candidates in order of expected cost, as `cheapest` requires."""
    if node.k == k:
        r = c.refusal + (1.0 - c.refusal) * c.memory
    else:
        r = c.refused if c.refused > c.refusal else c.refusal
    served = node.remains * (1.0 - r - c.error)
    if served < 0.0:
        served = 0.0
    weight = node.weight + served
    return (node.spend + served * c.expected) / weight if weight > 0.0 else c.expected


def cheapest(
    cands: Sequence[Candidate],
    *,
    target: float,
    attempts: int,
    deadline: float | None,
    backoff_s: float,
    max_ttft: float | None = None,
    spendable: float | None = None,
) -> Schedule | None:
    """The cheapest climbing schedule of at most ``attempts`` attempts whose P(success) reaches
    ``target``, costing at most ``spendable``; None if there is none.

    ``cands`` must be in order of expected cost. Of schedules costing the same (within 0.1%),
    the one that sends its first attempt sooner wins, then the likelier (`_better`): a call is
    not kept waiting for reliability it did not ask for, but what costs nothing after a failure
    (another attempt on the tier, a wait for a spell to pass) is taken.
    The search weighs attempts by the fewest attempts in all their schedule needs to reach the
    target, then breadth first, cheapest tiers first; and an attempt's cost before its timing:
    once a schedule meets the target, those that cost more are dropped unpriced.
    """
    bound = math.inf if spendable is None else spendable
    best: Node | None = None
    best_cost = least = math.inf  # the best's cost; the least cost of any that met the target
    # The most an attempt on candidate k can serve, and the most one on k or a dearer
    # candidate can (schedules climb).
    serves = [_most_served(c) for c in cands]
    onward = serves[:]
    for j in range(len(onward) - 2, -1, -1):
        if onward[j + 1] > onward[j]:
            onward[j] = onward[j + 1]
    # fails[k][e]: the least share of the calls left that an attempt on candidate k, and e
    # more after it on k or dearer candidates, fail to serve.
    fails = [
        [(1.0 - serves[k]) * (1.0 - onward[k]) ** e for e in range(attempts)]
        for k in range(len(cands))
    ]
    # The attempts to weigh, by the fewest attempts in all with which their schedule could
    # still reach the target (and displace the best found, see below): ``queues[n]``. They are
    # weighed from the lowest n up, each queue in order (breadth first): so a search allowed
    # more attempts first weighs, in the same order, every attempt a search allowed fewer
    # weighs, and one cut short by its budget never gives a worse answer.
    queues: list[_Queue] = [deque() for _ in range(attempts + 1)]
    for j, row in enumerate(fails):
        n = _fewest(0.0, 1.0, row, 0, attempts, target - 1e-9)
        if n:
            _grow(queues[n], cands, ROOT, j, j + 1, deadline)
    lo = 1
    budget = SEARCH_BUDGET
    dearer: tuple[Node, int] | None = None  # an attempt too dear whenever it starts
    while True:
        while lo <= attempts and not queues[lo]:
            lo += 1
        if lo > attempts:
            break
        node, k, delay = queues[lo].popleft()
        budget -= 1
        if budget < 0:
            break
        if dearer is not None and dearer[0] is node and dearer[1] == k:
            continue  # another start of an attempt that costs too much whenever it starts
        limit = least * _SAME_COST
        most = limit if limit < bound else bound
        if not delay and most < math.inf and _least_cost(node, k, cands[k]) > most * _ROUNDING:
            # `_grow` queues an attempt's starts together, the first with no delay: none of
            # them can cost less than this bound (they still count in the search's budget).
            dearer = (node, k)
            continue
        nxt = extend(node, k, cands[k], deadline, backoff_s, max_ttft, delay, most)
        if nxt is None:
            continue  # too late, or dearer than the best so far (extensions only cost more)
        if nxt.p >= target and nxt.weight > 0.0:
            cost = nxt.spend / nxt.weight
            if cost < least:
                least = cost
                limit = least * _SAME_COST
            # "The same cost" is within 0.1% of the least found, not of the best so far: each
            # of a chain of schedules can be within 0.1% of the one before it, and the last
            # of them 0.15% dearer than the first.
            if best_cost >= limit or _better(nxt, best):
                best, best_cost = nxt, cost
            # Another attempt on a dearer tier only costs more; one more on this tier costs the
            # same and may add reliability for free: worth weighing while it could still beat
            # the best (its P(success) can rise by at most what is left to reach).
            if (
                nxt.depth < attempts
                and nxt.remains > _NOTHING
                and (best is nxt or _may_beat(nxt, best))
            ):
                n = nxt.depth + 1
                _grow(queues[n], cands, nxt, k, k + 1, deadline)
                if n < lo:
                    lo = n
            continue
        # Extend only what could still reach the target: the next attempt, on candidate j,
        # and those allowed after it serve together at most `1 - prod(1 - served_i)` of the
        # calls left, which grows with each `served_i`: at best, each serves the most its
        # tier can, and on time (`fails`). Exact: what is not queued could not meet it.
        # Nor what could not displace the best found: when the best is within the tolerance
        # of the least cost, a schedule that starts later than it, or as early but cannot be
        # as likely, wins only by costing 0.1% less, or by lowering the least cost. (Not
        # queuing it can change which of schedules within 0.1% of each other wins, where one
        # found later lowers the least cost and drops the best from the tolerance.)
        depth = nxt.depth
        if depth < attempts and nxt.p + nxt.remains >= target:
            p, remains = nxt.p, nxt.remains
            late, best_p = -1.0, 0.0
            if best is not None and best_cost < limit:
                late, best_p = nxt.first - best.first, best.p
            for j in range(k, len(cands)):
                goal = target - 1e-9
                if late >= 0.0:
                    cost = _least_cost(nxt, j, cands[j])
                    if cost >= least and cost * _SAME_COST > best_cost * _ROUNDING:
                        if late > 0.0:
                            continue
                        if best_p - 1e-9 > goal:
                            goal = best_p - 1e-9
                n = _fewest(p, remains, fails[j], depth, attempts, goal)
                if n:
                    _grow(queues[n], cands, nxt, j, j + 1, deadline)
                    if n < lo:
                        lo = n
    return _schedule(best, cands) if best is not None else None


def likeliest(
    cands: Sequence[Candidate],
    *,
    attempts: int,
    deadline: float | None,
    backoff_s: float,
    max_ttft: float | None = None,
    spendable: float | None = None,
) -> Schedule | None:
    """The climbing schedule most likely to succeed (the cheaper, then the quicker, on ties),
    costing at most ``spendable``; None if no attempt can start in time."""
    bound = math.inf if spendable is None else spendable
    best: Node | None = None
    best_key = (-1.0, 0.0, 0.0)
    queue = _start(cands, deadline)
    pop = queue.popleft
    budget = SEARCH_BUDGET
    while queue:
        node, k, delay = pop()
        budget -= 1
        if budget < 0:
            break
        nxt = extend(node, k, cands[k], deadline, backoff_s, max_ttft, delay, bound)
        if nxt is None:
            continue
        weight = nxt.weight
        if weight > 0.0:
            key = (round(nxt.p, 12), -nxt.spend / weight, -nxt.late / weight)
            if key > best_key:
                best, best_key = nxt, key
        elif best is None:
            best = nxt
        # Extend only what could still beat the likeliest so far.
        if nxt.depth < attempts and nxt.p + nxt.remains > best_key[0] and nxt.remains > _NOTHING:
            _grow(queue, cands, nxt, k, len(cands), deadline)
    return _schedule(best, cands) if best is not None else None
