"""The discrete-event replay: a trace's calls through one policy, on a virtual clock.

Every call runs the core's own attempt loop, `tiersel.engine.call_flow` (decide, reserve,
send, classify, record the signals, settle the budget, climb or back off after a shed), and
`tiersel.engine.stream_flow` once its stream ends, through a real `Engine` holding the
contender's policy and an in-memory signal store. This module is only the shell that drives
those flows, many at once, in time order, the way `Selector.send` drives one: when a flow asks
to send, the attempt goes to the simulated provider (`tiersel.sim.Provider.admit`) at the current
virtual time and the flow resumes when the reply is due; when it asks to sleep, it resumes that
much later. Nothing waits in real time, so an hour of traffic replays in seconds.

What the shell assumes, as a client would see it:

- calls are streamed (`Workload.stream`): the stream opens at the time to first token, ends at
  the last token, and reports its usage; TTFT and the output rate reach the signals;
- the client's timeout is the call's remaining deadline: an attempt still running then is
  abandoned (before its first token, or mid-stream) and counts as a failure. The provider bills
  a request given up on for its prompt and the output made until then, as the simulator's
  server does: tiersel charges one abandoned before its first token at that bill as expected
  (`tiersel.engine.flow`), and one abandoned mid-stream at the tokens its stream showed, as
  the transport does;
- refusals (503, 429) and errors come back after the provider's own refusal latency.

Each replay gets its own `Provider` (the same scenario and seed for every policy), so policies
see the same background load, and each attempt's random draws are keyed by call and attempt
number: the same call's n-th attempt has the same luck under every policy.

The ``oracle`` contender previews what every tier would do with each call (`Provider.preview`,
with the draws of the attempt it stands for) on each of the attempts a retrying client would
make, and sends the call once, to the cheapest tier that would serve it within its deadline, at
the earliest such attempt; a call no tier can serve in time is not sent. It never pays for a
failed or late call. It does not hold calls back for minutes to wait for cheaper capacity, and
our own traffic loads the provider, so its choices shape later calls' fates as any policy's do.
It is the lower bound on cost for sending at once: the baselines here never wait on purpose, and
the tests check it for every policy on the conversation slice under every scenario. It is not one
for a policy that holds a call with minutes to spare until a spell of sheds passes, as tiersel
does: on azure-code's first 1,000 calls under calm, tiersel paid $6.82 and the oracle $6.90, both
at 100% (`tiersel simulate --trace azure-code --limit 1000 --scenario calm`).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiersel.budget import Ledger
from tiersel.call import Call, Requirements
from tiersel.clock import FakeClock
from tiersel.cost import tier_cost
from tiersel.dialects import Dialect, Usage
from tiersel.engine.core import Engine
from tiersel.engine.effects import Now, Send, Sleep, Watch
from tiersel.engine.flow import call_flow
from tiersel.engine.results import CallResult, Reply, StreamEnd
from tiersel.engine.stream import stream_flow
from tiersel.errors import BudgetExhausted, NoFeasibleTier
from tiersel.pricing import ModelPrices, Pricing, load_pricing
from tiersel.prompts import Prompt
from tiersel.replay.baselines import POLICY_NAMES, Contender, contender
from tiersel.replay.capacity import DEFAULT_TENANT_SHARE, sized
from tiersel.replay.metrics import AttemptEvent, CallRecord, PolicyMetrics, summarize
from tiersel.replay.mix import DEFAULT_MIX, Mix
from tiersel.replay.traces import Trace, TraceRequest, check_limits
from tiersel.signals import MemorySignalStore, Outcome
from tiersel.sim import Provider, Scenario, SimRequest, SimResult, load_scenario
from tiersel.watch import check_at, projected_finish

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_SCENARIO",
    "Comparison",
    "ReplayResult",
    "Workload",
    "compare",
    "replay",
]

DEFAULT_SCENARIO = "busy"
"""The scenario `compare` uses unless told: standard is shed at times (one busy minute in ten).

