"""One call's attempts, written once as a generator of effects; thin sync and async shells run it.

The flow decides, reserves budget, asks for a send, classifies what came back, records it into
the signals, charges or releases, and re-decides after a shed or a rate limit while the deadline,
the budget and the attempt bound allow. It does no I/O itself: each effect it yields (read the
signals, reserve, send, sleep, ...) is carried out by the shell, which sends back the result, the
way httpx drives its auth flows.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import replace
from functools import partial
from typing import Any

from tiersel.call import BudgetState, Call, Requirements
from tiersel.cost import charge
from tiersel.decision import Decision, ReasonCode, Step
from tiersel.dialects import (
    Classified,
    Dialect,
    Usage,
    apply_step,
    read_usage,
)
from tiersel.engine.billing import bill, classify_reply, key_of, reply_tps
from tiersel.engine.effects import (
    ClaimProbe,
    Effect,
    Flow,
    Notify,
    Now,
    Race,
    Raced,
    ReadBudget,
    ReadSignals,
    Record,
    Release,
    Reserve,
    Send,
    Settle,
    Sleep,
    Watch,
)
from tiersel.engine.money import money_wait, only_budget, output_cap, shared_cap
from tiersel.engine.results import AttemptRecord, CallResult, Reply
from tiersel.engine.state import CallContext, FlowHost, Following, Progress
from tiersel.engine.waits import as_open, cooling, shortest_cooldown, waitable
from tiersel.errors import BudgetExhausted, NoFeasibleTier
from tiersel.prompts import Prompt
from tiersel.schedule import HOPELESS, MAX_BACKOFF_S
from tiersel.signals import (
    CircuitState,
    Observation,
    Outcome,
    TierHealth,
    TierStats,
    circuit_state,
)
from tiersel.watch import WATCH_MARGIN

_PLANNED = frozenset({Outcome.shed, Outcome.rate_limited, Outcome.error})
"""Failures a schedule plans for: answered fast, so its next attempt follows as planned."""
_TOO_SLOW = frozenset({ReasonCode.tps, ReasonCode.ttft})
"""The codes of a tier rejected as too slow for a call's speed limits."""
_LATE_S = 0.5
"""How far behind its schedule a call may be and still follow it rather than plan again."""


_AGAIN = object()
"""A phase's answer meaning: go round the loop again (it waited, or the call plans afresh)."""


def call_flow(
    sel: FlowHost,
    body: Mapping[str, Any],
    dialect: Dialect,
    call: Call,
    requirements: Requirements,
    call_id: str,
    max_wait: Callable[[], float | None] | None = None,
    watch: bool = False,
    prompt: Prompt | None = None,
) -> Flow:
    """The attempts of one call. Raises `NoFeasibleTier` or `BudgetExhausted` before any send.

    ``watch``: the shell that runs the flow can watch this call's attempts' pace (`Send.watch`,
    `tiersel.watch`); where it cannot, no watched attempt is planned. ``prompt``: its prompt's
    prefixes (`tiersel.prompts`), which a served attempt's usage teaches the host.

    The decision's plan is the schedule the call follows: each attempt at its planned start,
    the next one after a failure the schedule planned for (a shed, a rate limit, a server error,
    each answered fast). It plans again, with the same policy and from the time and attempts
    left, when something new is known: a Retry-After, a tier's circuit opening, a timeout, a
    failure that took longer than planned, or a schedule run out while attempts remain.

    A call with a deadline never waits past it. ``max_wait()`` (seconds, asked only when a wait
    comes up, since it is seldom needed) bounds each wait of a call with
    no deadline for a tier's cooldown (a Retry-After, an open circuit): a longer one ends the
    call with its last error instead.

    Each round: the time left; the next attempt, followed (`_follow`) or planned (`_plan`); its
    money reserved (`_reserve`); its send, or a hedge's race (`_race`); and what came back
    charged and recorded (`_conclude`), which ends the call or names the next attempt.
    """
    ctx = _context(sel, body, dialect, call, requirements, call_id, max_wait, watch)
    ctx.prompt = prompt
    ctx.start = yield Now()
    prog = Progress(call, ctx.ceiling)
    now = ctx.start
    following: Following | None = None
    while True:
        if prog.attempts or prog.waited:
            now = yield Now()
        req = ctx.requirements
        if req.deadline_s is not None and now > ctx.start:
            left = req.deadline_s - (now - ctx.start)
            if left <= 0:
                return _failed(prog, ctx, prog.detail or "deadline passed")
            req = req.model_copy(update={"deadline_s": left})
        at: Any
        if following is not None:
            at = yield from _follow(following, now, prog)
            if at is _AGAIN:
                continue  # slept until its start: check the time left, then send it
            following = None
            if at is None:
                continue  # behind the schedule: plan again from here
        else:
            at = yield from _plan(ctx, prog, req, now)
            if at is _AGAIN:
                continue
            if isinstance(at, CallResult):
                return at
            if at.decided_at > now:
                following = at  # it starts after a backoff: `_follow` waits for it
                continue
        held = yield from _reserve(ctx, prog, at, req)
        if held is _AGAIN:
            continue
        if isinstance(held, CallResult):
            return held
        step, reply, extra = yield from _attempt(ctx, prog, at, req)
        ended = yield from _conclude(ctx, prog, at, step, reply, extra, now)
        if isinstance(ended, CallResult):
            return ended
        following = ended


