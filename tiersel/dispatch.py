"""One call's attempts, written once as a generator of effects; thin sync and async shells run it.

The flow decides, reserves budget, asks for a send, classifies what came back, records it into
the signals, charges or releases, and re-decides after a shed or a rate limit while the deadline,
the budget and the attempt bound allow. It does no I/O itself: each effect it yields (read the
signals, reserve, send, sleep, ...) is carried out by the shell, which sends back the result, the
way httpx drives its auth flows.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from tiersel.call import BudgetState, Call, Requirements
from tiersel.cost import charge
from tiersel.decision import Decision, Reason, Step
from tiersel.dialects import (
    Classified,
    Dialect,
    Usage,
    apply_step,
    classify,
    max_output_tokens,
    read_usage,
)
from tiersel.errors import BudgetExhausted, NoFeasibleTier, RequestNotUnderstood
from tiersel.pricing import ModelPrices, Pricing
from tiersel.schedule import MAX_BACKOFF_S
from tiersel.signals import (
    CircuitState,
    Observation,
    Outcome,
    SignalConfig,
    SignalKey,
    TierHealth,
    TierStats,
    circuit_state,
)

__all__ = [
    "AttemptRecord",
    "CallResult",
    "FlowHost",
    "Reply",
    "StreamEnd",
    "classify_reply",
    "stream_flow",
]


class FlowHost(Protocol):
    """What a call's flow reads from whoever runs it (a `tiersel.Selector`): settings, the price
    table, the policy and the signals' reading. The flow does no I/O: stores, clock and sends
    are the shell's, reached through the effects it yields."""

    pricing: Pricing
    policy: Callable[..., Decision]
    signal_config: SignalConfig
    endpoint: str
    max_attempts: int
    backoff_s: float
    unbounded_output: str
    budget_wait_s: float
    on_attempt: Callable[[AttemptRecord], None] | None

    @property
    def ledger_enabled(self) -> bool: ...

    def signal_keys(self, model: str) -> tuple[SignalKey, ...]: ...

    def assess(
        self, key: SignalKey, stats: TierStats, now: float, *, probing: bool = False
    ) -> TierHealth: ...


@dataclass(frozen=True, slots=True)
class Reply:
    """What one attempt got back, as the shell saw it.

    ``payload`` is the parsed JSON body (None for a stream or a non-JSON body); ``error`` names a
    transport failure (no response); ``raw`` is the shell's own response object.
    """

    status: int
    headers: Mapping[str, str]
    payload: Any
    elapsed_s: float
    streaming: bool = False
    timed_out: bool = False
    error: str | None = None
    raw: Any = None
    wall_s: float | None = None
    """When an error reply arrived, in Unix seconds (the shell reads the wall clock): dates a
    Retry-After given as an HTTP date when the response has no Date header. None: not known."""


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt, for logs and metrics (handed to ``Selector(on_attempt=...)``)."""

    call_id: str
    attempt: int
    model: str
    tier: str
    decision: Decision
    outcome: Outcome
    status: int
    latency_s: float
    cost_usd: float
    detail: str


@dataclass(frozen=True, slots=True)
class CallResult:
    """How a call ended: the last reply, each attempt's decision and step, what it cost.

    ``decisions[i]`` is the decision attempt *i* followed (the same one for the attempts of one
    schedule), ``steps[i]`` the step of its plan that attempt sent. Of a hedge's two attempts
    that raced, the loser comes first: the last step is always the one that answered.
    """

    ok: bool
    reply: Reply | None
    decisions: tuple[Decision, ...]
    attempts: int
    cost_usd: float
    usage: Usage | None
    tier: str | None
    call_id: str
    detail: str = ""
    pending_stream: bool = False
    started_at: float = 0.0
    max_tokens_set: int | None = None
    """The output cap tiersel put in a body that stated none (under a budget), else None."""
    budget_stopped: bool = False
    """The budget could not cover a retry, so the call stopped after a failed attempt."""
    steps: tuple[Step, ...] = ()

    @property
    def decision(self) -> Decision | None:
        return self.decisions[-1] if self.decisions else None

    @property
    def step(self) -> Step | None:
        """The step the last attempt sent."""
        return self.steps[-1] if self.steps else None

    @property
    def tried(self) -> tuple[str, ...]:
        """The tier of each attempt, in order."""
        return tuple(str(s.tier) for s in self.steps)

    @property
    def response(self) -> Any:
        """The last attempt's response object (an ``httpx.Response`` from `Selector.send`)."""
        return self.reply.raw if self.reply is not None else None


