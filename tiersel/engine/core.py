"""`Engine`: what one call's attempts need and who owns it (prices, policy, signals, budget,
clock, call ids and caches), with the public contract every door drives.

A door (`tiersel.Selector`, `tiersel.wrap.TierTransport`, the batch runner, the replay harness)
`start`s a call, which gives the flow of its attempts (`tiersel.engine.flow`), then carries it
out with `run` or `arun` and a send of its own; a streamed reply is completed with
`finish_stream`. The engine does the rest: every effect but a send, a sleep and a race.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, TypedDict, cast

from tiersel.budget import AsyncLedger, Ledger
from tiersel.call import BudgetState, Call, Requirements
from tiersel.clock import Clock, SystemClock
from tiersel.decision import Decision
from tiersel.dialects import (
    Dialect,
    Usage,
    check_reservable,
    generation_dialect,
    input_tokens,
    max_output_tokens,
)
from tiersel.engine.checks import check_call, check_parts, check_requirements, check_settings
from tiersel.engine.effects import (
    ClaimProbe,
    Effect,
    Flow,
    Notify,
    Now,
    Race,
    ReadBudget,
    ReadSignals,
    Record,
    Release,
    Reserve,
    Send,
    Settle,
    Sleep,
    arun,
    run,
)
from tiersel.engine.flow import call_flow
from tiersel.engine.race import race_async, race_sync
from tiersel.engine.results import AttemptRecord, CallResult, Reply, StreamEnd
from tiersel.engine.stream import stream_flow
from tiersel.errors import (
    ConflictingRequirements,
    RequestNotUnderstood,
    StoreUnavailable,
    TierselError,
    UnknownTier,
    shown,
)
from tiersel.policy import CheapestFeasible, Policy
from tiersel.pricing import ModelPrices, Pricing, load_pricing
from tiersel.prompts import MIN_CACHED_TOKENS, Prefix, Prompt, PromptMemory, prompt_prefixes
from tiersel.signals import (
    AsyncSignalStore,
    MemorySignalStore,
    Observation,
    SignalConfig,
    SignalKey,
    SignalStore,
    TierHealth,
    TierStats,
    assess,
    same_failures,
)

log = logging.getLogger("tiersel.engine")

__all__ = ["Engine", "EngineSettings", "Started", "check_setting_names", "new_call_id", "pinned"]


def new_call_id() -> str:
    """A call id no other process, or this one after a restart, will make: 96 random bits.

    A shared ledger keys reservations and settlements by call id, so ids from a per-process
    counter (``call-1``, ``call-2``, ...) would let two processes overwrite each other's
    reservations, and a restarted one be charged nothing for ids settled before.
    """
    return f"call-{secrets.token_hex(12)}"


class Started(NamedTuple):
    """A call `Engine.start` began: the flow of its attempts, its dialect, its id, and the
    `Call` its body describes."""

    flow: Flow
    dialect: Dialect
    call_id: str
    call: Call


class EngineSettings(TypedDict, total=False):
    """The `Engine`'s settings besides its four parts, as keywords a door passes on
    (``Selector(max_attempts=3)``); each defaults as `Engine` says.

    - ``ledger``: a budget `Ledger`; when set, each attempt reserves its worst case first.
      An `AsyncLedger` works with async calls only.
    - ``endpoint``: the signal stores' name for the provider (``"fireworks"``).
    - ``requirements``: a call's requirements when it states none (`Requirements()`).
    - ``signal_config``: how the signals are kept (`SignalConfig`; default: the store's own).
    - ``max_attempts`` and ``backoff_s``: the attempts a call may make (4), and the first
      backoff before a tier is tried again (0.2 s), doubling after each failure.
    - ``default_max_output_tokens``: the output cap assumed for a body that states none (4096,
      or the model's own output limit from the price table when that is smaller).
    - ``bytes_per_token``: how many bytes of a prompt count as one token in its estimate (3.0).
    - ``unbounded_output``: under a budget, what a body with no output cap is sent with, so that
      its reservation bounds what it can cost (the cap set is reported in the
      ``x-tiersel-max-tokens`` response header): ``"share"`` (the default), what a quarter of
      the money left buys, at least 256 tokens and at most ``default_max_output_tokens``;
      ``"cap"``, ``default_max_output_tokens`` itself; ``"refuse"``, no send
      (`RequestNotUnderstood`).
    - ``budget_wait_s``: how long a call the budget turns down while other calls hold
      reservations waits for them to settle before `BudgetExhausted` (30 s; never past half the
      time its deadline leaves, nor the client's timeout; 0 refuses at once). A reservation is
      a call's worst case, so money in flight usually comes back.
    - ``on_attempt`` / ``on_result``: called with each attempt's `AttemptRecord`, and with each
      call's final `CallResult` (a stream's once it ends), whichever door the call came through.
    - ``carry_on``: what happens to a call the policy has planned when, later (after a failed
      attempt, a stall, a changed signal), no schedule meets its reliability target any more.
      True (the default): it goes on with the likeliest schedule left within its cost limits
      (its decision says ``best_effort``), unless that is below the policy's
      ``min_reliability``, or it uses a tier too slow for the speed the call asked for
      (``min_output_tps``, ``max_ttft_s``).
      False: it ends as it would have been refused: `NoFeasibleTier` if nothing was sent
      yet, else with its last error.
    """

    ledger: Ledger | AsyncLedger | None
    endpoint: str
    requirements: Requirements | None
    signal_config: SignalConfig | None
    max_attempts: int
    backoff_s: float
    default_max_output_tokens: int
    bytes_per_token: float
    unbounded_output: str
    budget_wait_s: float
    on_attempt: Callable[[AttemptRecord], None] | None
    on_result: Callable[[CallResult], None] | None
    carry_on: bool


def check_setting_names(door: Callable[..., object], names: Iterable[str]) -> None:
    """`TypeError` naming the first of ``names`` that is not an `EngineSettings` key (and the
    closest of those keys and the door's own keywords), as Python names an unexpected keyword
    argument of ``door``."""
    known = EngineSettings.__optional_keys__
    for name in names:
        if name not in known:
            own = {
                p.name
                for p in inspect.signature(door).parameters.values()
                if p.kind != p.VAR_KEYWORD
            }
            close = difflib.get_close_matches(name, sorted(known | own), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            what = getattr(door, "__name__", "door")
            raise TypeError(f"{what}() got an unexpected keyword argument {name!r}{hint}")


class Engine:
    """Prices, policy, signals, budget and clock for one call's attempts; no I/O of its own
    but the stores'.

    Built by a door with the door's settings (`EngineSettings`, each explained there).
    ``signals`` or ``ledger`` may be async stores, which only `arun` can use.
    """

    def __init__(
        self,
        pricing: Pricing | None = None,
        policy: Policy | None = None,
        signals: SignalStore | AsyncSignalStore | None = None,
        clock: Clock | None = None,
        *,
        ledger: Ledger | AsyncLedger | None = None,
        endpoint: str = "fireworks",
        requirements: Requirements | None = None,
        signal_config: SignalConfig | None = None,
        max_attempts: int = 4,
        backoff_s: float = 0.2,
        default_max_output_tokens: int = 4096,
        bytes_per_token: float = 3.0,
        unbounded_output: str = "share",
        budget_wait_s: float = 30.0,
        on_attempt: Callable[[AttemptRecord], None] | None = None,
        on_result: Callable[[CallResult], None] | None = None,
        carry_on: bool = True,
    ) -> None:
        check_settings(
            max_attempts,
            backoff_s,
            unbounded_output,
            budget_wait_s,
            default_max_output_tokens,
            bytes_per_token,
        )
        check_parts(pricing, policy, signals, clock, ledger)
        check_requirements("the selector's", requirements)
        self.pricing = pricing if pricing is not None else load_pricing()
        self.policy: Policy = (
            policy
            if policy is not None
            else CheapestFeasible(max_attempts=max_attempts, backoff_s=backoff_s)
        )
        named = getattr(self.policy, "tiers_named", None)
        if named is not None:  # (a policy built with tier names: all must be the table's)
            try:
                self.pricing.check_tiers(named())
            except ValueError as exc:
                raise UnknownTier(f"policy={self.policy!r}: {exc}") from None
        if signals is None:
            signals = MemorySignalStore(signal_config)
        self.signals = signals
        self.signal_config = signal_config or getattr(signals, "config", None) or SignalConfig()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.ledger = ledger
        self.endpoint = endpoint
        self.requirements = requirements or Requirements()
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.default_max_output_tokens = default_max_output_tokens
        self.bytes_per_token = bytes_per_token
        self.unbounded_output = unbounded_output
        self.budget_wait_s = budget_wait_s
        self.on_attempt = on_attempt
        self.on_result = on_result
        self.carry_on = carry_on
        self.plan_at_bound = False
        """Plan each call at its prompt's bound, not its estimate (a batch job's pacing)."""
        self._keys: dict[str, tuple[SignalKey, ...]] = {}
        self._keys_by_tier: dict[str, dict[str, SignalKey]] = {}
        # Keyed by the price table's (model, tier) pairs, so bounded by the table.
        self._read_keys: dict[tuple[str, frozenset[str]], tuple[SignalKey, ...]] = {}
        self._health_cache: dict[SignalKey, tuple[TierStats, TierHealth, float, float]] = {}
        self.prompts = PromptMemory()
        """The prefixes of the prompts served lately (`tiersel.prompts`)."""
        # Per model: moving sums of the prompt tokens whose prefix was read lately, and of
        # those replies said were cached.
        self._hits: dict[str, tuple[float, float]] = {}

    def __repr__(self) -> str:
        return (
            f"Engine(pricing={self.pricing!r}, policy={self.policy!r}, signals={self.signals!r},"
            f" clock={self.clock!r}, ledger={self.ledger!r})"
        )

    def priced(self, model: str) -> bool:
        """Whether the price table prices ``model`` (a known model may have no price). Raises
        `UnknownModel` (naming the closest ids) for one it does not know, `RetiredTier` for a
        retired router."""
        return self.pricing.model(model).priced

    def model_name(self, model_id: str) -> str:
        """The table's short name of the model ``model_id`` (a model or router id) belongs to."""
        return self.pricing.model(model_id).name

    @property
    def ledger_enabled(self) -> bool:
        return self.ledger is not None

    @property
    def charges_doubt(self) -> bool:
        """Whether the ledger charges an attempt that got no answer (a timeout) itself, as the
        batch job's does at its worst case (a ledger's ``charges_doubt``); else the flow charges
        what the provider bills for a request given up on, as estimated."""
        return bool(getattr(self.ledger, "charges_doubt", False))

    # -- deciding --------------------------------------------------------------------------------

    def assess(
        self, key: SignalKey, stats: TierStats, now: float, *, probing: bool = False
    ) -> TierHealth:
        """A tier's health from its counters, reused while they do not change (after a failure,
        for `_LEAN_S` only: the shed rate it implies fades as time passes), and for
        ``SignalConfig.refresh_s`` while only successes come in."""
        config = self.signal_config
        steady = stats.cooldown_until <= now and stats.consecutive_failures < config.open_after
        if steady and not probing:
            hit = self._health_cache.get(key)
            if hit is not None:
                seen, health, same_until, fresh_until = hit
                # The memory store hands back the same object while nothing changed: the
                # identity test is the fast path.
                if seen is stats or seen == stats:
                    if now <= same_until:
                        return health
                elif now < fresh_until and same_failures(seen, stats):
                    return health
        health = assess(stats, self.pricing.tiers[key.tier].priors, config, now, probing=probing)
        if steady and not probing:
            lean = stats.consecutive_failures > 0
            same_until = now + _LEAN_S if lean else math.inf
            fresh_until = min(same_until, now + config.refresh_s)
            self._health_cache[key] = (stats, health, same_until, fresh_until)
        return health

    def _tier_keys(self, model: str) -> dict[str, SignalKey]:
        keys = self._keys_by_tier.get(model)
        if keys is None:
            keys = self._keys_by_tier[model] = {k.tier: k for k in self.signal_keys(model)}
        return keys

    def read_keys(self, prices: ModelPrices, requirements: Requirements) -> tuple[SignalKey, ...]:
        """The signal keys a decision for a call with ``requirements`` reads: those of the tiers
        the policy says it reads (its ``tiers_read(prices, requirements)``, where it has one),
        else every tier's."""
        read = getattr(self.policy, "tiers_read", None)
        keys = self.signal_keys(prices.name)
        if read is None:
            return keys
        wanted: frozenset[str] = read(prices, requirements)
        found = self._read_keys.get((prices.name, wanted))
        if found is None:
            if len(self._read_keys) >= _KEYS_KEPT:
                self._read_keys.clear()
            found = tuple(k for k in keys if k.tier in wanted)
            self._read_keys[(prices.name, wanted)] = found
        return found

    def signal_keys(self, model: str) -> tuple[SignalKey, ...]:
        """The signal keys of every tier of ``model`` at this selector's endpoint."""
        keys = self._keys.get(model)
        if keys is None:
            prices = self.pricing.model(model)
            keys = tuple(SignalKey(self.endpoint, prices.name, t) for t in prices.tiers)
            self._keys[model] = keys
        return keys

    def health(self, model: str, now: float | None = None) -> dict[str, TierHealth]:
        """What the signals say now about each tier of ``model`` (half-open tiers as probe-able)."""
        view = _HealthView(self, model, self.clock.now() if now is None else now)
        return {tier: view[tier] for tier in view}

    def decide(
        self,
        call: Call,
        requirements: Requirements | None = None,
        *,
        budget: BudgetState | None = None,
    ) -> Decision:
        """The policy's decision for ``call`` now. Reads the signals; sends nothing.

        ``budget`` defaults to the ledger's state when the selector has one.
        """
        check_call("decide", call)
        check_requirements("decide", requirements)
        now = self.clock.now()
        prices, implied = self.pricing.resolve(call.model)
        req = requirements if requirements is not None else self.requirements
        self.check_tiers(req)
        if implied is not None:  # a router id: the call is for that tier, as `send` treats it
            req = pinned(req, implied, siblings(prices, implied))
        if budget is None:  # (an async ledger's state, awaited, may be given as budget=)
            ledger = self._sync_ledger("decide")
            if ledger is not None:
                budget = ledger.state(now)
        return self.policy(
            call,
            req,
            budget,
            prices,
            _HealthView(self, call.model, now),
            now,
        )

    def record(
        self,
        model: str,
        tier: str,
        observation: Observation,
        now: float | None = None,
        *,
        uncached_input_tokens: int = 0,
    ) -> TierStats:
        """Feed one observation into the signals (for callers that dispatch on their own). Give
        the call's prompt tokens not read from a cache, ``uncached_input_tokens``, with a
        ``ttft_s``: the tier learns its TTFT less their prefill (`TierPriors.base_ttft`).
        `UnknownTier` when ``model`` is not sold on ``tier`` (a misspelt tier would be recorded
        where no decision reads it)."""
        prices = self.pricing.model(model)
        if tier not in prices.tiers:
            raise UnknownTier(
                f"record: {prices.name} has no tier {tier!r} (its tiers: {', '.join(prices.tiers)})"
            )
        t = self.clock.now() if now is None else now
        key = SignalKey(self.endpoint, prices.name, tier)
        ttft = observation.ttft_s
        if ttft is not None and uncached_input_tokens > 0:
            base = prices.tiers[tier].spec.priors.base_ttft(ttft, uncached_input_tokens)
            observation = replace(observation, ttft_s=base)
        return self._sync_signals("record").record(key, observation, t)

    def call_for(self, body: Mapping[str, Any], dialect: Dialect) -> tuple[Call, str | None]:
        """The `Call` a request body describes, and the tier its model id implies (router ids)."""
        if not isinstance(body, Mapping):
            raise RequestNotUnderstood(f"the body must be a JSON object, got {shown(body)}")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise RequestNotUnderstood("the body has no 'model' string")
        prices, implied = self.pricing.resolve(model)
        if implied is not None and body.get("service_tier") == "priority":
            # A router sold with priority too (a US-only one): the caller asked for both.
            both = f"{implied}_priority"
            if both in prices.tiers and prices.tiers[both].model_id == model:
                implied = both
        out = max_output_tokens(body, dialect)
        if out is None:  # at most what the model can write, when the table says
            limit = prices.max_output_tokens
            out = self.default_max_output_tokens
            out = min(out, limit) if limit else out
        if self.ledger_enabled:
            check_reservable(body, dialect)
        tokens, bound = input_tokens(body, bytes_per_token=self.bytes_per_token, dialect=dialect)
        # Every field was checked above (the cap by max_output_tokens, the model by the table):
        # skip validating them again on the hot path.
        call = Call.model_construct(
            model=prices.name,
            input_tokens=tokens,
            cached_input_tokens=0,
            max_output_tokens=out,
            expected_output_tokens=None,
            endpoint=self.endpoint,
            max_input_tokens=bound,
        )
        if self.plan_at_bound and bound is not None:
            call = call.model_copy(update={"input_tokens": bound})
        return call, implied

    # -- sending ---------------------------------------------------------------------------------

    def check_tiers(self, requirements: Requirements) -> None:
        """Raise `UnknownTier` when ``requirements`` allow a tier the price table does not
        declare (every door's calls are checked here; hint headers and batch lines earlier)."""
        if requirements.tiers is None:
            return
        try:
            self.pricing.check_tiers(requirements.tiers)
        except ValueError as exc:
            raise UnknownTier(f"requirements: {exc}") from None

    def start(
        self,
        body: Mapping[str, Any],
        *,
        requirements: Requirements | None = None,
        path: str = "/chat/completions",
        call_id: str | None = None,
        dialect: Dialect | None = None,
        max_wait: Callable[[], float | None] | None = None,
        watch: bool = False,
    ) -> Started:
        """Begin one call: the `Call` ``body`` describes, its requirements (the selector's when
        None; a router id pins its tier), an id, and the flow of its attempts, which `run` or
        `arun` carries out with a shell's own send. Nothing is decided or sent yet.

        ``dialect`` is read from ``path`` when not given. ``max_wait()`` bounds each wait of a
        call with no deadline (see `tiersel.engine.call_flow`); ``watch``: the shell can watch
        the call's attempts' pace (`tiersel.watch`; else none is planned). Raises
        `RequestNotUnderstood` for a body or path tiersel cannot read, `UnknownTier` for a tier
        name the price table does not declare, `ConflictingRequirements` for tiers that leave
        out the one a router id names.
        """
        check_requirements("start", requirements)
        if dialect is None:
            dialect = generation_dialect(path)
        call, implied = self.call_for(body, dialect)
        req = requirements if requirements is not None else self.requirements
        self.check_tiers(req)
        if implied is not None:
            req = pinned(req, implied, siblings(self.pricing.model(call.model), implied))
        cid = call_id or new_call_id()
        prompt = None
        if call.input_tokens >= MIN_CACHED_TOKENS:  # a shorter prompt's prefill hardly counts
            call, prompt = self.expect_cached(
                call, prompt_prefixes(body, dialect, call.input_tokens)
            )
        flow = call_flow(self, body, dialect, call, req, cid, max_wait, watch, prompt)
        return Started(flow, dialect, cid, call)

    def run(self, started: Started, send: Callable[[Send], Reply]) -> CallResult:
        """Carry out a `start`-ed call with a sync ``send`` (one attempt's request to its reply):
        sleeps on the selector's clock, a hedge's race in threads, every other effect here.
        Raises `NoFeasibleTier` or `BudgetExhausted` before any send; interrupted, it leaves
        nothing reserved: an attempt in flight then is charged what the provider bills for a
        request given up on (`Send.given_up`)."""
        held = _Held(started.call_id)
        try:
            result = run(started.flow, self._performer(send, self.clock.sleep, False, held))
        except BaseException:
            if held.money:
                self._settle_quietly(started.call_id, self._given_up(held.attempt))
            raise
        return self._ended(result)

    async def arun(self, started: Started, send: Callable[[Send], Awaitable[Reply]]) -> CallResult:
        """The async twin of `run`: ``send`` is awaited, a hedge's race runs in tasks, and async
        stores are awaited."""
        held = _Held(started.call_id)
        try:
            result = await arun(started.flow, self._performer(send, self.clock.asleep, True, held))
        except BaseException:
            if held.money:
                await self._asettle_quietly(started.call_id, self._given_up(held.attempt))
            raise
        return self._ended(result)

    def _given_up(self, in_flight: tuple[Send | Race, float] | None) -> float | None:
        """What an interrupted call's attempt in flight (sent when the clock read the second
        item) is billed, for the budget; None when none was in flight, or when the ledger
        charges such an attempt itself (`charges_doubt`)."""
        if in_flight is None or self.charges_doubt:
            return None
        effect, sent_at = in_flight
        return effect.billed_after(max(0.0, self.clock.now() - sent_at))

    def _ended(self, result: CallResult) -> CallResult:
        """Hand a call's final result to ``on_result`` (a stream's, once it ends)."""
        if self.on_result is not None and not result.pending_stream:
            self.on_result(result)
        return result

    def check_sync(self, what: str) -> None:
        """Raise `TypeError` naming ``what`` if the signal store or the ledger is async (a sync
        shell cannot await them)."""
        self._sync_signals(what)
        self._sync_ledger(what)

    def perform(self, effect: Effect) -> Any:
        """Carry out one effect of a call's flow that is the same in every shell: all but a send,
        a sleep and a race (a store's answer, or an awaitable from an async store). A shell that
        drives a flow itself (the replay harness, on virtual time) hands it the rest."""
        # Dispatch on the exact type: a flow yields several effects per call, and a chain of
        # isinstance tests costs microseconds each time.
        handler = _EFFECT_HANDLERS.get(type(effect))
        if handler is None:
            raise TypeError(f"unknown effect {effect!r}")
        return handler(self, effect)

    def _now(self, effect: Now) -> float:
        return self.clock.now()

    def _read_signals(self, effect: ReadSignals) -> Any:
        now = self.clock.now()
        stats = [self.signals.stats(k, now) for k in effect.keys]
        # An async store answers with awaitables, which only the async shell awaits.
        return _awaited(stats) if _is_async(self.signals, "stats") else stats

    def _claim_probe(self, effect: ClaimProbe) -> Any:
        return self.signals.claim_probe(
            effect.key, self.clock.now(), self.signal_config.probe_interval_s
        )

    def _record(self, effect: Record) -> Any:
        if effect.prompt is not None:
            sent_s_ago = effect.observation.latency_s or 0.0
            self._learn_prompt(effect.prompt, effect.usage, sent_s_ago)
        if effect.cut:
            self._health_cache.pop(effect.key, None)
        return self.signals.record(effect.key, effect.observation, self.clock.now())

    def _learn_prompt(self, prompt: Prompt, usage: Usage | None, sent_s_ago: float) -> None:
        """The provider read ``prompt`` when its attempt was sent, ``sent_s_ago``: its prefixes
        are cached since. Its ``usage``, when the provider reported it, says how much of the
        part read before the cache served."""
        now = self.clock.now()
        self.prompts.remember(prompt.model, prompt.prefixes, now - sent_s_ago)
        seen = prompt.seen
        if usage is None or seen <= 0:
            return
        got = float(min(usage.cached_tokens, seen))
        hits = self._hits.get(prompt.model)
        if hits is None:
            self._hits[prompt.model] = (float(seen), got)
        else:
            w = _HIT_WEIGHT
            self._hits[prompt.model] = (
                hits[0] + w * (seen - hits[0]),
                hits[1] + w * (got - hits[1]),
            )

    def cache_hit_rate(self, model: str) -> float:
        """Of ``model``'s prompt tokens whose prefix the provider had read lately, the share its
        replies reported cached: a moving average over recent calls (each weighs those tokens),
        1.0 until one reported. A call expects the tokens of its longest prefix the provider
        read lately (`tiersel.prompts`) times this rate."""
        hits = self._hits.get(self.pricing.model(model).name)
        return hits[1] / hits[0] if hits is not None else 1.0

    def expect_cached(self, call: Call, prefixes: Sequence[Prefix]) -> tuple[Call, Prompt | None]:
        """``call`` with the prompt tokens it may expect read from the provider's cache
        (`Call.expected_cached_input_tokens`): those of the longest of its ``prefixes`` (see
        `tiersel.prompts.prompt_prefixes`) a served call had within the cache's lifetime, times
        `cache_hit_rate`; and the `Prompt` its flow hands back with its reply's usage. A prompt
        under `tiersel.prompts.MIN_CACHED_TOKENS` is not looked up (None)."""
        if call.input_tokens < MIN_CACHED_TOKENS:
            return call, None
        seen = self.prompts.cached(call.model, prefixes, self.clock.now())
        hits = self._hits.get(call.model)
        rate = hits[1] / hits[0] if hits is not None else 1.0
        expected = min(call.input_tokens, int(seen * rate))
        if expected > call.cached_input_tokens:
            call = call.model_copy(update={"expected_cached_input_tokens": expected})
        return call, Prompt(call.model, tuple(prefixes), seen, expected)

    def _notify(self, effect: Notify) -> None:
        if self.on_attempt is not None:
            self.on_attempt(effect.record)

    def _read_budget(self, effect: ReadBudget) -> Any:
        """The ledger's state; a ledger with a ``state_for(call_id, now)`` gives the state as
        that call sees it (a batch job's line counts the money it holds as its own)."""
        ledger = self.ledger
        if ledger is None:
            return None
        state_for = getattr(ledger, "state_for", None)
        if state_for is not None:
            return state_for(effect.call_id, self.clock.now())
        return ledger.state(self.clock.now())

    def _ledger_for(self, effect: Effect) -> Ledger | AsyncLedger:
        if self.ledger is None:
            raise RuntimeError(f"{effect!r} needs a ledger")
        return self.ledger

    def _reserve(self, effect: Reserve) -> Any:
        ledger = self._ledger_for(effect)
        return ledger.reserve(effect.call_id, effect.amount_usd, self.clock.now())

    def _settle(self, effect: Settle) -> Any:
        ledger, now = self._ledger_for(effect), self.clock.now()
        return self._accounted(lambda: ledger.settle(effect.call_id, effect.amount_usd, now))

    def _release(self, effect: Release) -> Any:
        ledger, now = self._ledger_for(effect), self.clock.now()
        return self._accounted(lambda: ledger.release(effect.call_id, now))

    def _accounted(self, do: Callable[[], Any]) -> Any:
        """A settle or a release, ``do()``, which the store's loss does not stop (`_accounted`),
        unless the ledger says it must (``stops_when_lost``: the batch job's, which then ends)."""
        if getattr(self.ledger, "stops_when_lost", False):
            return do()
        return _accounted(do)

    def _performer(
        self,
        send: Callable[[Send], Any],
        sleep: Callable[[float], Any],
        asynchronous: bool,
        held: _Held,
    ) -> Callable[[Effect], Any]:
        """What carries out one call's effects for `run` / `arun`: ``send`` and ``sleep`` are the
        shell's own (sync, or, ``asynchronous``, returning awaitables); a hedge's race runs on
        ``send``; every other effect is the selector's. It keeps ``held`` up to date."""
        common = self.perform
        clock = self.clock
        if asynchronous:

            def race(effect: Race) -> Any:
                return race_async(send, effect, clock)
        else:

            def race(effect: Race) -> Any:
                return race_sync(send, effect, clock)

        def perform(effect: Effect) -> Any:
            kind = type(effect)
            if kind is Send:
                held.attempt = (effect, clock.now())  # type: ignore[assignment]
                return send(effect)  # type: ignore[arg-type]
            held.attempt = None  # the flow asks for nothing else while an attempt is in flight
            if kind is Sleep:
                return sleep(effect.seconds)  # type: ignore[union-attr]
            if kind is Race:
                held.attempt = (effect, clock.now())  # type: ignore[assignment]
                return race(effect)  # type: ignore[arg-type]
            if kind is Reserve:
                held.money = True  # (at worst, one not granted is released: a no-op)
            elif (kind is Settle or kind is Release) and effect.call_id == held.call_id:  # type: ignore[union-attr]
                held.money = False
            return common(effect)

        return perform

    def finish_stream(self, result: CallResult, end: StreamEnd) -> CallResult:
        """Complete a call whose reply was a stream (``result.pending_stream``) once it ended.

        Records the stream's timings, charges its usage, settles the budget and notifies
        ``on_attempt``; returns the call's final `CallResult`. Call it once per stream.
        """
        if not result.pending_stream:
            raise ValueError(f"call {result.call_id} has no pending stream to finish")
        return self._ended(run(stream_flow(self, result, end), self.perform))

    async def afinish_stream(self, result: CallResult, end: StreamEnd) -> CallResult:
        """The async twin of `finish_stream`, which also awaits async stores."""
        if not result.pending_stream:
            raise ValueError(f"call {result.call_id} has no pending stream to finish")
        return self._ended(await arun(stream_flow(self, result, end), self.perform))

    def _settle_quietly(self, call_id: str, billed: float | None) -> None:
        # Interrupted mid-attempt (cancelled, KeyboardInterrupt): leave no budget reserved, and
        # charge what an attempt in flight is billed (``billed``; None: release). A reservation
        # that cannot be dropped here (an async ledger, a store that is away) lapses at its
        # expiry.
        if self.ledger is None or _is_async(self.ledger, "release"):
            return
        with contextlib.suppress(TierselError):
            if billed is None:
                self.ledger.release(call_id, self.clock.now())
            else:
                self.ledger.settle(call_id, billed, self.clock.now())

    async def _asettle_quietly(self, call_id: str, billed: float | None) -> None:
        """The async twin of `_settle_quietly`, for sync and async ledgers alike."""
        if self.ledger is None:
            return
        with contextlib.suppress(TierselError):
            now = self.clock.now()
            if billed is None:
                done = self.ledger.release(call_id, now)
            else:
                done = self.ledger.settle(call_id, billed, now)
            if inspect.isawaitable(done):
                await done

    def _sync_signals(self, what: str) -> SignalStore:
        if _is_async(self.signals, "stats"):
            raise TypeError(f"{what}: the signal store {self.signals!r} is async; {_ASYNC_WAY}")
        return cast(SignalStore, self.signals)

    def _sync_ledger(self, what: str) -> Ledger | None:
        if self.ledger is not None and _is_async(self.ledger, "reserve"):
            raise TypeError(
                f"{what}: the budget ledger {self.ledger!r} is async; {_ASYNC_WAY} (decide takes"
                " budget=, its state awaited)"
            )
        return cast("Ledger | None", self.ledger)


_ASYNC_WAY = "use asend or an AsyncTierTransport, which await it"


@dataclass(slots=True)
class _Held:
    """What an interrupted call (``call_id``) leaves to settle: whether it holds a reservation
    (``money``: reserved, not yet settled or released), and the send or race under way with the
    time it began (``attempt``)."""

    call_id: str
    money: bool = False
    attempt: tuple[Send | Race, float] | None = None


_KEYS_KEPT = 4096  # sets of keys a decision reads, kept per engine (cleared when full)

_LEAN_S = 0.5
"""How long a tier's health is reused after a failure (its lean fades over tens of seconds)."""


class _HealthView(Mapping[str, TierHealth]):
    """`Engine.health` for one decision, each tier assessed when the policy first reads it (a
    policy skips the tiers a call may not use, such as opt-in ones)."""

    __slots__ = ("_keys", "_now", "_read", "_seen", "_sel")

    def __init__(self, sel: Engine, model: str, now: float) -> None:
        self._sel = sel
        self._keys = sel._tier_keys(model)
        self._now = now
        self._read = sel._sync_signals("health").stats
        self._seen: dict[str, TierHealth] = {}

    def get(self, tier: str, default: Any = None) -> Any:
        health = self._seen.get(tier)
        if health is None:
            key = self._keys.get(tier)
            if key is None:
                return default
            # `Engine.assess` keeps health while its counters stand still.
            health = self._sel.assess(key, self._read(key, self._now), self._now)
            self._seen[tier] = health
        return health

    def __getitem__(self, tier: str) -> TierHealth:
        health: TierHealth | None = self.get(tier)
        if health is None:
            raise KeyError(tier)
        return health

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


_HIT_WEIGHT = 0.05
"""How much one call moves the engine's `Engine.cache_hit_rate`: about the last 20 calls count."""


_EFFECT_HANDLERS: dict[type, Callable[[Engine, Any], Any]] = {
    Now: Engine._now,
    ReadSignals: Engine._read_signals,
    ClaimProbe: Engine._claim_probe,
    Record: Engine._record,
    Notify: Engine._notify,
    ReadBudget: Engine._read_budget,
    Reserve: Engine._reserve,
    Settle: Engine._settle,
    Release: Engine._release,
}


_ASYNC_METHODS: dict[tuple[type, str], bool] = {}


def _is_async(store: object, method: str) -> bool:
    """Whether ``store``'s ``method`` is a coroutine function (cached by type: it is hot)."""
    key = (type(store), method)
    found = _ASYNC_METHODS.get(key)
    if found is None:
        found = _ASYNC_METHODS[key] = inspect.iscoroutinefunction(getattr(key[0], method, None))
    return found


def _accounted(do: Callable[[], Any]) -> Any:
    """A settle or a release, ``do()``: the call's request has gone, so a budget store that is
    away then must not cost the caller its answer (which the provider has billed). The store's
    error is logged (it says what became of the money: the reservation lapses at its expiry)
    and the call goes on; an async store's is caught when awaited."""
    try:
        done = do()
    except StoreUnavailable as exc:
        log.warning("tiersel: %s", exc)
        return None
    return _aaccounted(done) if inspect.isawaitable(done) else done


async def _aaccounted(pending: Awaitable[Any]) -> Any:
    try:
        return await pending
    except StoreUnavailable as exc:
        log.warning("tiersel: %s", exc)
        return None


async def _awaited(pending: Sequence[Any]) -> list[Any]:
    done: list[Any] = []
    try:
        for p in pending:
            done.append(await p)
    finally:
        # Cancelled or failed part way: close the reads never started, or each would warn
        # "coroutine ... was never awaited" when collected.
        for p in pending[len(done) + 1 :]:
            close = getattr(p, "close", None)
            if close is not None:
                close()
    return done


def pinned(req: Requirements, implied: str | None, siblings: Collection[str] = ()) -> Requirements:
    """``req`` for a call whose model id names a tier (a router id): that tier alone, or, where
    the allowed tiers name them, the ``siblings`` the same id also serves (a US-only router is
    sold with priority too: ``--model kimi-k3-us --tiers us_priority``). Allowed tiers that
    leave all of them out contradict the id (``--model kimi-k3-us --tiers spot``)."""
    if implied is None:
        return req
    if req.tiers is None:
        return req.model_copy(update={"tiers": (implied,)})
    kept = tuple(t for t in req.tiers if t == implied or t in siblings)
    if not kept:
        raise ConflictingRequirements(
            f"the model id names the {implied} tier, but the allowed tiers are"
            f" {', '.join(req.tiers)}"
        )
    return req.model_copy(update={"tiers": kept})


def siblings(prices: ModelPrices, implied: str | None) -> tuple[str, ...]:
    """The other tiers served by the router id that names tier ``implied`` (``us_priority``
    for ``us``); none for a tier that a request's ``service_tier`` asked for already."""
    if implied is None or implied.endswith("_priority") or implied not in prices.tiers:
        return ()
    model_id = prices.tiers[implied].model_id
    return tuple(
        name for name, tp in prices.tiers.items() if name != implied and tp.model_id == model_id
    )