def _context(
    sel: FlowHost,
    body: Mapping[str, Any],
    dialect: Dialect,
    call: Call,
    requirements: Requirements,
    call_id: str,
    max_wait: Callable[[], float | None] | None,
    watch: bool,
) -> CallContext:
    prices = sel.pricing.model(call.model)
    ceiling = output_cap(sel, body, dialect, call)
    most = requirements.max_attempts or sel.max_attempts
    if requirements.max_attempts is None and most != getattr(sel.policy, "max_attempts", most):
        requirements = requirements.model_copy(update={"max_attempts": most})
    if requirements.hedge and body.get("stream") is True:
        # A stream answers with its first token, which says nothing of when it ends: a race
        # settled then would not protect the deadline the hedge is priced for.
        requirements = requirements.model_copy(update={"hedge": False})
    if (
        not watch
        and requirements.watch
        and requirements.deadline_s is not None
        and getattr(sel.policy, "watch", False)
    ):
        requirements = requirements.model_copy(update={"watch": False})  # it cannot be watched
    sized = ceiling is not None and sel.unbounded_output == "share"
    keys = sel.signal_keys(prices.name)
    read = sel.read_keys(prices, requirements)
    return CallContext(
        sel,
        body,
        dialect,
        requirements,
        call_id,
        max_wait,
        prices,
        keys,
        read,
        most,
        ceiling,
        sized,
    )


def _follow(
    at: Following, now: float, prog: Progress
) -> Generator[Effect, Any, Following | object | None]:
    """The schedule's next attempt, due now; `_AGAIN` after sleeping until its planned start;
    None when the call is behind its schedule and must plan again (after a backoff, with no
    second one: the time it was to take has passed)."""
    step = at.decision.plan[at.index]
    due = at.decided_at + step.start_s
    if now > due + _LATE_S:
        prog.backed_off = at.backoff
        return None
    if due > now:
        yield Sleep(due - now)
        prog.waited = True
        return _AGAIN
    return at


def _health(ctx: CallContext, now: float) -> Generator[Effect, Any, dict[str, TierHealth]]:
    """Every tier's health now, from its counters (claiming the probe of a half-open one)."""
    sel = ctx.sel
    stats: list[TierStats] = yield ReadSignals(ctx.read)
    signals: dict[str, TierHealth] = {}
    for key, st in zip(ctx.read, stats, strict=True):
        health = sel.assess(key, st, now)
        if health.state is CircuitState.half_open:
            claimed = yield ClaimProbe(key)
            health = sel.assess(key, st, now, probing=claimed)
            if not claimed:
                health = as_open(health, sel.signal_config.probe_interval_s)
        signals[key.tier] = health
    return signals