# -- effects ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Now:
    pass


@dataclass(frozen=True, slots=True)
class ReadSignals:
    keys: tuple[SignalKey, ...]


@dataclass(frozen=True, slots=True)
class ClaimProbe:
    key: SignalKey


@dataclass(frozen=True, slots=True)
class ReadBudget:
    pass


@dataclass(frozen=True, slots=True)
class Reserve:
    call_id: str
    amount_usd: float


@dataclass(frozen=True, slots=True)
class Settle:
    call_id: str
    amount_usd: float


@dataclass(frozen=True, slots=True)
class Release:
    call_id: str


@dataclass(frozen=True, slots=True)
class Send:
    step: Step
    body: dict[str, Any]
    headers: Mapping[str, str]
    timeout_s: float | None


@dataclass(frozen=True, slots=True)
class Race:
    """Send ``first``; if it has not answered ``after_s`` seconds later (or as soon as it fails
    with an error worth another attempt), send ``second`` too. The first success wins, the other
    is cancelled: a hedge (`tiersel.hedge`). ``second.timeout_s`` is the time left when the race
    starts: the shell sends it with what is left when it goes. Answered with a `Raced`."""

    first: Send
    second: Send
    after_s: float


@dataclass(frozen=True, slots=True)
class Raced:
    """How a `Race` ended. ``winner`` (0: first, 1: second) sent ``reply``: the first success, or
    when both failed the later failure. ``other`` is the other's reply if it answered (a
    failure); ``other_sent`` whether the second was sent at all. The other, sent and not
    answered, was ``cancelled`` after ``other_elapsed_s`` (its bill stops there), or, where the
    shell cannot cancel a request in flight (a sync transport), left to finish unread."""

    winner: int
    reply: Reply
    other: Reply | None = None
    other_sent: bool = False
    other_elapsed_s: float = 0.0
    cancelled: bool = True


@dataclass(frozen=True, slots=True)
class Record:
    key: SignalKey
    observation: Observation


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Notify:
    record: AttemptRecord


Effect = (
    Now
    | ReadSignals
    | ClaimProbe
    | ReadBudget
    | Reserve
    | Settle
    | Release
    | Send
    | Race
    | Record
    | Sleep
    | Notify
)
Flow = Generator[Effect, Any, CallResult]


@dataclass(slots=True)
class _Progress:
    call: Call  # the call (its output cap sized to the budget's share, if so)
    cap: int | None = None  # the output cap tiersel sets (see _output_cap)
    decisions: list[Decision] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    attempts: int = 0
    last_reply: Reply | None = None
    last_tier: str | None = None
    waited: bool = False
    detail: str = ""
    money_waited: float = 0.0  # seconds spent waiting for reservations in flight to settle
    money_polls: int = 0
    refused: tuple[Reason, ...] = ()  # the budget's refusal that started those waits
    signals: Mapping[str, TierHealth] | None = None  # the tiers' health at the last decision
    budget: BudgetState | None = None  # the budget at the last decision


_PLANNED = frozenset({Outcome.shed, Outcome.rate_limited, Outcome.error})
"""Failures a schedule plans for: answered fast, so its next attempt follows as planned."""
_LATE_S = 0.5
"""How far behind its schedule a call may be and still follow it rather than plan again."""


@dataclass(slots=True)
class _Following:
    """The schedule a call is following: its decision, the next attempt, when it was decided."""

    decision: Decision
    index: int
    decided_at: float


