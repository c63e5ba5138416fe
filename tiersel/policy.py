"""Policies: pure functions from (call, requirements, budget, prices, signals, now) to a `Decision`.

The default, `CheapestFeasible`, plans the whole schedule of attempts a call will make and picks
the cheapest that meets the requirements, in four named stages: candidates (which tiers may
serve this call, and their numbers), schedule pricing and feasibility (`tiersel.schedule`), and
the choice. A custom policy is any callable with the same signature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from operator import attrgetter
from typing import Any, Protocol, TypeGuard

from tiersel.call import MAX_ATTEMPTS, BudgetState, Call, Requirements
from tiersel.cost import tier_cost
from tiersel.decision import Decision, Reason, ReasonCode, Step, Verdict, new_decision
from tiersel.errors import NoFeasibleTier
from tiersel.hedge import HEDGE_SAVING, cheapest_hedge
from tiersel.pricing import ModelPrices, TierPrice
from tiersel.schedule import HOPELESS, Candidate, Schedule, cheapest, likeliest, price
from tiersel.signals import CircuitState, TierHealth
from tiersel.watch import WATCH_SAVING, cheapest_watched

__all__ = ["CheapestFeasible", "FixedTier", "Policy", "Signals"]

Signals = Mapping[str, TierHealth]
"""The signals a policy reads: the health of each tier of the call's model, by tier name."""

DEFAULT_ATTEMPTS = 4
"""The attempts a schedule may hold when neither the requirements nor the policy say (the
`Selector`'s ``max_attempts`` default)."""
DEFAULT_BACKOFF_S = 0.2
"""The first backoff before a tier is tried again (doubling after each further failure): the
`Selector`'s ``backoff_s`` default."""


class Policy(Protocol):
    """Anything that maps a call and its context to a decision, with no I/O."""

    def __call__(
        self,
        call: Call,
        requirements: Requirements,
        budget: BudgetState | None,
        prices: ModelPrices,
        signals: Signals,
        now: float,
    ) -> Decision: ...


_SQRT2 = math.sqrt(2.0)
_OPEN = CircuitState.open
_REJECTED = Verdict.rejected
_CHOSEN = Verdict.chosen
_COSTLIER = Verdict.costlier
_MEMO_SIZE = 4096  # choices remembered per policy (cleared when full)
_SAME = (
    1.0 + 1e-9
)  # costs this close are equal: a weighted mean of equal costs may differ by an ulp
_C = ReasonCode
# tuple.__new__ skips NamedTuple's Python-level __new__: creation is much of the decision's cost.
_new = tuple.__new__


def _reason(fields: tuple[str, Verdict, str, tuple[Any, ...]]) -> Reason:
    return _new(Reason, fields)