def _plan(
    ctx: CallContext, prog: Progress, req: Requirements, now: float
) -> Generator[Effect, Any, Following | CallResult | object]:
    """Decide the call's schedule from what the signals and the budget say now: its first
    attempt to follow; `_AGAIN` after a wait (a cooldown, money in flight); or the call's end."""
    sel = ctx.sel
    if prog.attempts:
        req = req.model_copy(update={"max_attempts": ctx.most - prog.attempts})
    signals = prog.signals = yield from _health(ctx, now)
    budget: BudgetState | None = (yield ReadBudget(ctx.call_id)) if sel.ledger_enabled else None
    prog.budget = budget
    call = prog.call
    if ctx.sized and ctx.ceiling is not None and budget is not None and prog.attempts == 0:
        # The cap is the call's share of the money left now, fixed once a request is sent.
        prog.cap = shared_cap(ctx.ceiling, budget, ctx.prices, call, req)
        call = prog.call = call.model_copy(update={"max_output_tokens": prog.cap})
    try:
        decision = sel.policy(call, req, budget, ctx.prices, signals, now)
    except NoFeasibleTier as exc:
        fallback = yield from _no_plan(ctx, prog, req, signals, budget, exc, now)
        if not isinstance(fallback, Decision):
            return fallback
        decision = fallback
    prog.admitted = True
    if decision.wait_s > 0:
        # The schedule starts once a tier's cooldown ends: wait, then plan again (the tier may
        # then be probed, or have recovered).
        yield Sleep(decision.wait_s)
        prog.waited = True
        return _AGAIN
    at = Following(decision, 0, now)
    backed_off, prog.backed_off = prog.backed_off, False
    if prog.last_tier == decision.plan[0].tier and prog.attempts > 0 and not backed_off:
        # Planned afresh onto the tier that just failed (a policy that plans one attempt at a
        # time): back off first, within the deadline. The call then follows the plan from
        # the backoff's end (`_follow` sleeps until it), so the time left is read again
        # before the attempt is sent: a stall during the backoff that leaves the call behind
        # it has it planned again, from the time then left, with no second backoff.
        backoff = min(MAX_BACKOFF_S, sel.backoff_s * 2.0 ** min(prog.attempts - 1, 30))
        if req.deadline_s is None or backoff < req.deadline_s / 2:
            at.decided_at = now + backoff
            at.backoff = True
    return at


def _no_plan(
    ctx: CallContext,
    prog: Progress,
    req: Requirements,
    signals: Mapping[str, TierHealth],
    budget: BudgetState | None,
    exc: NoFeasibleTier,
    now: float,
) -> Generator[Effect, Any, Decision | CallResult | object]:
    """No schedule meets the requirements now: wait out a cooldown or money in flight
    (`_AGAIN`); carry on at best effort a call once planned (`_carried_on`); else end the call
    after attempts, or raise before any."""
    call = prog.call
    liftable = waitable(signals, exc)
    any_cooling = cooling(liftable)
    wait = shortest_cooldown(liftable, req, call, ctx.max_wait, ctx.prices) if any_cooling else None
    if prog.attempts == 0 and wait is None:
        # Nothing sent and no cooldown worth waiting out. When money alone bars the tiers that
        # could serve in time, the budget is what stops the call, unless money in flight
        # (other calls' reservations) would cover it once they settle.
        if budget is not None and only_budget(exc, cooldowns_too_long=any_cooling):
            need = min(float(r.values[0]) for r in exc.reasons if r.code == "budget")
            pause = money_wait(ctx.sel, need, budget, req, ctx.max_wait, prog)
            if pause is None:
                raise BudgetExhausted(call.model, exc.reasons, waited_s=prog.money_waited) from None
            prog.refused = exc.reasons
            yield Sleep(pause)
            return _AGAIN
        if prog.refused:
            # It waited for money, and now time bars it: the budget stopped it.
            raise BudgetExhausted(call.model, prog.refused, waited_s=prog.money_waited) from None
    if wait is None or prog.attempts >= ctx.most:
        if prog.admitted and prog.attempts < ctx.most:
            carried = _carried_on(ctx, prog, req, signals, budget, now)
            if carried is not None:
                return carried
        if prog.attempts == 0 and not any_cooling:
            raise exc
        return _failed(prog, ctx, prog.detail or str(exc))
    yield Sleep(wait)
    prog.waited = True
    return _AGAIN