@dataclass(slots=True)
class _Ctx:
    """What one call's flow keeps fixed: its host, request, call, limits and start."""

    sel: FlowHost
    body: Mapping[str, Any]
    dialect: Dialect
    requirements: Requirements
    call_id: str
    max_wait: Callable[[], float | None] | None
    prices: ModelPrices
    keys: tuple[SignalKey, ...]
    most: int  # attempts allowed
    ceiling: int | None  # the output cap before the budget's share sizes it
    sized: bool  # the output cap is the call's share of the money left
    start: float = 0.0


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
) -> Flow:
    """The attempts of one call. Raises `NoFeasibleTier` or `BudgetExhausted` before any send.

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
    ctx = _context(sel, body, dialect, call, requirements, call_id, max_wait)
    ctx.start = now = yield Now()
    prog = _Progress(call, ctx.ceiling)
    following: _Following | None = None
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
) -> _Ctx:
    prices = sel.pricing.model(call.model)
    ceiling = _output_cap(sel, body, dialect, call)
    most = requirements.max_attempts or sel.max_attempts
    if requirements.max_attempts is None and most != getattr(sel.policy, "max_attempts", most):
        requirements = requirements.model_copy(update={"max_attempts": most})
    if requirements.hedge and body.get("stream") is True:
        # A stream answers with its first token, which says nothing of when it ends: a race
        # settled then would not protect the deadline the hedge is priced for.
        requirements = requirements.model_copy(update={"hedge": False})
    sized = ceiling is not None and sel.unbounded_output == "share"
    keys = sel.signal_keys(prices.name)
    return _Ctx(
        sel, body, dialect, requirements, call_id, max_wait, prices, keys, most, ceiling, sized
    )


def _follow(
    at: _Following, now: float, prog: _Progress
) -> Generator[Effect, Any, _Following | object | None]:
    """The schedule's next attempt, due now; `_AGAIN` after sleeping until its planned start;
    None when the call is behind its schedule and must plan again."""
    step = at.decision.plan[at.index]
    due = at.decided_at + step.start_s
    if now > due + _LATE_S:
        return None
    if due > now:
        yield Sleep(due - now)
        prog.waited = True
        return _AGAIN
    return at


def _health(ctx: _Ctx, now: float) -> Generator[Effect, Any, dict[str, TierHealth]]:
    """Every tier's health now, from its counters (claiming the probe of a half-open one)."""
    sel = ctx.sel
    stats: list[TierStats] = yield ReadSignals(ctx.keys)
    signals: dict[str, TierHealth] = {}
    for key, st in zip(ctx.keys, stats, strict=True):
        health = sel.assess(key, st, now)
        if health.state is CircuitState.half_open:
            claimed = yield ClaimProbe(key)
            health = sel.assess(key, st, now, probing=claimed)
            if not claimed:
                health = _as_open(health, sel.signal_config.probe_interval_s)
        signals[key.tier] = health
    return signals


def _plan(
    ctx: _Ctx, prog: _Progress, req: Requirements, now: float
) -> Generator[Effect, Any, _Following | CallResult | object]:
    """Decide the call's schedule from what the signals and the budget say now: its first
    attempt to follow; `_AGAIN` after a wait (a cooldown, money in flight); or the call's end."""
    sel = ctx.sel
    if prog.attempts:
        req = req.model_copy(update={"max_attempts": ctx.most - prog.attempts})
    signals = prog.signals = yield from _health(ctx, now)
    budget: BudgetState | None = (yield ReadBudget()) if sel.ledger_enabled else None
    prog.budget = budget
    call = prog.call
    if ctx.sized and ctx.ceiling is not None and budget is not None and prog.attempts == 0:
        # The cap is the call's share of the money left now, fixed once a request is sent.
        prog.cap = _shared_cap(ctx.ceiling, budget, ctx.prices, call, req)
        call = prog.call = call.model_copy(update={"max_output_tokens": prog.cap})
    try:
        decision = sel.policy(call, req, budget, ctx.prices, signals, now)
    except NoFeasibleTier as exc:
        return (yield from _no_plan(ctx, prog, req, signals, budget, exc))
    if decision.wait_s > 0:
        # The schedule starts once a tier's cooldown ends: wait, then plan again (the tier may
        # then be probed, or have recovered).
        yield Sleep(decision.wait_s)
        prog.waited = True
        return _AGAIN
    at = _Following(decision, 0, now)
    if prog.last_tier == decision.plan[0].tier and prog.attempts > 0:
        # Planned afresh onto the tier that just failed (a policy that plans one attempt at a
        # time): back off first, within the deadline.
        backoff = min(MAX_BACKOFF_S, sel.backoff_s * 2.0 ** min(prog.attempts - 1, 30))
        if req.deadline_s is None or backoff < req.deadline_s / 2:
            yield Sleep(backoff)
            at.decided_at = now + backoff
    return at