class CheapestFeasible:
    """The default policy: the cheapest schedule of attempts that meets the requirements.

    - ``latency_sigma``: the spread (log-standard-deviation) of the end-to-end latency around
      its estimate, which turns a deadline into a probability of finishing on time. None (the
      default): each tier's own, from the spreads of its observed TTFT and output rate
      (`TierHealth.ttft_spread`, `TierHealth.tps_spread`; the tier's prior until observed); a
      number: that spread for every tier, whatever was observed.
    - ``max_attempts`` and ``backoff_s``: the attempts a schedule may hold (a call's
      ``Requirements.max_attempts`` wins), and the first backoff before the same tier is tried
      again, doubling after each failure. The `Selector` passes its own.
    - ``default_reliability``: what a call that states no reliability is planned for: the
      cheapest schedule that reaches it, or, when none does, the likeliest one (never a
      schedule below ``min_reliability``, which is refused as hopeless).
    - ``pacing``: when the budget knows how many calls remain, refuse a schedule that would leave
      less than ``pacing`` times what the calls still to come need at this call's cheapest tier
      (None: no pacing). Money then goes to calls whose requirements demand a dearer tier only
      while the rest can still be served; a best-effort call, too, gets the likeliest schedule
      within what pacing leaves.
    - ``watch``: whether a schedule may watch its first attempt (`tiersel.watch`): check its
      pace part way and cut it, for a tier of a quicker pace, when it would end too late. Only
      for a call that allows it (``Requirements.watch``) and whose shell can watch it (the
      flow turns it off otherwise), and never for a call with a ``max_cost_usd``, which a cut
      attempt's bill could push past.

    >>> from tiersel import Selector, Call, Requirements
    >>> d = Selector().decide(Call(model="kimi-k3", input_tokens=800, max_output_tokens=200))
    >>> d.tier
    <Tier.standard: 'standard'>
    """

    __slots__ = (
        "_decided",
        "_made",
        "_memo",
        "_read",
        "backoff_s",
        "default_reliability",
        "latency_sigma",
        "max_attempts",
        "min_reliability",
        "pacing",
        "watch",
    )

    def __init__(
        self,
        *,
        latency_sigma: float | None = None,
        max_attempts: int = DEFAULT_ATTEMPTS,
        backoff_s: float = DEFAULT_BACKOFF_S,
        default_reliability: float = 0.95,
        min_reliability: float = HOPELESS,
        pacing: float | None = None,
        watch: bool = True,
    ) -> None:
        if latency_sigma is not None and not latency_sigma > 0:
            raise ValueError(f"latency_sigma must be > 0 or None, got {latency_sigma!r}")
        if not 1 <= max_attempts <= MAX_ATTEMPTS:
            raise ValueError(f"max_attempts must be 1 to {MAX_ATTEMPTS}, got {max_attempts!r}")
        if not backoff_s >= 0:
            raise ValueError(f"backoff_s must be >= 0, got {backoff_s!r}")
        if not 0 < min_reliability <= default_reliability <= 1:
            raise ValueError(
                "0 < min_reliability <= default_reliability <= 1, got"
                f" {min_reliability!r} and {default_reliability!r}"
            )
        if pacing is not None and not pacing > 0:
            raise ValueError(f"pacing must be > 0, got {pacing!r}")
        self.latency_sigma = latency_sigma
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.default_reliability = default_reliability
        self.min_reliability = min_reliability
        self.pacing = pacing
        self.watch = watch
        self._memo: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._made: dict[tuple[Any, ...], tuple[tuple[TierPrice, ...], Decision]] = {}
        self._decided: dict[tuple[Any, ...], tuple[ModelPrices, Decision]] = {}
        self._read: dict[
            tuple[str, tuple[str, ...] | None], tuple[ModelPrices, frozenset[str]]
        ] = {}

    def __repr__(self) -> str:
        return (
            f"CheapestFeasible(latency_sigma={self.latency_sigma},"
            f" max_attempts={self.max_attempts}, backoff_s={self.backoff_s},"
            f" default_reliability={self.default_reliability}, pacing={self.pacing},"
            f" watch={self.watch})"
        )

    def __call__(
        self,
        call: Call,
        requirements: Requirements,
        budget: BudgetState | None,
        prices: ModelPrices,
        signals: Signals,
        now: float,
    ) -> Decision:
        if budget is not None:
            return self._decide(call, requirements, budget, prices, signals)
        # With no budget the decision depends only on the call, its requirements, the table,
        # the health of the tiers it may use and the policy's settings (never on ``now``: the
        # health says how long a cooldown has left). So calls of one shape on one snapshot of
        # the signals are decided once: remembered by those values (a `TierHealth` is frozen
        # and compared by value), the table by its model's name and checked to be the same
        # table on a hit.
        try:
            read = self.tiers_read(prices, requirements)
        except TypeError:  # requirements built unvalidated, with a list of tiers in them
            return self._decide(call, requirements, None, prices, signals)
        healths = tuple([signals.get(t) for t in read])
        key = (
            call,
            requirements,
            prices.name,
            healths,
            self.latency_sigma,
            self.max_attempts,
            self.backoff_s,
            self.default_reliability,
            self.min_reliability,
            self.watch,
        )
        try:
            hit = self._decided.get(key)
        except TypeError:  # a call built unvalidated, with a list in it
            return self._decide(call, requirements, None, prices, signals)
        if hit is not None and hit[0] is prices:
            return hit[1]
        decision = self._decide(call, requirements, None, prices, signals)
        if len(self._decided) >= _MEMO_SIZE:
            self._decided.clear()
        self._decided[key] = (prices, decision)
        return decision

    def _decide(
        self,
        call: Call,
        requirements: Requirements,
        budget: BudgetState | None,
        prices: ModelPrices,
        signals: Signals,
    ) -> Decision:
        reasons: list[Reason] = []
        cands = self.candidates(call, requirements, budget, prices, signals, reasons)
        spendable = None
        if self.pacing is not None and budget is not None and budget.remaining_calls:
            keep = self.pacing * cands[0].expected * (budget.remaining_calls - 1)
            spendable = max(budget.remaining_usd - keep, cands[0].expected)
        worst_limit = None
        if requirements.hedge:  # a hedge reserves two worst cases: both must fit
            limits = [requirements.max_cost_usd, budget.remaining_usd if budget else None]
            worst_limit = min([v for v in limits if v is not None], default=None)
        elif budget is not None and self.watch and requirements.watch:
            # A watched plan may bill two attempts (a cut one and the next): bounded by the
            # money left only where that could bind, so the remembered choices (`choose`)
            # still serve calls of one shape while the budget is ample.
            dearest = max([c.worst for c in cands])
            if budget.remaining_usd < 2.0 * dearest:
                worst_limit = budget.remaining_usd
        return self.choose(call.model, requirements, cands, spendable, reasons, worst_limit)

    def tiers_read(self, prices: ModelPrices, requirements: Requirements) -> frozenset[str]:
        """The tiers whose health a decision for a call with ``requirements`` reads: those it
        may use (``requirements.tiers``, else those not opt-in). The flow reads the signals of
        these only (`tiersel.engine.Engine.read_keys`)."""
        key = (prices.name, requirements.tiers)
        hit = self._read.get(key)
        if hit is not None and hit[0] is prices:  # (the very table: a policy may serve two)
            return hit[1]
        allowed = requirements.tiers
        found = frozenset(
            name
            for name, tp in prices.tiers.items()
            if (name in allowed if allowed is not None else not tp.spec.opt_in)
        )
        if len(self._read) >= _MEMO_SIZE:
            self._read.clear()
        self._read[key] = (prices, found)
        return found

    # -- stage 1: candidates -----------------------------------------------------------------

    # The decision path: keep it cheap (benchmarks/decide.py). Object creation dominates here,
    # so reasons and candidates are built with tuple.__new__ and enum members are constants.
    def candidates(
        self,
        call: Call,
        requirements: Requirements,
        budget: BudgetState | None,
        prices: ModelPrices,
        signals: Signals,
        reasons: list[Reason],
    ) -> list[Candidate]:
        """The tiers that may serve ``call``, in order of expected cost, with their numbers; the
        others get a reason in ``reasons``. Raises `NoFeasibleTier` when none is left."""
        add = reasons.append
        allowed = requirements.tiers
        cap = requirements.max_cost_usd
        remaining = budget.remaining_usd if budget is not None else None
        deadline = requirements.deadline_s
        if deadline is not None and deadline <= 0:
            raise NoFeasibleTier(call.model, [_reason(("*", _REJECTED, _C.no_time, ()))])
        sigma = self.latency_sigma
        fixed_scale = 1.0 / (sigma * _SQRT2) if sigma is not None else 0.0

        uncached = call.input_tokens - call.cached_input_tokens
        cached = call.cached_input_tokens
        unread = call.uncached_input_tokens  # for latency: the cached share expected counts
        # The worst case counts the prompt at its bound (what the provider can bill at most).
        bound = call.max_input_tokens
        extra_in = bound - call.input_tokens if bound is not None else 0
        out_max = call.max_output_tokens
        out_exp = call.expected_output_tokens
        if out_exp is None:
            out_exp = out_max
        tiers = prices.tiers
        if not tiers:
            raise NoFeasibleTier(call.model, [_reason(("*", _REJECTED, _C.unpriced, ()))])
        out: list[Candidate] = []
        if allowed is not None:
            for name in allowed:
                if name not in tiers:
                    add(_reason((name, _REJECTED, _C.not_offered, ())))
        for name, tp in tiers.items():
            if allowed is not None:
                if name not in allowed:
                    add(_reason((name, _REJECTED, _C.not_allowed, ())))
                    continue
            elif tp.spec.opt_in:
                add(_reason((name, _REJECTED, _C.opt_in, ())))
                continue
            health = signals.get(name)
            if health is None:
                continue
            # cost.tier_cost's arithmetic, inlined: this loop is the decision's hot path.
            base = uncached * tp.input_per_token + cached * tp.cached_input_per_token
            worst = base + extra_in * tp.input_per_token + out_max * tp.output_per_token
            # Cost first: a tier the call cannot afford is rejected for that, not for a cooldown
            # it would be pointless to wait out.
            if cap is not None and worst > cap:
                add(_reason((name, _REJECTED, _C.cost_cap, (worst, cap))))
                continue
            if remaining is not None and worst > remaining:
                add(_reason((name, _REJECTED, _C.budget, (worst, remaining))))
                continue
            tps = health.output_tps
            wait = 0.0
            prefill = tp.spec.priors.prefill_s(unread)
            ttft = health.ttft_s + prefill
            decode = out_exp / tps
            latency = ttft + decode
            if health.state is _OPEN:
                # A call with a deadline may wait out a cooldown if it leaves the tier its
                # expected time to finish; a call with none waits in the flow, bounded there.
                if deadline is None or health.cooldown_s + latency >= deadline:
                    add(_reason((name, _REJECTED, _C.cooldown, (health.cooldown_s,))))
                    continue
                wait = health.cooldown_s
            if deadline is None:
                scale = 0.0
            else:
                # The latency's log-spread: its parts' log-spreads weighted by their shares of
                # it, combined as if TTFT and output rate stray independently. (Adding them, as
                # if they strayed together, bounds it from above; replays of the bundled traces
                # showed that bound pessimistic: 15.7 failures predicted for 3 seen, against
                # 12.3 so combined.) The prompt's prefill is compute on the GPUs that decode,
                # so it strays as the output rate does; the learned TTFT's spread is that of
                # the rest (queueing and overhead), far wider in relative terms. Applied to a
                # long prompt's whole TTFT, it gave priority's 20-50k-token calls in the
                # generated RAG trace under peak (minimax-m3) a spread of 0.18 where their
                # durations' was 0.12; so, 0.13 for 0.13.
                scale = fixed_scale or latency / (
                    math.hypot(
                        health.ttft_s * health.ttft_spread,
                        (prefill + decode) * health.tps_spread,
                    )
                    * _SQRT2
                )
            expected = base + out_exp * tp.output_per_token
            cand = _candidate(name, tp, health, worst, expected, latency, wait, scale, base, ttft)
            out.append(cand)
        if not out:
            raise NoFeasibleTier(call.model, reasons)
        out.sort(key=_BY_EXPECTED)
        return out

    @staticmethod
    def _fit(
        requirements: Requirements, cands: list[Candidate], reasons: list[Reason]
    ) -> list[Candidate]:
        """The candidates fast enough for the call's ``min_output_tps`` and ``max_ttft_s``; the
        others get a reason (a best-effort call may still fall back on them)."""
        min_tps = requirements.min_output_tps
        max_ttft = requirements.max_ttft_s
        if min_tps is None and max_ttft is None:
            return cands
        out = []
        for c in cands:
            tps = c.health.output_tps
            if min_tps is not None and tps < min_tps:
                reasons.append(_reason((c.tier, _REJECTED, _C.tps, (tps, min_tps))))
            elif max_ttft is not None and c.wait + c.ttft > max_ttft:
                why = (c.wait + c.ttft, max_ttft)
                reasons.append(_reason((c.tier, _REJECTED, _C.ttft, why)))
            else:
                out.append(c)
        return out

    # -- stages 2-4: schedule pricing, feasibility, choice -------------------------------------

    def choose(
        self,
        model: str,
        requirements: Requirements,
        cands: list[Candidate],
        spendable: float | None,
        reasons: list[Reason],
        worst_limit: float | None = None,
    ) -> Decision:
        """Price the schedules the candidates allow and choose: the cheapest that meets the
        requirements (a hedge, where the call allows one and it is cheaper than every ladder,
        its two worst cases within ``worst_limit``); else, for a best-effort call or one with no
        reliability target, the likeliest within the cost limits; else `NoFeasibleTier` with
        the reasons.

        The choice depends only on the candidates' numbers and the requirements, so it is
        remembered by them: calls of one shape decided on one snapshot of the signals are
        searched once (benchmarks/decide.py).
        """
        r = requirements
        key = (
            self.max_attempts,
            self.backoff_s,
            self.default_reliability,
            self.min_reliability,
            r.reliability,
            r.max_attempts,
            r.deadline_s,
            r.max_ttft_s,
            r.min_output_tps,
            r.best_effort,
            r.hedge,
            r.watch and r.max_cost_usd is None,
            spendable,
            worst_limit,
            tuple([(c[0], *c[3:]) for c in cands]),
        )
        # The decision itself, for a call whose earlier reasons are the same too (a Decision
        # is immutable, and its steps carry the model's ids: the model is part of the key).
        made_key = (key, model, tuple(reasons))
        made = self._made.get(made_key)
        # Its steps carry the price table's ids and fields: only where the candidates' prices
        # are the very ones it was made from (a policy may serve two tables).
        if made is not None and all(p is c.price for p, c in zip(made[0], cands, strict=True)):
            return made[1]
        hit = self._memo.get(key)
        if hit is not None:
            picks, numbers, added, effort = hit
            attempts = tuple([cands[i] for i in picks])
            reasons.extend(added)
            found = _new(Schedule, (attempts, *numbers))
        else:
            before = len(reasons)
            found, effort = self._search(
                model, requirements, cands, spendable, reasons, worst_limit
            )
            picks = tuple([next(i for i, c in enumerate(cands) if c is a) for a in found.attempts])
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = (picks, found[1:], tuple(reasons[before:]), effort)
        decision = _decision(found, reasons, r.deadline_s, effort)
        if len(self._made) >= _MEMO_SIZE:
            self._made.clear()
        self._made[made_key] = (tuple([c.price for c in cands]), decision)
        return decision

    def _search(
        self,
        model: str,
        requirements: Requirements,
        cands: list[Candidate],
        spendable: float | None,
        reasons: list[Reason],
        worst_limit: float | None,
    ) -> tuple[Schedule, bool]:
        """`choose`'s search, in its stages: the cheapest ladder meeting the target; a hedge,
        where the call allows one and it beats that ladder; the ladder, within the money; else
        the fallback. Returns the schedule and whether it is a best effort."""
        every = cands
        cands = self._fit(requirements, cands, reasons)
        goal = requirements.reliability
        if goal is None:
            goal = self.default_reliability
        attempts = requirements.max_attempts or self.max_attempts
        deadline = requirements.deadline_s
        max_ttft = requirements.max_ttft_s
        found = (
            cheapest(
                cands,
                target=goal,
                attempts=attempts,
                deadline=deadline,
                backoff_s=self.backoff_s,
                max_ttft=max_ttft,
            )
            if cands
            else None
        )
        watched = self._watched(requirements, found, cands, goal, attempts, spendable, worst_limit)
        if requirements.hedge and deadline is not None and attempts >= 2 and cands:
            best = watched if watched is not None else found  # what a hedge must beat
            hedge = self._hedged(
                best, cands, goal, deadline, max_ttft, spendable, worst_limit, reasons
            )
            if hedge is not None:
                return hedge, False
        if watched is not None:
            if _affordable(found, spendable):
                dearer = (found.expected_cost, watched.expected_cost)
                reasons.append(_reason((found.label, _COSTLIER, _C.costlier, dearer)))
            s = watched
            chosen = (s.expected_cost, s.p_success, s.watch_s, s.attempts[1].tier)
            reasons.append(_reason((s.label, _CHOSEN, _C.watched, chosen)))
            return watched, False
        if found is not None:
            if _affordable(found, spendable):
                wait = found.starts[0]
                values = (found.expected_cost, found.p_success, wait)
                code = _C.chosen_after_wait if wait else _C.chosen
                reasons.append(_reason((found.label, _CHOSEN, code, values)))
                self._passed_over(found, cands, goal, attempts, deadline, reasons)
                return found, False
            why = (found.expected_cost, spendable)
            reasons.append(_reason((found.label, _REJECTED, _C.pacing, why)))
        else:
            self._unreliable(cands, goal, attempts, deadline, max_ttft, reasons)
        if requirements.reliability is not None and not requirements.best_effort:
            raise NoFeasibleTier(model, reasons)
        return self._fallback(model, requirements, every, cands, spendable, reasons), True

    def _hedged(
        self,
        found: Schedule | None,
        cands: list[Candidate],
        goal: float,
        deadline: float,
        max_ttft: float | None,
        spendable: float | None,
        worst_limit: float | None,
        reasons: list[Reason],
    ) -> Schedule | None:
        """The cheapest hedge meeting ``goal``, when there is no ladder ``found`` within the
        money or it costs `HEDGE_SAVING` less than that ladder; else None, with the reason the
        hedge was passed over."""
        add = reasons.append
        ladder = _affordable(found, spendable)
        hedge = cheapest_hedge(
            cands,
            target=goal,
            deadline=deadline,
            spendable=spendable,
            worst_limit=worst_limit,
            max_ttft=max_ttft,
        )
        if hedge is None:
            return None
        if (
            found is None
            or not ladder
            or hedge.expected_cost < found.expected_cost * (1.0 - HEDGE_SAVING)
        ):
            second = hedge.attempts[1].tier
            raced = (hedge.expected_cost, hedge.p_success, hedge.hedge_s, second)
            add(_reason((hedge.label, _CHOSEN, _C.hedged, raced)))
            if found is not None and ladder:
                why = (found.expected_cost, hedge.expected_cost)
                add(_reason((found.label, _COSTLIER, _C.costlier, why)))
            return hedge
        if hedge.expected_cost >= found.expected_cost:
            why = (hedge.expected_cost, found.expected_cost)
            add(_reason((hedge.label, _COSTLIER, _C.costlier, why)))
        else:
            saving = 1.0 - hedge.expected_cost / found.expected_cost
            add(_reason((hedge.label, _REJECTED, _C.small_saving, (saving, HEDGE_SAVING))))
        return None

    def _watched(
        self,
        requirements: Requirements,
        found: Schedule | None,
        cands: list[Candidate],
        goal: float,
        attempts: int,
        spendable: float | None,
        worst_limit: float | None,
    ) -> Schedule | None:
        """The cheapest watched schedule meeting ``goal`` (`tiersel.watch`), its expected cost
        within ``spendable`` and its worst case (a cut attempt's and the next one's) within
        ``worst_limit``, where the policy watches and the call has a deadline and no
        ``max_cost_usd``, when there is no ladder ``found`` within the money or it costs
        `WATCH_SAVING` less than that ladder; else None."""
        deadline = requirements.deadline_s
        if not (self.watch and requirements.watch) or deadline is None or attempts < 2:
            return None
        if requirements.max_cost_usd is not None or not cands:
            return None
        s = cheapest_watched(
            cands,
            target=goal,
            attempts=attempts,
            deadline=deadline,
            backoff_s=self.backoff_s,
            max_ttft=requirements.max_ttft_s,
        )
        if not _affordable(s, spendable):
            return None
        if worst_limit is not None and s.worst_cost > worst_limit:
            return None
        if _affordable(found, spendable) and s.expected_cost >= found.expected_cost * (
            1.0 - WATCH_SAVING
        ):
            return None
        return s

    def _fallback(
        self,
        model: str,
        requirements: Requirements,
        every: list[Candidate],
        fit: list[Candidate],
        spendable: float | None,
        reasons: list[Reason],
    ) -> Schedule:
        """The likeliest schedule within the cost limits, for a call with no reliability target
        or a best-effort one; `NoFeasibleTier` when there is none, or, for a call with no
        target, when it is below the policy's ``min_reliability``.

        It keeps to the tiers that ``fit`` the call's speed limits (``min_output_tps``,
        ``max_ttft_s``). Only a best-effort call falls back on ``every`` candidate, the tiers too
        slow for what it asked among them, and only where no schedule on those that fit reaches
        ``min_reliability``."""
        add = reasons.append
        effort = requirements.best_effort
        target = requirements.reliability
        goal = target if target is not None else self.default_reliability
        attempts = requirements.max_attempts or self.max_attempts
        deadline = requirements.deadline_s
        limit = spendable * _SAME if spendable is not None else None

        def likeliest_of(cands: list[Candidate], max_ttft: float | None) -> Schedule | None:
            return likeliest(
                cands,
                attempts=attempts,
                deadline=deadline,
                backoff_s=self.backoff_s,
                max_ttft=max_ttft,
                spendable=limit,
            )

        best = likeliest_of(fit, requirements.max_ttft_s) if fit else None
        if effort and fit is not every and (best is None or best.p_success < self.min_reliability):
            best = likeliest_of(every, None)
        if best is None or (
            target is None and not effort and best.p_success < self.min_reliability
        ):
            if best is not None:
                why = (best.p_success, self.min_reliability)
                add(_reason((best.label, _REJECTED, _C.reliability, why)))
            elif (fit or effort) and spendable is None:  # (else the reasons say why)
                add(_reason(("*", _REJECTED, _C.no_time, ())))
            raise NoFeasibleTier(model, reasons)
        code = _C.best_effort if effort else _C.likeliest
        add(_reason((best.label, _CHOSEN, code, (best.expected_cost, best.p_success, goal))))
        return best

    def _passed_over(
        self,
        chosen: Schedule,
        cands: list[Candidate],
        goal: float,
        attempts: int,
        deadline: float | None,
        reasons: list[Reason],
    ) -> None:
        """A reason for each candidate tier the chosen schedule leaves out: dearer than it, or,
        when cheaper, short of the reliability even with every attempt on it."""
        used = {a.tier for a in chosen.attempts}
        cost = chosen.expected_cost
        for c in cands:
            if c.tier in used:
                continue
            if c.expected >= cost:
                reasons.append(_reason((c.tier, _COSTLIER, _C.costlier, (c.expected, cost))))
                continue
            s = self._alone(c, attempts, deadline)
            p = s.p_success if s is not None else 0.0
            reasons.append(
                _reason((s.label if s else c.tier, _REJECTED, _C.reliability, (p, goal)))
            )

    def _alone(self, c: Candidate, attempts: int, deadline: float | None) -> Schedule | None:
        """Every attempt that can start in time on ``c`` alone."""
        for n in range(attempts, 0, -1):
            s = price([c] * n, deadline=deadline, backoff_s=self.backoff_s)
            if s is not None:
                return s
        return None

    def _unreliable(
        self,
        cands: list[Candidate],
        goal: float,
        attempts: int,
        deadline: float | None,
        max_ttft: float | None,
        reasons: list[Reason],
    ) -> None:
        """Reasons for a refusal on reliability: what every attempt on one tier would reach."""
        for c in cands:
            s = self._alone(c, attempts, deadline)
            if s is not None:
                why = (s.p_success, goal)
                reasons.append(_reason((s.label, _REJECTED, _C.reliability, why)))
        best = likeliest(
            cands,
            attempts=attempts,
            deadline=deadline,
            backoff_s=self.backoff_s,
            max_ttft=max_ttft,
        )
        if best is not None and best.attempts[0].tier != best.attempts[-1].tier:
            why = (best.p_success, goal)
            reasons.append(_reason((best.label, _REJECTED, _C.reliability, why)))