`peak` (standard shed heavily for three and a half minutes in ten) is the harder case.
"""

ORACLE_ATTEMPTS = 4
"""The attempts the oracle may choose among for a call, as many as the retrying contenders make."""

ORACLE_OFFSETS_S = (0.0, 0.4, 1.0, 2.0)
"""When, after its arrival, a retrying client sends a call's n-th attempt: each shed answers in
0.2 s and the backoff doubles from 0.2 s (the `Selector` defaults, as always-standard does)."""

DEFAULT_MODEL = "kimi-k3"
"""The model every replayed call asks for unless told (it offers standard, priority and fast)."""


@dataclass(frozen=True, slots=True)
class Workload:
    """The calls of a replay: a trace's requests, each with a requirement class and requirements.

    Each request becomes a `Call` whose ``max_output_tokens`` is the trace's generated tokens (as
    if callers sized ``max_tokens`` to the reply; at least 1); the simulator generates exactly
    that many. With ``stream`` (the default) calls are streamed, as chat clients do, so time to
    first token and the output rate are measured from the stream and reach the signals, as
    tiersel's transport wrapper does; without it only the whole reply's duration is seen.
    """

    trace: Trace
    model: str
    classes: tuple[str, ...]
    requirements: tuple[Requirements, ...]
    mix: str
    stream: bool = True

    @classmethod
    def build(
        cls,
        trace: Trace,
        mix: Mix = DEFAULT_MIX,
        *,
        seed: int = 0,
        model: str = DEFAULT_MODEL,
        stream: bool = True,
    ) -> Workload:
        """Assign ``mix``'s requirements to ``trace``'s calls, reproducibly for ``seed``."""
        assigned = mix.assign(trace.requests, seed)
        return cls(
            trace=trace,
            model=model,
            classes=tuple(name for name, _ in assigned),
            requirements=tuple(req for _, req in assigned),
            mix=str(mix),
            stream=stream,
        )

    def __len__(self) -> int:
        return len(self.trace)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """One policy's replay: a record per call, every attempt the provider saw, and the figures."""

    policy: str
    records: tuple[CallRecord, ...]
    attempts: tuple[AttemptEvent, ...]
    metrics: PolicyMetrics


@dataclass(frozen=True, slots=True)
class Comparison:
    """Several policies replayed on the same workload, scenario and seed."""

    trace: str
    calls: int
    duration_s: float
    speedup: float
    scenario: str
    replicas: int
    tenant_share: float
    mix: str
    model: str
    seed: int
    results: tuple[ReplayResult, ...] = field(repr=False)

    @property
    def policies(self) -> tuple[PolicyMetrics, ...]:
        return tuple(r.metrics for r in self.results)

    def metrics(self, policy: str) -> PolicyMetrics:
        """One policy's figures, by name."""
        for r in self.results:
            if r.policy == policy:
                return r.metrics
        raise KeyError(policy)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trace": self.trace,
            "calls": self.calls,
            "duration_s": self.duration_s,
            "speedup": self.speedup,
            "scenario": self.scenario,
            "replicas": self.replicas,
            "tenant_share": self.tenant_share,
            "mix": self.mix,
            "model": self.model,
            "seed": self.seed,
            "policies": [m.to_dict() for m in self.policies],
        }


def compare(
    trace: Trace,
    *,
    policies: Sequence[str | Contender] | None = None,
    scenario: Scenario | str | Path = DEFAULT_SCENARIO,
    mix: Mix = DEFAULT_MIX,
    speedup: float = 1.0,
    seed: int = 0,
    model: str = DEFAULT_MODEL,
    pricing: Pricing | None = None,
    tenant_share: float = DEFAULT_TENANT_SHARE,
) -> Comparison:
    """Replay ``trace`` (compressed ``speedup`` times) through each named policy.

    ``policies`` holds names (`POLICY_NAMES`, the default being all of them) or `Contender`
    objects, for a policy of your own. The scenario's pools are first sized to the uncompressed
    trace (`tiersel.replay.capacity`): at speedup 1 it takes about ``tenant_share`` of them. A
    request past what the model reads or writes is a `TraceError` (`check_limits`).

    >>> from tiersel.replay.traces import parse_trace
    >>> t = parse_trace("timestamp_s,input_tokens,output_tokens\\n0,900,60\\n1,1200,80\\n")
    >>> c = compare(t, policies=["tiersel", "always-priority"], scenario="calm")
    >>> [(m.policy, m.attainment) for m in c.policies]
    [('tiersel', 1.0), ('always-priority', 1.0)]
    """
    pricing = pricing if pricing is not None else load_pricing()
    check_limits(trace, pricing.model(model))
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    sc, replicas = sized(sc, trace, tenant_share)
    fast = trace.compressed(speedup)
    work = Workload.build(fast, mix, seed=seed, model=model)
    results = tuple(
        replay(
            work,
            who if isinstance(who, Contender) else contender(who),
            scenario=sc,
            seed=seed,
            pricing=pricing,
        )
        for who in (policies or POLICY_NAMES)
    )
    return Comparison(
        trace=trace.name,
        calls=len(work),
        duration_s=fast.duration_s,
        speedup=speedup,
        scenario=sc.name,
        replicas=replicas,
        tenant_share=tenant_share,
        mix=work.mix,
        model=pricing.model(model).name,
        seed=seed,
        results=results,
    )