def _no_plan(
    ctx: _Ctx,
    prog: _Progress,
    req: Requirements,
    signals: Mapping[str, TierHealth],
    budget: BudgetState | None,
    exc: NoFeasibleTier,
) -> Generator[Effect, Any, CallResult | object]:
    """No schedule meets the requirements now: wait out a cooldown or money in flight
    (`_AGAIN`), end the call after attempts, or raise before any."""
    call = prog.call
    waitable = _waitable(signals, exc)
    cooling = _cooling(waitable)
    wait = _shortest_cooldown(waitable, req, call, ctx.max_wait) if cooling else None
    if prog.attempts == 0 and wait is None:
        # Nothing sent and no cooldown worth waiting out. When money alone bars the tiers that
        # could serve in time, the budget is what stops the call, unless money in flight
        # (other calls' reservations) would cover it once they settle.
        if budget is not None and _only_budget(exc, cooldowns_too_long=cooling):
            need = min(float(r.values[0]) for r in exc.reasons if r.code == "budget")
            pause = _money_wait(ctx.sel, need, budget, req, ctx.max_wait, prog)
            if pause is None:
                raise BudgetExhausted(call.model, exc.reasons) from None
            prog.refused = exc.reasons
            yield Sleep(pause)
            return _AGAIN
        if prog.refused:
            # It waited for money, and now time bars it: the budget stopped it.
            raise BudgetExhausted(call.model, prog.refused) from None
        if not cooling:
            raise exc
    if wait is None or prog.attempts >= ctx.most:
        return _failed(prog, ctx, prog.detail or str(exc))
    yield Sleep(wait)
    prog.waited = True
    return _AGAIN