_BY_EXPECTED = attrgetter("expected", "worst")


def _affordable(s: Schedule | None, spendable: float | None) -> TypeGuard[Schedule]:
    """Whether there is a schedule ``s`` and its expected cost is within what pacing leaves."""
    return s is not None and (spendable is None or s.expected_cost <= spendable * _SAME)


def _candidate(
    name: str,
    tp: TierPrice,
    health: TierHealth,
    worst: float,
    expected: float,
    latency: float,
    wait: float,
    scale: float,
    prompt: float,
    ttft: float,
) -> Candidate:
    refusal = health.refusal_rate
    now = health.refusal_now
    return _new(
        Candidate,
        (
            name,
            tp,
            health,
            worst,
            expected,
            latency,
            refusal,
            refusal if now is None else now,
            health.error_rate,
            health.shed_latency_s,
            wait,
            scale,
            ttft,
            health.memory_after_shed,
            health.memory_s,
            prompt,
        ),
    )


def _decision(
    s: Schedule, reasons: list[Reason], deadline: float | None, best_effort: bool = False
) -> Decision:
    steps = []
    for i, (c, start, reach, ok) in enumerate(
        zip(s.attempts, s.starts, s.reach, s.ok, strict=True)
    ):
        tier, model, service_tier, body, headers, base_url = c.price.step_fields
        left = deadline - start if deadline is not None else None
        steps.append(
            _new(
                Step,
                (
                    tier,
                    model,
                    service_tier,
                    c.worst,
                    c.expected,
                    body,
                    headers,
                    base_url,
                    start,
                    left,
                    reach,
                    ok,
                    s.hedge_s if i == 1 else None,
                    s.watch_s if i == 0 else None,
                ),
            )
        )
    return new_decision(
        tuple(steps),
        s.expected_cost,
        s.worst_cost,
        s.p_success,
        s.latency,
        tuple(reasons),
        best_effort,
        s.starts[0],
    )