def replay(
    work: Workload,
    who: Contender,
    *,
    scenario: Scenario | str | Path = DEFAULT_SCENARIO,
    seed: int = 0,
    pricing: Pricing | None = None,
    ledger: Ledger | None = None,
    on_call: Callable[[CallRecord, float], None] | None = None,
) -> ReplayResult:
    """Replay ``work`` through one contender against a fresh simulated provider.

    ``ledger`` gives the engine a budget (calls the budget cannot cover fail with
    ``detail="budget"``); ``on_call(record, now)`` is told of each call as it ends, in time order.
    """
    pricing = pricing if pricing is not None else load_pricing()
    provider = Provider(scenario, seed=seed, pricing=pricing)
    started = time.perf_counter()
    engine = _Engine(work, who, provider, pricing, ledger, on_call)
    records, attempts = engine.run()
    wall = time.perf_counter() - started
    return ReplayResult(who.name, records, attempts, summarize(who.name, records, wall))


@dataclass(slots=True)
class _Flight:
    """One call in progress; ``streaming`` is the provider's answer to the attempt now streaming."""

    index: int
    request: TraceRequest
    requirements: Requirements
    flow: Any = None
    attempts: int = 0
    sheds: int = 0
    streaming: _Stream | None = None
    skipped: int = 0  # attempt numbers the oracle passed over (their draws would have failed)


@dataclass(frozen=True, slots=True)
class _Stream:
    """A streamed reply under way: when it was sent and how it will end."""

    sent_at: float
    end: StreamEnd


@dataclass(frozen=True, slots=True)
class _OracleWake:
    """The oracle's planned send time for a call has come."""

    tier: str
    attempt: int


@dataclass(frozen=True, slots=True)
class _StreamDone:
    """The event of a stream's end, carrying the attempt loop's pending result."""

    result: CallResult
    end: StreamEnd


_Event = tuple[float, int, _Flight, Any]