def _carried_on(
    ctx: CallContext,
    prog: Progress,
    req: Requirements,
    signals: Mapping[str, TierHealth],
    budget: BudgetState | None,
    now: float,
) -> Decision | None:
    """The likeliest schedule left, for a call the policy once planned that no schedule now
    meets (a failure, a stall or a changed signal used up its margin): the call was admitted,
    so it goes on at best effort, within its cost limits, rather than being refused after it
    waited or spent (the engine's ``carry_on``, default True).

    None when that is not wanted; when even that schedule is hopeless (P(success) below the
    policy's ``min_reliability``, where it has one, else `HOPELESS`); and, for a call that
    asked for speed (``min_output_tps``, ``max_ttft_s``), when that schedule uses a tier the
    policy found too slow for it: a slow answer is not what such a call can use."""
    if not ctx.sel.carry_on or req.best_effort:
        return None  # not wanted, or the policy already looked for the likeliest
    effort = req.model_copy(update={"best_effort": True})
    try:
        decision = ctx.sel.policy(prog.call, effort, budget, ctx.prices, signals, now)
    except NoFeasibleTier:
        return None
    floor = getattr(ctx.sel.policy, "min_reliability", HOPELESS)
    if decision.p_success < floor:
        return None
    if req.min_output_tps is not None or req.max_ttft_s is not None:
        slow = {r.plan for r in decision.reasons if r.code in _TOO_SLOW}
        if any(step.tier in slow for step in decision.plan):
            return None  # speed is not to be given up
    return decision


def _reserve(
    ctx: CallContext, prog: Progress, at: Following, req: Requirements
) -> Generator[Effect, Any, CallResult | object]:
    """Reserve the attempt's worst case (a hedge's two): True when held; `_AGAIN` after a
    wait for money in flight; the call's end when a retry finds no money."""
    if not ctx.sel.ledger_enabled:
        return True
    step = at.decision.plan[at.index]
    racer = _racer(at.decision, at.index)
    worst = step.worst_cost_usd + (racer.worst_cost_usd if racer is not None else 0.0)
    held = yield Reserve(ctx.call_id, worst)
    if held is not None:
        return True
    if prog.attempts == 0:
        # Another call reserved first: wait for money in flight, as for a refusal.
        assert prog.budget is not None
        pause = money_wait(ctx.sel, worst, prog.budget, req, ctx.max_wait, prog)
        if pause is None:
            reasons = prog.refused or at.decision.reasons
            raise BudgetExhausted(prog.call.model, reasons, waited_s=prog.money_waited)
        yield Sleep(pause)
        return _AGAIN
    stopped = _failed(prog, ctx, "budget exhausted before a retry")
    return replace(stopped, budget_stopped=True)