def _reserve(
    ctx: _Ctx, prog: _Progress, at: _Following, req: Requirements
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
        pause = _money_wait(ctx.sel, worst, prog.budget, req, ctx.max_wait, prog)
        if pause is None:
            raise BudgetExhausted(prog.call.model, prog.refused or at.decision.reasons)
        yield Sleep(pause)
        return _AGAIN
    stopped = _failed(prog, ctx, "budget exhausted before a retry")
    return replace(stopped, budget_stopped=True)


def _attempt(
    ctx: _Ctx, prog: _Progress, at: _Following, req: Requirements
) -> Generator[Effect, Any, tuple[Step, Reply, float]]:
    """Send the attempt (or run a hedge's race): the step that answered, its reply, and what
    a hedge's loser is billed."""
    decision = at.decision
    step = decision.plan[at.index]
    send_body = apply_step(ctx.body, step)
    if prog.cap is not None:
        send_body["max_tokens"] = prog.cap
    sent = Send(step, send_body, step.headers, req.deadline_s)
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


def _conclude(
    ctx: _Ctx,
    prog: _Progress,
    at: _Following,
    step: Step,
    reply: Reply,
    extra: float,
    now: float,
) -> Generator[Effect, Any, CallResult | _Following | None]:
    """Record, charge and report what an attempt got back: the call's end, the schedule's next
    attempt after a failure it planned for, or None to plan again."""
    sel, decision = ctx.sel, at.decision
    # The attempt's latency is only reported to an on_attempt hook.
    after = (yield Now()) if sel.on_attempt is not None else now
    verdict = classify_reply(reply)
    if reply.streaming and verdict.outcome is Outcome.ok:
        # The stream's wrapper records, charges and notifies once the stream ends.
        return _result(prog, ctx, reply, extra, None, step.tier, "streaming", pending=True)
    usage = read_usage(reply.payload, ctx.dialect) if verdict.outcome is Outcome.ok else None
    recorded = yield Record(
        _key_of(ctx.keys, step.tier),
        Observation(
            verdict.outcome,
            latency_s=reply.elapsed_s,
            output_tps=_tps(usage, reply.elapsed_s, _ttft(prog, step.tier)),
            retry_after_s=verdict.retry_after_s,
        ),
    )
    cost, served = 0.0, step.tier
    if verdict.outcome is Outcome.ok:
        cost, served = _bill(ctx.prices, step, usage)
        cost += extra
        if sel.ledger_enabled:
            yield Settle(ctx.call_id, cost)
    elif sel.ledger_enabled:
        yield Settle(ctx.call_id, extra) if extra > 0 else Release(ctx.call_id)
    if sel.on_attempt is not None:
        yield Notify(
            AttemptRecord(
                ctx.call_id,
                prog.attempts,
                ctx.prices.name,
                served,
                decision,
                verdict.outcome,
                reply.status,
                after - now,
                cost,
                verdict.detail,
            )
        )
    if verdict.outcome is Outcome.ok:
        return _result(prog, ctx, reply, cost, usage, served, "ok")
    prog.detail = verdict.detail
    if not verdict.retryable or prog.attempts >= ctx.most:
        return _failed(prog, ctx, verdict.detail)
    nxt = at.index + 1
    if nxt < len(decision.plan) and verdict.outcome in _PLANNED:
        # The failure the schedule planned for: its next attempt follows, at its start, unless
        # it goes to this tier again and the tier has since asked for a pause (a Retry-After)
        # or opened its circuit: then the call plans again.
        again = decision.plan[nxt].tier == step.tier
        paused = verdict.retry_after_s is not None or (
            isinstance(recorded, TierStats)
            and circuit_state(recorded, sel.signal_config, now)[0] is not CircuitState.closed
        )
        if not (again and paused):
            return _Following(decision, nxt, at.decided_at)
    return None


def _bill(prices: ModelPrices, step: Step, usage: Usage | None) -> tuple[float, str]:
    """What a served attempt is charged, and the tier it is billed at: its usage at the tier
    that served (when the response says), or with no usage its worst case."""
    if usage is None:
        return step.worst_cost_usd, step.tier  # charge the worst case rather than nothing
    served = _served(usage, step.tier, prices.tiers)
    cost = charge(prices, served, usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens)
    return cost, served


def _result(
    prog: _Progress,
    ctx: _Ctx,
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
        cost,
        usage,
        tier,
        ctx.call_id,
        detail,
        pending_stream=pending,
        started_at=ctx.start,
        max_tokens_set=prog.cap,
        steps=tuple(prog.steps),
    )


def _racer(decision: Decision, index: int) -> Step | None:
    """The step that races step ``index`` of the plan (a hedge's second attempt), if any."""
    nxt = index + 1
    if nxt < len(decision.plan) and decision.plan[nxt].hedge_s is not None:
        return decision.plan[nxt]
    return None


def _race(
    ctx: _Ctx, decision: Decision, first: Send, racer: Step, prog: _Progress
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
    second = Send(racer, second_body, racer.headers, first.timeout_s)
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
            _key_of(ctx.keys, lost.tier),
            Observation(verdict.outcome, retry_after_s=verdict.retry_after_s),
        )
        return won, raced.reply, 0.0
    if not raced.other_sent:
        return won, raced.reply, 0.0
    if not raced.cancelled:
        return won, raced.reply, lost.worst_cost_usd
    return won, raced.reply, _cancelled_bill(ctx, prog, lost, raced)


def _cancelled_bill(ctx: _Ctx, prog: _Progress, lost: Step, raced: Raced) -> float:
    """What a hedge's loser cancelled in flight is billed: its prompt, and the output it
    generated until then at its tier's expected rate after its expected first token."""
    call = prog.call
    health = prog.signals.get(lost.tier) if prog.signals is not None else None
    out = 0.0
    if health is not None:
        out = max(0.0, raced.other_elapsed_s - health.ttft_s) * health.output_tps
    out = min(out, float(prog.cap if prog.cap is not None else call.max_output_tokens))
    # The prompt as the winner's usage counted it (the same prompt), else as estimated.
    payload = raced.reply.payload
    usage = read_usage(payload, ctx.dialect) if payload is not None else None
    prompt, cached = call.input_tokens, call.cached_input_tokens
    if usage is not None:
        prompt, cached = usage.prompt_tokens, usage.cached_tokens
    billed = charge(ctx.prices, lost.tier, prompt, cached, round(out))
    return min(billed, lost.worst_cost_usd)


def _key_of(keys: tuple[SignalKey, ...], tier: str) -> SignalKey:
    for key in keys:
        if key.tier == tier:
            return key
    raise KeyError(tier)


def _output_cap(sel: FlowHost, body: Mapping[str, Any], dialect: Dialect, call: Call) -> int | None:
    """The ``max_tokens`` to put in a body that states no output cap, or None to send it as it is.

    Under a budget, a reservation bounds a call's cost only if its output is bounded, so a body
    with no cap gets one, as the selector's ``unbounded_output`` says: ``"share"`` sizes it to
    the call's share of the money left (`_shared_cap`, at most ``default_max_output_tokens``,
    which this returns as the ceiling); ``"cap"`` sends ``default_max_output_tokens``
    (``call.max_output_tokens``); ``"refuse"`` refuses the call. Without a budget the body goes
    as the caller wrote it.
    """
    if not sel.ledger_enabled or max_output_tokens(body, dialect) is not None:
        return None
    if sel.unbounded_output == "refuse":
        raise RequestNotUnderstood(
            "the request sets no max_tokens: under a budget tiersel needs an output cap to bound"
            " its cost (set max_tokens, or Selector(unbounded_output='share') to have tiersel"
            " set one)"
        )
    return call.max_output_tokens


OUTPUT_SHARE = 0.25
"""The share of the money left that a call with no output cap may reserve (``"share"``)."""
OUTPUT_FLOOR = 256
"""The least output cap ``"share"`` sets: below it a call waits for money or is refused."""


def _shared_cap(
    ceiling: int, budget: BudgetState, prices: ModelPrices, call: Call, req: Requirements
) -> int:
    """The output cap for a call that states none: the most tokens `OUTPUT_SHARE` of the money
    left buys on the allowed tier with the cheapest output, after the prompt's bound, between
    `OUTPUT_FLOOR` and ``ceiling``. Each call in flight takes a share of what the ones before it
    left, so many calls at once each get a smaller cap rather than most being refused."""
    names = prices.default_tiers if req.tiers is None else req.tiers
    allowed = [p for name, p in prices.tiers.items() if name in names]
    if not allowed:
        return ceiling
    price = min(allowed, key=lambda p: p.output_per_token)
    if price.output_per_token <= 0:
        return ceiling
    share = budget.remaining_usd * OUTPUT_SHARE - call.input_tokens_bound * price.input_per_token
    affordable = int(share / price.output_per_token) if share > 0 else 0
    return max(min(ceiling, OUTPUT_FLOOR), min(ceiling, affordable))


_FIRST_POLL_S = 0.05


def _money_wait(
    sel: FlowHost,
    need: float,
    budget: BudgetState,
    req: Requirements,
    max_wait: Callable[[], float | None] | None,
    prog: _Progress,
) -> float | None:
    """How long a call the budget turned down waits before it looks again, or None to refuse.

    It waits only while other calls hold reservations whose settling would free enough (their
    bound is what they reserved; what they are billed is usually far less), within the
    selector's ``budget_wait_s``, the client's timeout (``max_wait()``) and half the time its
    deadline leaves. Polls start at 50 ms and double up to 1 s. Each wait is recorded in ``prog``.
    """
    if budget.reserved_usd <= 0 or need > budget.limit_usd - budget.spent_usd:
        return None  # nothing in flight, or not enough even once all of it comes back
    bound = sel.budget_wait_s
    if req.deadline_s is not None:
        bound = min(bound, prog.money_waited + req.deadline_s / 2)
    elif max_wait is not None:
        timeout = max_wait()
        if timeout is not None:
            bound = min(bound, timeout)
    room = bound - prog.money_waited
    if room < _FIRST_POLL_S:
        return None  # too little time left for a look that could change anything
    pause: float = min(_FIRST_POLL_S * 2.0 ** min(prog.money_polls, 5), 1.0, room)
    prog.money_waited += pause
    prog.money_polls += 1
    prog.waited = True
    return pause


def _only_budget(exc: NoFeasibleTier, *, cooldowns_too_long: bool = False) -> bool:
    """Whether the budget is all that bars the call: every tier not excluded by name was
    rejected for its cost against the money left (or, with ``cooldowns_too_long``, for a cooldown
    the call cannot wait out)."""
    ignored = {"not_allowed", "not_offered", "opt_in"}
    if cooldowns_too_long:
        ignored.add("cooldown")
    codes = {r.code for r in exc.reasons} - ignored
    return codes == {"budget"}


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """How a streamed reply ended, as the stream's wrapper measured it.

    ``outcome`` is ``ok`` when the stream reached its final event (or the caller closed it early),
    a failure when it broke. ``usage`` is what the stream reported (None if none arrived), or an
    estimate of what was billed when ``usage_estimated``; times are seconds since the attempt
    was sent.
    """

    outcome: Outcome
    usage: Usage | None
    elapsed_s: float
    ttft_s: float | None = None
    output_tps: float | None = None
    detail: str = "ok"
    usage_estimated: bool = False


def stream_flow(sel: FlowHost, result: CallResult, end: StreamEnd) -> Flow:
    """Complete a call whose reply was a stream (``result.pending_stream``), once it has ended.

    Records the stream's timings into the signals, charges the usage that arrived (the worst case
    when a complete stream reported none), settles the budget and notifies, as `call_flow` does
    for a reply that was read whole.
    """
    decision = result.decisions[-1]
    step = result.steps[-1]
    prices = sel.pricing.model(step.model)
    key = SignalKey(sel.endpoint, prices.name, step.tier)
    yield Record(
        key,
        Observation(
            end.outcome,
            latency_s=end.elapsed_s,
            ttft_s=end.ttft_s,
            output_tps=end.output_tps,
        ),
    )
    served = step.tier
    cost = result.cost_usd  # what the call was billed before its stream (a hedge's loser)
    if end.usage is not None:
        served = _served(end.usage, step.tier, prices.tiers)
        cost += charge(
            prices,
            served,
            end.usage.prompt_tokens,
            end.usage.cached_tokens,
            end.usage.completion_tokens,
        )
    elif end.outcome is Outcome.ok:
        cost += step.worst_cost_usd
    if sel.ledger_enabled:
        if cost > 0 or end.outcome is Outcome.ok:
            yield Settle(result.call_id, cost)
        else:
            yield Release(result.call_id)
    status = result.reply.status if result.reply is not None else 0
    yield Notify(
        AttemptRecord(
            result.call_id,
            result.attempts,
            prices.name,
            served,
            decision,
            end.outcome,
            status,
            end.elapsed_s,
            cost,
            end.detail,
        )
    )
    return replace(
        result,
        ok=end.outcome is Outcome.ok,
        cost_usd=cost,
        usage=end.usage,
        tier=served,
        detail=end.detail,
        pending_stream=False,
    )


def classify_reply(reply: Reply) -> Classified:
    """What one attempt's reply means: its outcome for the signals, and whether to try again."""
    if reply.timed_out:
        return Classified(Outcome.timeout, True, None, False, "timed out")
    if reply.error is not None:
        return Classified(Outcome.error, True, None, False, reply.error)
    return classify(reply.status, reply.headers, reply.payload, wall_now=reply.wall_s)


def _tps(usage: Usage | None, elapsed: float, ttft: float | None) -> float | None:
    """The output rate of a reply read whole: its tokens over the time after the first token.

    That time is not seen, so the tier's expected TTFT (``ttft``) is taken off the call's time,
    but at most half of it. Tokens over the whole call would understate the rate, most for short
    outputs, and a latency estimate built on it (TTFT plus tokens over rate) would count the TTFT
    twice: replays of the bundled traces then put a 400-token call on standard at 16 s where it
    took 12, and bought fast for it.
    """
    if usage is None or usage.completion_tokens <= 0 or elapsed <= 0:
        return None
    generating = elapsed - ttft if ttft is not None else elapsed
    return usage.completion_tokens / max(generating, 0.5 * elapsed)


def _ttft(prog: _Progress, tier: str) -> float | None:
    """The tier's expected time to first token at the call's last decision."""
    health = prog.signals.get(tier) if prog.signals is not None else None
    return health.ttft_s if health is not None else None


def _served(usage: Usage, asked: str, offered: Mapping[str, Any]) -> str:
    """Bill by the tier that served, when the response says so and it is one of the model's."""
    served = usage.served_tier
    if served is None or served == asked or asked not in ("standard", "priority"):
        return asked
    return served if served in offered else asked


def _as_open(health: TierHealth, wait: float) -> TierHealth:
    return replace(health, state=CircuitState.open, cooldown_s=wait)


# Rejections that no wait can lift: waiting out such a tier's cooldown would be for nothing.
_BARRED = frozenset({"cost_cap", "budget", "not_allowed", "not_offered", "opt_in"})


def _waitable(signals: Mapping[str, TierHealth], exc: NoFeasibleTier) -> Mapping[str, TierHealth]:
    """The tiers whose rejection a wait might lift (those not rejected for cost or by name)."""
    barred = {r.plan for r in exc.reasons if r.code in _BARRED}
    if not barred:
        return signals
    return {name: h for name, h in signals.items() if name not in barred}


def _cooling(signals: Mapping[str, TierHealth]) -> bool:
    return any(h.state is CircuitState.open for h in signals.values())


def _shortest_cooldown(
    signals: Mapping[str, TierHealth],
    req: Requirements,
    call: Call,
    max_wait: Callable[[], float | None] | None = None,
) -> float | None:
    """The shortest cooldown worth waiting out: with a deadline, one that leaves the tier its
    expected time to serve the call (a wait that ends too late to finish is no wait at all)."""
    deadline = req.deadline_s
    out = call.output_tokens_for_latency
    waits = [
        h.cooldown_s
        for name, h in signals.items()
        if h.state is CircuitState.open
        and (req.tiers is None or name in req.tiers)
        and (deadline is None or h.cooldown_s + h.ttft_s + out / h.output_tps < deadline)
    ]
    if not waits:
        return None
    wait = min(waits) + 1e-3
    if deadline is not None and wait >= deadline:
        return None
    if req.deadline_s is None and max_wait is not None:
        bound = max_wait()
        if bound is not None and wait > bound:
            return None
    return wait


def _failed(prog: _Progress, ctx: _Ctx, detail: str) -> CallResult:
    return CallResult(
        False,
        prog.last_reply,
        tuple(prog.decisions),
        prog.attempts,
        0.0,
        None,
        prog.last_tier,
        ctx.call_id,
        detail,
        started_at=ctx.start,
        max_tokens_set=prog.cap,
        steps=tuple(prog.steps),
    )


# -- shells -------------------------------------------------------------------------------------


def run(flow: Flow, perform: Callable[[Effect], Any]) -> CallResult:
    """Drive a flow synchronously."""
    value: Any = None
    while True:
        try:
            effect = flow.send(value)
        except StopIteration as stop:
            result: CallResult = stop.value
            return result
        try:
            value = perform(effect)
        except BaseException as exc:  # let the flow see the failure, then re-raise it
            flow.close()
            raise exc


async def arun(flow: Flow, perform: Callable[[Effect], Any]) -> CallResult:
    """Drive a flow from async code; ``perform`` returns a value or an awaitable."""
    value: Any = None
    while True:
        try:
            effect = flow.send(value)
        except StopIteration as stop:
            result: CallResult = stop.value
            return result
        try:
            value = perform(effect)
            if hasattr(value, "__await__"):
                value = await value
        except BaseException as exc:
            flow.close()
            raise exc