class _Engine:
    """Drives every call's flow in virtual time order against one provider."""

    def __init__(
        self,
        work: Workload,
        who: Contender,
        provider: Provider,
        pricing: Pricing,
        ledger: Ledger | None,
        on_call: Callable[[CallRecord, float], None] | None,
    ) -> None:
        self.work = work
        self.who = who
        self.provider = provider
        self.prices: ModelPrices = pricing.model(work.model)
        self.clock = FakeClock()
        self.engine = Engine(
            pricing=pricing,
            policy=who.policy,
            signals=MemorySignalStore(who.signal_config),
            clock=self.clock,
            ledger=ledger,
            signal_config=who.signal_config,
            max_attempts=who.max_attempts,
            backoff_s=who.backoff_s,
        )
        self.on_call = on_call
        self.heap: list[_Event] = []
        self.seq = itertools.count()
        self.records: list[CallRecord | None] = [None] * len(work)
        self.attempts: list[AttemptEvent] = []
        self.body: Mapping[str, Any] = {"model": self.prices.model_id, "messages": []}
        # Tiers in the order the oracle tries them for a call: cheapest first.
        self.tiers = self.prices.default_tiers

    def run(self) -> tuple[tuple[CallRecord, ...], tuple[AttemptEvent, ...]]:
        work = self.work
        for i, (req, requirements) in enumerate(
            zip(work.trace.requests, work.requirements, strict=True)
        ):
            self._push(req.arrival_s, _Flight(i, req, requirements), None)
        heap, clock = self.heap, self.clock
        while heap:
            t, _, flight, value = heapq.heappop(heap)
            behind = t - clock.now()
            if behind > 0:
                clock.advance(behind)
            if type(value) is _OracleWake:
                self._oracle_send(flight, value)
            elif flight.flow is None:
                self._start(flight)
            elif type(value) is _StreamDone:
                flight.flow = stream_flow(self.engine, value.result, value.end)
                self._resume(flight, None)
            else:
                self._resume(flight, value)
        records = tuple(r for r in self.records if r is not None)
        if len(records) != len(work):
            raise RuntimeError("a call of the replay never finished")  # a bug of this module
        return records, tuple(self.attempts)

    def _push(self, at: float, flight: _Flight, value: Any) -> None:
        heapq.heappush(self.heap, (at, next(self.seq), flight, value))

    def _call(self, flight: _Flight) -> tuple[Call, Prompt | None]:
        """The call a trace's request makes, and what the engine expects of its prompt's prefix
        (the caller knows its prompt's size, not what the provider has cached)."""
        req = flight.request
        call = Call(
            model=self.prices.name,
            input_tokens=req.input_tokens,
            max_output_tokens=max(1, req.output_tokens),
        )
        return self.engine.expect_cached(call, _prefixes(req))

    def _start(self, flight: _Flight, requirements: Requirements | None = None) -> None:
        if requirements is None:
            if self.who.oracle:
                self._oracle_plan(flight, 1)
                return
            requirements = flight.requirements
        call, prompt = self._call(flight)
        flight.flow = call_flow(
            self.engine,
            {**self.body, "max_tokens": call.max_output_tokens},  # the caller sized it
            Dialect.openai,
            call,
            requirements,
            f"call-{flight.index}",
            watch=True,  # `_send` watches an attempt's pace
            prompt=prompt,
        )
        self._resume(flight, None)

    def _resume(self, flight: _Flight, value: Any) -> None:
        flow = flight.flow
        perform = self.engine.perform
        try:
            while True:
                effect = flow.send(value)
                kind = type(effect)
                if kind is Now:
                    value = self.clock.now()
                elif kind is Send:
                    self._send(flight, effect)
                    return
                elif kind is Sleep:
                    self._push(self.clock.now() + effect.seconds, flight, None)
                    return
                else:
                    value = perform(effect)
        except StopIteration as stop:
            result: CallResult = stop.value
            stream = flight.streaming
            if result.pending_stream and stream is not None:
                flight.streaming = None
                done = _StreamDone(result, stream.end)
                self._push(stream.sent_at + stream.end.elapsed_s, flight, done)
                return
            # The oracle knows each outcome before it sends: it predicts nothing.
            oracle = self.who.oracle
            predicted = result.decisions[0].p_success if result.decisions and not oracle else None
            self._finish(flight, result.ok, result.tier, result.cost_usd, result.detail, predicted)
        except BudgetExhausted:
            self._finish(flight, False, None, 0.0, "budget")
        except NoFeasibleTier as exc:
            budget = any(r.code == "budget" for r in exc.reasons)
            self._finish(flight, False, None, 0.0, "budget" if budget else "no feasible tier")

    def _sim_request(self, flight: _Flight, body: Mapping[str, Any]) -> SimRequest:
        st = body.get("service_tier")
        return SimRequest(
            model=body["model"],
            prompt_tokens=flight.request.input_tokens,
            max_tokens=max(1, flight.request.output_tokens),
            service_tier=st if isinstance(st, str) else None,
            prefixes=_prefixes(flight.request),
        )

    def _send(self, flight: _Flight, effect: Send) -> None:
        now = self.clock.now()
        flight.attempts += 1
        request = self._sim_request(flight, effect.body)
        key = f"{flight.index}/{flight.skipped + flight.attempts}"
        result = self.provider.admit(request, now, key=key)
        self.attempts.append(
            AttemptEvent(now, result.tier or effect.step.tier, result.kind.value, flight.index)
        )
        if not result.ok:
            flight.sheds += result.status in (503, 429)
        timeout = effect.timeout_s
        watch = effect.watch
        if watch is not None and result.ok:
            cut = _cut(result, watch)
            if cut is not None:
                self._push(now + cut[0], flight, cut[1])
                return
        if not result.ok or not self.work.stream:
            if timeout is not None and result.duration_s > timeout:
                # The client gives up at its deadline (the SDK's timeout), with no answer.
                reply = Reply(0, {}, None, timeout, timed_out=True, error="timed out")
                self._push(now + timeout, flight, reply)
                return
            self._push(now + result.duration_s, flight, _reply(request, result))
            return
        if timeout is not None and result.ttft_s > timeout:
            reply = Reply(0, {}, None, timeout, timed_out=True, error="timed out")
            self._push(now + timeout, flight, reply)
            return
        # The stream opens with its first token; the attempt loop hands it over to be read, and
        # `stream_flow` records, charges and settles once it ends (or the client gives up on it
        # at its deadline, mid-stream: a failure, charged for the tokens it showed, as the
        # transport estimates a stream closed before its usage came).
        tps = result.output_tps
        if timeout is not None and result.duration_s > timeout:
            made = (timeout - result.ttft_s) * (tps or 0.0)
            shown = min(result.completion_tokens, round(made))
            seen = Usage(result.prompt_tokens, result.cached_tokens, max(1, shown), result.tier)
            end = StreamEnd(
                Outcome.timeout,
                seen,
                timeout,
                result.ttft_s,
                tps,
                "deadline passed mid-stream",
                usage_estimated=True,
            )
        else:
            end = StreamEnd(Outcome.ok, _usage(result), result.duration_s, result.ttft_s, tps)
        flight.streaming = _Stream(now, end)
        # A watched stream's tokens are held until its check: it opens no sooner.
        opens = max(result.ttft_s, watch.at_s) if watch is not None else result.ttft_s
        opened = Reply(200, {}, None, opens, streaming=True)
        self._push(now + min(opens, result.duration_s), flight, opened)

    def _oracle_plan(self, flight: _Flight, first: int) -> None:
        """Plan the call's one attempt: the cheapest tier that would serve it in time.

        The oracle looks at the attempts a retrying client would make (numbers ``first`` to
        `ORACLE_ATTEMPTS`, at the times `ORACLE_OFFSETS_S` after arrival) and previews each tier
        there with that attempt's draws; it takes the cheapest tier that some attempt serves
        within the deadline, at its earliest such attempt, and sends only that one.
        """
        req = flight.request
        now = self.clock.now()
        deadline = flight.requirements.deadline_s
        out = max(1, req.output_tokens)
        by_cost = sorted(
            self.tiers, key=lambda t: tier_cost(self.prices.tiers[t], req.input_tokens, 0, out)
        )
        best: tuple[int, int, float] | None = None  # (tier rank, attempt, send time)
        for attempt in range(first, ORACLE_ATTEMPTS + 1):
            at = max(now, req.arrival_s + ORACLE_OFFSETS_S[attempt - 1])
            for rank, tier in enumerate(by_cost):
                if best is not None and rank >= best[0]:
                    break
                if self._would_serve(flight, tier, attempt, at, deadline):
                    best = (rank, attempt, at)
                    break
            if best is not None and best[0] == 0:
                break
        if best is None:
            self._finish(flight, False, None, 0.0, "no tier would meet the deadline")
            return
        rank, attempt, at = best
        wake = _OracleWake(by_cost[rank], attempt)
        if at > now:
            self._push(at, flight, wake)
        else:
            self._oracle_send(flight, wake)

    def _oracle_send(self, flight: _Flight, wake: _OracleWake) -> None:
        """Send the planned attempt if it still would serve in time (the state may have moved)."""
        now = self.clock.now()
        deadline = flight.requirements.deadline_s
        if not self._would_serve(flight, wake.tier, wake.attempt, now, deadline):
            # Plan again from this attempt on: for it, the preview is now exact, so the plan
            # cannot pick the same failing send twice.
            self._oracle_plan(flight, wake.attempt)
            return
        flight.skipped = wake.attempt - 1
        update: dict[str, Any] = {"tiers": (wake.tier,)}
        if deadline is not None:
            update["deadline_s"] = deadline - (now - flight.request.arrival_s)
        self._start(flight, flight.requirements.model_copy(update=update))

    def _would_serve(
        self, flight: _Flight, tier: str, attempt: int, at: float, deadline: float | None
    ) -> bool:
        price = self.prices.tiers[tier]
        body = {"model": price.model_id}
        if price.service_tier is not None:
            body["service_tier"] = price.service_tier
        request = self._sim_request(flight, body)
        result = self.provider.preview(request, at, key=f"{flight.index}/{attempt}")
        if not result.ok:
            return False
        return deadline is None or at - flight.request.arrival_s + result.duration_s <= deadline

    def _finish(
        self,
        flight: _Flight,
        ok: bool,
        tier: str | None,
        cost: float,
        detail: str,
        predicted: float | None = None,
    ) -> None:
        now = self.clock.now()
        req = flight.request
        deadline = flight.requirements.deadline_s
        latency = now - req.arrival_s if ok else None
        met = ok and (deadline is None or (latency is not None and latency <= deadline + 1e-9))
        record = CallRecord(
            index=flight.index,
            arrival_s=req.arrival_s,
            klass=self.work.classes[flight.index],
            deadline_s=deadline,
            ok=ok,
            met=met,
            latency_s=latency,
            cost_usd=cost,
            attempts=flight.attempts,
            sheds=flight.sheds,
            tier=tier if ok else None,
            detail="" if ok else detail,
            predicted=predicted,
        )
        self.records[flight.index] = record
        if self.on_call is not None:
            self.on_call(record, now)