def _attempt(
    ctx: CallContext, prog: Progress, at: Following, req: Requirements
) -> Generator[Effect, Any, tuple[Step, Reply, float]]:
    """Send the attempt (or run a hedge's race): the step that answered, its reply, and what
    a hedge's loser is billed."""
    decision = at.decision
    step = decision.plan[at.index]
    send_body = apply_step(ctx.body, step)
    if prog.cap is not None:
        send_body["max_tokens"] = prog.cap
    watch = _watch(ctx, prog, step, req)
    given_up = partial(_partial_bill, ctx, prog, step, payload=None)
    sent = Send(step, send_body, step.headers, req.deadline_s, watch, given_up)
    racer = _racer(decision, at.index)
    extra = 0.0
    if racer is None:
        reply: Reply = yield sent
        prog.attempts += 1
    else:
        step, reply, extra = yield from _race(ctx, decision, sent, racer, prog)
        at.index += 1  # the schedule's race is run
    prog.decisions.append(decision)
    prog.steps.append(step)
    prog.last_reply = reply
    prog.last_tier = step.tier
    return step, reply, extra


def _watch(ctx: CallContext, prog: Progress, step: Step, req: Requirements) -> Watch | None:
    """How the shell is to watch the attempt's pace, for a watched step (`tiersel.watch`): its
    end must be projected `WATCH_MARGIN` short of the time the call has left. None for an
    attempt not watched. (A stream's first tokens are held until its check.)"""
    if step.watch_s is None or req.deadline_s is None:
        return None
    health = prog.signals.get(step.tier) if prog.signals is not None else None
    if health is None:
        return None
    tokens = prog.call.output_tokens_for_latency
    if prog.cap is not None:
        tokens = min(tokens, prog.cap)
    finish_by = req.deadline_s * (1.0 - WATCH_MARGIN)
    return Watch(step.watch_s, finish_by, tokens, health.output_tps)


def _conclude(
    ctx: CallContext,
    prog: Progress,
    at: Following,
    step: Step,
    reply: Reply,
    extra: float,
    now: float,
) -> Generator[Effect, Any, CallResult | Following | None]:
    """Record, charge and report what an attempt got back: the call's end, the schedule's next
    attempt after a failure it planned for, or None to plan again."""
    sel, decision = ctx.sel, at.decision
    # The attempt's latency is only reported to an on_attempt hook.
    after = (yield Now()) if sel.on_attempt is not None else now
    if reply.cut:
        return (yield from _cut(ctx, prog, at, step, reply, now))
    verdict = classify_reply(reply)
    if reply.streaming and verdict.outcome is Outcome.ok:
        # The stream's wrapper records, charges and notifies once the stream ends.
        yield from _given_up(ctx, prog, "hedge", extra)
        return _result(prog, ctx, reply, 0.0, None, step.tier, "streaming", pending=True)
    usage = read_usage(reply.payload, ctx.dialect) if verdict.outcome is Outcome.ok else None
    recorded = yield Record(
        key_of(ctx.keys, step.tier),
        Observation(
            verdict.outcome,
            latency_s=reply.elapsed_s,
            output_tps=reply_tps(usage, reply.elapsed_s, _ttft(ctx, prog, step.tier)),
            retry_after_s=verdict.retry_after_s,
        ),
        usage,
        ctx.prompt if verdict.outcome is Outcome.ok else None,  # only a served one read it
    )
    # A request that timed out reached the provider, which bills a request given up on for its
    # prompt and the output made until then (as a hedge's cancelled loser is billed), unless
    # the ledger charges such an attempt itself (the batch job's, at its worst case).
    dropped = 0.0
    if reply.timed_out and not sel.charges_doubt:
        dropped = _partial_bill(ctx, prog, step, reply.elapsed_s, None)
    cost, served = yield from _charge(ctx, prog, step, verdict.outcome, usage, extra, dropped)
    if sel.on_attempt is not None:
        seen = (verdict.outcome, reply.status, after - now, cost, verdict.detail)
        yield _notify(ctx, prog, served, decision, *seen)
    if verdict.outcome is Outcome.ok:
        return _result(prog, ctx, reply, cost - extra, usage, served, "ok")  # (extra: sunk)
    if step.watch_s is not None:
        # A watched attempt's next step was planned to follow its check; one that failed fast
        # plans again, with the time it saved.
        prog.detail = verdict.detail
        if not verdict.retryable or prog.attempts >= ctx.most:
            return _failed(prog, ctx, verdict.detail)
        return None
    return _after_failure(ctx, prog, at, step, verdict, recorded, now)


