"""Prometheus metrics for a `tiersel.Selector` (the ``tiersel[prometheus]`` extra).

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> import tiersel
>>> from tiersel.prometheus import TierselMetrics
>>> registry = CollectorRegistry()
>>> selector = tiersel.Selector(api_key="")
>>> metrics = TierselMetrics(selector, registry=registry)
>>> b"tiersel_calls_total" in generate_latest(registry)
True

Every call the selector ends, whichever door it came through (`Selector.send`, the
`TierTransport`, a batch job), counts once:

- ``tiersel_calls_total{model,tier,outcome}``: calls, by the tier that served them (or last tried)
  and ``ok`` or the failure's outcome (``shed``, ``error``, ``timeout``, ...);
- ``tiersel_spend_usd_total{model,tier}``: what they were charged;
- ``tiersel_decide_seconds``: the policy's time per decision (a histogram);

and, read when scraped:

- ``tiersel_budget_remaining_usd``: what the selector's ledger has left (a sync ledger; none, no
  sample);
- ``tiersel_shed_rate{model,tier}``: each tier's share of refused attempts in the signals' window,
  for the models the selector has served.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tiersel.budget import Ledger
from tiersel.call import BudgetState, Call, Requirements
from tiersel.decision import Decision
from tiersel.engine.billing import classify_reply
from tiersel.engine.results import CallResult
from tiersel.policy import Policy, Signals
from tiersel.pricing import ModelPrices
from tiersel.selector import Selector
from tiersel.signals import SignalKey, SignalStore

__all__ = ["TierselMetrics"]

_DECIDE_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.025, 0.1)


class _TimedPolicy:
    """The selector's policy, its time per decision observed (its attributes pass through);
    once ``active`` is off (its metrics closed while another wraps it), a plain pass-through."""

    def __init__(self, policy: Policy, histogram: Histogram) -> None:
        self.policy = policy
        self._observe = histogram.observe
        self.active = True

    def __call__(
        self,
        call: Call,
        requirements: Requirements,
        budget: BudgetState | None,
        prices: ModelPrices,
        signals: Signals,
        now: float,
    ) -> Decision:
        if not self.active:
            return self.policy(call, requirements, budget, prices, signals, now)
        started = time.perf_counter()
        try:
            return self.policy(call, requirements, budget, prices, signals, now)
        finally:
            self._observe(time.perf_counter() - started)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)


class TierselMetrics(Collector):
    """Metrics of one `Selector`, registered in ``registry`` (the default registry if None).

    It hooks the selector: its ``on_result`` (a hook already set is still called) and its policy
    (timed). `close` unregisters and unhooks; several metrics on one selector may close in any
    order. A call refused before any attempt (`NoFeasibleTier`, `BudgetExhausted` raised) ends
    no call and is not counted; its decision is timed.
    """

    def __init__(self, selector: Selector, *, registry: CollectorRegistry | None = None) -> None:
        self.selector = selector
        self.registry = registry if registry is not None else REGISTRY
        self._calls = Counter(
            "tiersel_calls",
            "Calls tiersel ended, by model, the tier that served (or last tried) and outcome",
            ["model", "tier", "outcome"],
            registry=None,
        )
        self._spend = Counter(
            "tiersel_spend_usd",
            "What tiersel's calls were charged, in USD",
            ["model", "tier"],
            registry=None,
        )
        self._decide = Histogram(
            "tiersel_decide_seconds",
            "The policy's time per decision",
            buckets=_DECIDE_BUCKETS,
            registry=None,
        )
        self._models: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.registry.register(self)  # first: a registration refused leaves the selector as it was
        engine = selector.engine
        self._previous = engine.on_result
        self._timed = _TimedPolicy(engine.policy, self._decide)
        engine.on_result = self._on_result
        engine.policy = self._timed

    def close(self) -> None:
        """Unregister, and unhook the selector: where other hooks were set over these since, these
        stay in the chain, passing calls on uncounted."""
        if self._closed:
            return
        self._closed = True
        self.registry.unregister(self)
        self._timed.active = False
        engine = self.selector.engine
        if engine.on_result == self._on_result:
            engine.on_result = self._previous
        if engine.policy is self._timed:
            engine.policy = self._timed.policy

    def _on_result(self, result: CallResult) -> None:
        if self._previous is not None:
            self._previous(result)
        if self._closed:
            return
        step = result.step
        model = self.selector.pricing.model(step.model).name if step is not None else "unknown"
        tier = str(result.tier) if result.tier is not None else "none"
        outcome = "ok" if result.ok else _outcome(result)
        self._calls.labels(model, tier, outcome).inc()
        if result.cost_usd > 0:
            self._spend.labels(model, tier).inc(result.cost_usd)
        if step is not None:  # (a call that sent nothing names no model the table knows)
            with self._lock:
                self._models.add(model)

    def describe(self) -> Iterator[Any]:
        """The metrics' names, without reading the selector (a registry checks them for
        duplicates when this registers)."""
        yield from self._calls.describe()
        yield from self._spend.describe()
        yield from self._decide.describe()
        yield GaugeMetricFamily("tiersel_budget_remaining_usd", "")
        yield GaugeMetricFamily("tiersel_shed_rate", "", labels=["model", "tier"])

    def collect(self) -> Iterator[Any]:
        yield from self._calls.collect()
        yield from self._spend.collect()
        yield from self._decide.collect()
        sel = self.selector
        now = sel.clock.now()
        remaining = GaugeMetricFamily(
            "tiersel_budget_remaining_usd", "What the selector's budget ledger has left, in USD"
        )
        ledger = sel.ledger
        if ledger is not None and not inspect.iscoroutinefunction(ledger.state):
            state = cast(Ledger, ledger).state(now)  # (an async ledger cannot be read here)
            remaining.add_metric([], state.remaining_usd)
        yield remaining
        shed = GaugeMetricFamily(
            "tiersel_shed_rate",
            "Each tier's share of refused (shed or rate-limited) attempts in the signals' window",
            labels=["model", "tier"],
        )
        with self._lock:
            models = sorted(self._models)
        signals = cast(SignalStore, sel.signals)
        if inspect.iscoroutinefunction(signals.stats):
            models = []  # an async store cannot be read here
        for model in models:
            for tier in sel.pricing.model(model).tiers:
                stats = signals.stats(SignalKey(sel.engine.endpoint, model, tier), now)
                if stats.n:
                    rate = (stats.shed + stats.rate_limited) / stats.n
                    shed.add_metric([model, str(tier)], rate)
        yield shed


def _outcome(result: CallResult) -> str:
    """The outcome a failed call ended on: ``budget`` when the budget could not cover its
    retry (its last reply, often a shed, is not why it ended), else its last reply's (``shed``,
    ``error``, ...)."""
    if result.budget_stopped:
        return "budget"
    if result.reply is None:
        return "not_sent"
    return str(classify_reply(result.reply).outcome.value)