class FixedTier:
    """A policy that always sends one tier (a baseline: always-standard, always-priority, ...).

    Falls back to ``fallback`` (default: standard) when the model does not offer ``tier``;
    never checks requirements beyond the tiers the model offers, and ignores signals in its
    choice (it is the "hard-coded" choice). Its schedule is that tier for every attempt the
    call may make, backing off between them, priced by the same model as `CheapestFeasible`'s
    (so its ``p_success`` means the same).
    """

    __slots__ = ("backoff_s", "fallback", "max_attempts", "tier")

    def __init__(
        self,
        tier: str,
        *,
        fallback: str | None = None,
        max_attempts: int = DEFAULT_ATTEMPTS,
        backoff_s: float = DEFAULT_BACKOFF_S,
    ) -> None:
        self.tier = tier
        self.fallback = fallback
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s

    def __repr__(self) -> str:
        also = f", fallback={self.fallback!r}" if self.fallback is not None else ""
        return f"FixedTier({self.tier!r}{also})"

    def tiers_named(self) -> tuple[str, ...]:
        """The tier names it was given, which the `Selector` checks against its price table: a
        misspelt one would fall back on every call, unseen. (The default fallback, standard,
        was not given: a table without it is no mistake of the caller's.)"""
        return (self.tier,) if self.fallback is None else (self.tier, self.fallback)

    def __call__(
        self,
        call: Call,
        requirements: Requirements,
        budget: BudgetState | None,
        prices: ModelPrices,
        signals: Signals,
        now: float,
    ) -> Decision:
        name = self.tier if self.tier in prices.tiers else (self.fallback or "standard")
        tp = prices.tiers.get(name)
        if tp is None:
            raise NoFeasibleTier(call.model, [Reason(self.tier, Verdict.rejected, "not_offered")])
        base = tier_cost(tp, call.input_tokens, call.cached_input_tokens, 0)
        bound = tier_cost(tp, call.input_tokens_bound, call.cached_input_tokens, 0)
        worst = bound + call.max_output_tokens * tp.output_per_token
        out = call.output_tokens_for_latency
        expected = base + out * tp.output_per_token
        health = signals.get(name) or _NO_HEALTH
        prefill = tp.spec.priors.prefill_s(call.uncached_input_tokens)
        if health is _NO_HEALTH:
            prefill = 0.0
        ttft = health.ttft_s + prefill
        decode = out / health.output_tps
        latency = ttft + decode
        deadline = requirements.deadline_s
        spread = math.hypot(
            health.ttft_s * health.ttft_spread, (prefill + decode) * health.tps_spread
        )
        scale = latency / (spread * _SQRT2) if deadline is not None and spread > 0 else 0.0
        c = _candidate(name, tp, health, worst, expected, latency, 0.0, scale, base, ttft)
        attempts = requirements.max_attempts or self.max_attempts
        s = None
        while s is None and attempts > 0:  # as many attempts as can start before the deadline
            s = price([c] * attempts, deadline=deadline, backoff_s=self.backoff_s)
            attempts -= 1
        if s is None:  # no attempt can start in time: the one the flow would still send
            s = Schedule((c,), (0.0,), (1.0,), (0.0,), 0.0, expected, worst, latency, name)
        reason = Reason(name, Verdict.chosen, "fixed", (expected, s.p_success, repr(self)))
        return _decision(s, [reason], deadline)


_NO_HEALTH = TierHealth(
    refusal_rate=0.0,
    error_rate=0.0,
    ttft_s=0.0,
    output_tps=1e9,
    shed_latency_s=0.0,
    state=CircuitState.closed,
    cooldown_s=0.0,
    observed=0,
)