def _cut(
    ctx: CallContext, prog: Progress, at: Following, step: Step, reply: Reply, now: float
) -> Generator[Effect, Any, CallResult | Following | None]:
    """A watched attempt cut for its pace: its pace recorded (the tier served it, slowly), its
    bill so far charged, and the schedule's next attempt (or a plan afresh when none is left)."""
    call = prog.call
    reported = read_usage(reply.payload, ctx.dialect) if reply.payload is not None else None
    usage = reported
    if usage is None:  # billed as estimated; its prefill as expected
        usage = Usage(call.input_tokens, call.cached_input_tokens, reply.tokens, None)
    tps = None
    if reply.ttft_s is not None and usage.completion_tokens > 1:
        generating = reply.elapsed_s - reply.ttft_s
        tps = (usage.completion_tokens - 1) / generating if generating > 0 else None
    key = key_of(ctx.keys, step.tier)
    ttft = reply.ttft_s
    if ttft is not None:  # the signals learn a TTFT less its prompt's prefill
        unread = reported.uncached_tokens if reported is not None else call.uncached_input_tokens
        ttft = ctx.prices.tiers[step.tier].spec.priors.base_ttft(ttft, unread)
    yield Record(
        key, Observation(Outcome.ok, ttft_s=ttft, output_tps=tps), reported, ctx.prompt, cut=True
    )
    cost, _ = bill(ctx.prices, step, usage)
    prog.sunk += cost
    prog.cuts += 1
    if ctx.sel.ledger_enabled:
        # Charged now, under an id of its own (the call's is settled once, by its last
        # attempt): an interrupted call still counts it.
        yield Settle(f"{ctx.call_id}#cut{prog.cuts}", cost)
        yield Release(ctx.call_id)
    prog.detail = "cut: its pace would have missed the deadline"
    after = yield Now()
    if ctx.sel.on_attempt is not None:
        seen = (Outcome.timeout, reply.status, after - now, cost, prog.detail)
        yield _notify(ctx, prog, step.tier, at.decision, *seen)
    if prog.attempts >= ctx.most:
        return _failed(prog, ctx, prog.detail)
    nxt = at.index + 1
    if nxt == len(at.decision.plan):
        return None
    # The next step follows now: a check comes with the first tokens after its time, so later
    # than planned (the time the next step has is read again before it goes).
    late = after - (at.decided_at + at.decision.plan[nxt].start_s)
    return Following(at.decision, nxt, at.decided_at + max(0.0, late))


def _notify(
    ctx: CallContext,
    prog: Progress,
    tier: str,
    decision: Decision,
    outcome: Outcome,
    status: int,
    latency_s: float,
    cost: float,
    detail: str,
) -> Notify:
    """The on_attempt hook's record of the attempt just made."""
    record = AttemptRecord(
        ctx.call_id,
        prog.attempts,
        ctx.prices.name,
        tier,
        decision,
        outcome,
        status,
        latency_s,
        cost,
        detail,
    )
    return Notify(record)