def _cut(result: SimResult, watch: Watch) -> tuple[float, Reply] | None:
    """A served attempt watched as ``watch`` says: when its pace, at its check, projects its
    end too late, the time of its cut and its reply (the tokens it generated until then); else
    None. (The provider's slot is not freed early: the load it sees stays a little high.)"""
    second = result.ttft_s + (result.token_s if result.completion_tokens > 1 else 0.0)
    at = min(check_at(watch.at_s, second), watch.finish_by_s)
    if result.duration_s <= at:
        return None  # it ended before its check
    first = result.ttft_s if result.ttft_s <= at else None
    tokens, last = 0, None
    if first is not None:
        # (A hair over: the check at the second token's time must count it, rounding aside.)
        done = (at - first) / result.token_s + 1e-9 if result.token_s > 0 else 0.0
        tokens = 1 + int(done)
        tokens = min(tokens, result.completion_tokens)
        last = first + (tokens - 1) * result.token_s
    if projected_finish(at, first, last, tokens, watch.tokens, watch.tps) <= watch.finish_by_s:
        return None
    usage = {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
    }
    return at, Reply(200, {}, {"usage": usage}, at, cut=True, ttft_s=first)


def _usage(result: SimResult) -> Usage:
    return Usage(result.prompt_tokens, result.cached_tokens, result.completion_tokens, result.tier)


def _reply(request: SimRequest, result: SimResult) -> Reply:
    """The provider's answer as the attempt loop reads a reply: status, headers, JSON body."""
    headers: dict[str, str] = {}
    if result.retry_after_s is not None:
        headers["retry-after"] = f"{result.retry_after_s:g}"
    payload: dict[str, Any]
    if result.ok:
        payload = {
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
            }
        }
        if request.service_tier is not None:
            payload["service_tier"] = "priority" if result.tier == "priority" else "default"
    else:
        payload = {
            "error": {
                "object": "error",
                "type": result.error_type or "error",
                "code": result.error_code or "error",
                "message": result.message or "",
            }
        }
    return Reply(result.status, headers, payload, result.duration_s)


def _prefixes(req: TraceRequest) -> tuple[tuple[bytes, int], ...]:
    """A trace request's cacheable prefix, as the simulator and the engine name prefixes."""
    return ((req.prefix.encode(), req.prefix_tokens),) if req.prefix is not None else ()