def _charge(
    ctx: CallContext,
    prog: Progress,
    step: Step,
    outcome: Outcome,
    usage: Usage | None,
    extra: float,
    dropped: float = 0.0,
) -> Generator[Effect, Any, tuple[float, str]]:
    """What the attempt is charged (``extra``: a hedge's loser, billed before it; ``dropped``:
    the bill of a failed attempt the provider worked on, a timeout) and the tier that served
    it; the budget settled, or released when there is nothing to charge.

    Bills of requests given up on count as sunk (estimates in the call's cost) and are settled
    under ids of their own (``<call>#hedge<n>``, ``#timeout<n>``), as a cut is: the call's own
    is settled once, by its last attempt, and its reservation then covers that attempt alone.
    A ledger that accounts each call's attempts itself (the batch job's, which charges doubt:
    ``charges_doubt``) takes the call's own id only: the loser's bill goes into the attempt's."""
    budgeted = ctx.sel.ledger_enabled
    # A race's loser (lost to a failure, or won), a request that timed out: billed, given up.
    yield from _given_up(ctx, prog, "hedge", extra)
    if outcome is not Outcome.ok:
        yield from _given_up(ctx, prog, "timeout", dropped)
        if budgeted and ctx.sel.charges_doubt and extra + dropped > 0:
            yield Settle(ctx.call_id, extra + dropped)
        elif budgeted:
            yield Release(ctx.call_id)
        return extra + dropped, step.tier
    cost, served = bill(ctx.prices, step, usage)
    if budgeted:
        yield Settle(ctx.call_id, cost + extra if ctx.sel.charges_doubt else cost)
    return cost + extra, served


def _given_up(
    ctx: CallContext, prog: Progress, kind: str, owed: float
) -> Generator[Effect, Any, None]:
    """The bill of a request given up on (``kind``: a race's loser, a timeout), ``owed``: sunk,
    and settled under an id of its own unless the ledger charges the call's attempts itself
    (see `_charge`)."""
    if owed > 0:
        prog.sunk += owed
        if ctx.sel.ledger_enabled and not ctx.sel.charges_doubt:
            yield Settle(f"{ctx.call_id}#{kind}{prog.attempts}", owed)


def _after_failure(
    ctx: CallContext,
    prog: Progress,
    at: Following,
    step: Step,
    verdict: Classified,
    recorded: Any,
    now: float,
) -> CallResult | Following | None:
    """After a failed attempt: the call's end, the schedule's next attempt (a failure it
    planned for), or None to plan again."""
    prog.detail = verdict.detail
    if not verdict.retryable or prog.attempts >= ctx.most:
        return _failed(prog, ctx, verdict.detail)
    decision, nxt = at.decision, at.index + 1
    if nxt < len(decision.plan) and verdict.outcome in _PLANNED:
        # The failure the schedule planned for: its next attempt follows, at its start, unless
        # it goes to this tier again and the tier has since asked for a pause (a Retry-After)
        # or opened its circuit: then the call plans again.
        again = decision.plan[nxt].tier == step.tier
        paused = verdict.retry_after_s is not None or (
            isinstance(recorded, TierStats)
            and circuit_state(recorded, ctx.sel.signal_config, now)[0] is not CircuitState.closed
        )
        if not (again and paused):
            return Following(decision, nxt, at.decided_at)
    return None


def _result(
    prog: Progress,
    ctx: CallContext,
    reply: Reply,
    cost: float,
    usage: Usage | None,
    tier: str,
    detail: str,
    *,
    pending: bool = False,
) -> CallResult:
    return CallResult(
        True,
        reply,
        tuple(prog.decisions),
        prog.attempts,
        cost + prog.sunk,
        usage,
        tier,
        ctx.call_id,
        detail,
        pending_stream=pending,
        started_at=ctx.start,
        max_tokens_set=prog.cap,
        steps=tuple(prog.steps),
        sunk_usd=prog.sunk,
        uncached_input_tokens=prog.call.uncached_input_tokens,
        prompt=ctx.prompt,
        output_cap=prog.cap if prog.cap is not None else prog.call.max_output_tokens,
    )


def _racer(decision: Decision, index: int) -> Step | None:
    """The step that races step ``index`` of the plan (a hedge's second attempt), if any."""
    nxt = index + 1
    if nxt < len(decision.plan) and decision.plan[nxt].hedge_s is not None:
        return decision.plan[nxt]
    return None


def _race(
    ctx: CallContext, decision: Decision, first: Send, racer: Step, prog: Progress
) -> Generator[Effect, Any, tuple[Step, Reply, float]]:
    """Run a hedge: ``first``, raced by ``racer`` after its delay. Records the loser if it
    answered, and returns the winner's step and reply and what the loser is billed: nothing
    if it failed or was never sent; if cancelled, its prompt and the output it generated until
    then (at its tier's expected rate); if left to finish (a shell that cannot cancel), its
    worst case."""
    hedge_s = racer.hedge_s or 0.0
    second_body = apply_step(ctx.body, racer)
    if prog.cap is not None:
        second_body["max_tokens"] = prog.cap
    # Its timeout is the time left when the race starts, less the time until it goes.
    given_up = partial(_partial_bill, ctx, prog, racer, payload=None)
    second = Send(racer, second_body, racer.headers, first.timeout_s, None, given_up)
    raced: Raced = yield Race(first, second, hedge_s)
    prog.attempts += 2 if raced.other_sent else 1
    steps = (first.step, racer)
    won, lost = steps[raced.winner], steps[1 - raced.winner]
    if raced.other_sent:
        prog.decisions.append(decision)
        prog.steps.append(lost)  # the loser first: a call's last step is the one that answered
    if raced.other is not None:
        verdict = classify_reply(raced.other)
        yield Record(
            key_of(ctx.keys, lost.tier),
            Observation(verdict.outcome, retry_after_s=verdict.retry_after_s),
        )
        return won, raced.reply, 0.0
    if not raced.other_sent:
        return won, raced.reply, 0.0
    if not raced.cancelled:
        return won, raced.reply, lost.worst_cost_usd
    # The prompt as the winner's usage counted it (the same prompt), else as estimated.
    bill_ = _partial_bill(ctx, prog, lost, raced.other_elapsed_s, raced.reply.payload)
    return won, raced.reply, bill_


def _partial_bill(
    ctx: CallContext, prog: Progress, step: Step, elapsed_s: float, payload: Any
) -> float:
    """What an attempt the client gave up on ``elapsed_s`` after its send (a hedge's loser
    cancelled in flight, a timeout) is billed: its prompt, and the output it generated until
    then at its tier's expected rate after its expected first token; at most its worst case.
    The prompt is counted as ``payload``'s usage says (another reply to the same prompt), else
    as estimated."""
    call = prog.call
    health = prog.signals.get(step.tier) if prog.signals is not None else None
    ttft = _ttft(ctx, prog, step.tier)
    out = 0.0
    if health is not None and ttft is not None:
        out = max(0.0, elapsed_s - ttft) * health.output_tps
    out = min(out, float(prog.cap if prog.cap is not None else call.max_output_tokens))
    usage = read_usage(payload, ctx.dialect) if payload is not None else None
    prompt, cached = call.input_tokens, call.cached_input_tokens
    if usage is not None:
        prompt, cached = usage.prompt_tokens, usage.cached_tokens
    billed = charge(ctx.prices, step.tier, prompt, cached, round(out))
    return min(billed, step.worst_cost_usd)


def _ttft(ctx: CallContext, prog: Progress, tier: str) -> float | None:
    """The call's expected time to first token on ``tier`` at its last decision: the tier's,
    and its prompt's prefill."""
    health = prog.signals.get(tier) if prog.signals is not None else None
    if health is None:
        return None
    prefill = ctx.prices.tiers[tier].spec.priors.prefill_s(prog.call.uncached_input_tokens)
    return health.ttft_s + prefill


def _failed(prog: Progress, ctx: CallContext, detail: str) -> CallResult:
    return CallResult(
        False,
        prog.last_reply,
        tuple(prog.decisions),
        prog.attempts,
        prog.sunk,
        None,
        prog.last_tier,
        ctx.call_id,
        detail,
        started_at=ctx.start,
        max_tokens_set=prog.cap,
        steps=tuple(prog.steps),
        sunk_usd=prog.sunk,
    )
