"""LiteLLM (the real package, over real HTTP against ``tiersel sim serve --scenario peak``):
``litellm.completion`` / ``acompletion`` and a ``Router``'s calls to ``fireworks_ai/...`` get a
tier chosen per call with `tiersel.litellm.TierselLiteLLM`, requirements from each call's
``metadata``, and LiteLLM's own cost tracking sees the cost tiersel charged.

As in test_responses_api.py, the calls run late in the peak's busy spell (scenario time from
270 s), so tight calls escalate and loose ones wait out the sheds in little time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import openai
import pytest

import tiersel
from tests.transport.conftest import MODEL, Recorder
from tiersel.budget import MemoryLedger
from tiersel.clock import ScaledClock
from tiersel.sim.server import RunningServer, serve_in_subprocess

if TYPE_CHECKING:
    from tiersel.litellm import TierselLiteLLM

# LiteLLM takes 2.5 s to import: these tests import it when they run, and run in one pytest-xdist
# worker (--dist loadgroup), so the other workers never import it.
pytestmark = pytest.mark.xdist_group("litellm")

TIME_SCALE = 0.2  # 5x, not the 20x of the other transport tests: LiteLLM spends about 9 ms of
# CPU on each call, and 120 of them in 32 threads on a busy machine lag a call by a good part of a
# second, which 10x made too many simulated seconds of a 10 s deadline (4 of 60 tight calls
# missed theirs in one CI run)


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with serve_in_subprocess("peak", time_scale=TIME_SCALE, seed=3) as running:
        yield running


@pytest.fixture
def clock() -> ScaledClock:
    return ScaledClock(TIME_SCALE)


LITELLM_MODEL = f"fireworks_ai/{MODEL}"
TIGHT = {"deadline_s": 10.0, "reliability": 0.99}
LOOSE = {"deadline_s": 120.0}  # two minutes: time to wait out the spell on standard
START_S = 270.0
CALLS = 120  # 60 tight and 60 loose, alternately
GAP_S = 0.5  # simulated seconds between calls (LiteLLM spends milliseconds on each)
MESSAGES = [{"role": "user", "content": "hello " * 200}]


@dataclass(frozen=True)
class Done:
    """One call as LiteLLM answered it (``error``: the exception it raised instead)."""

    tight: bool
    call_id: str = ""
    tier: str = ""
    response_cost: float | None = None
    text: str = ""
    error: str = ""


class Costs:
    """A LiteLLM callback keeping the ``response_cost`` each successful call reports (a
    ``CustomLogger`` by LiteLLM's registry: see `_costs`)."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        headers = response_obj._hidden_params.get("additional_headers") or {}
        if "llm_provider-x-tiersel-call-id" in headers:  # not a warm-up call's
            self.seen.append(kwargs["response_cost"])

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self.log_success_event(kwargs, response_obj, start_time, end_time)


_COSTS: list[
    Costs
] = []  # one instance: LiteLLM keeps the callbacks it has seen in lists of its own


@pytest.fixture
def costs(monkeypatch: pytest.MonkeyPatch) -> Costs:
    import litellm
    from litellm.integrations.custom_logger import CustomLogger

    if not _COSTS:
        _COSTS.append(type("LoggedCosts", (Costs, CustomLogger), {})())
    monkeypatch.setattr(litellm, "callbacks", [_COSTS[0]])
    _COSTS[0].seen.clear()
    return _COSTS[0]


def _done(tight: bool, response: Any) -> Done:
    hidden = response._hidden_params
    headers = hidden["additional_headers"]
    return Done(
        tight,
        headers["llm_provider-x-tiersel-call-id"],
        headers["llm_provider-x-tiersel-tier"],
        hidden.get("response_cost"),
        response.choices[0].message.content,
    )


def _router() -> Any:
    """A Router over the model. tiersel's schedule is the call's retry policy: a Router's own
    retries (``num_retries``) would send again a call tiersel has given up on."""
    import litellm

    return litellm.Router(
        model_list=[{"model_name": "kimi", "litellm_params": {"model": LITELLM_MODEL}}],
        num_retries=0,
    )


@pytest.fixture
def installed() -> Iterator[list[TierselLiteLLM]]:
    """Installed handlers, uninstalled after the test."""
    made: list[TierselLiteLLM] = []
    yield made
    for tl in made:
        tl.close()
    assert not any(tl.installed for tl in made)


def _setup(
    server: RunningServer, clock: ScaledClock, router: Any, installed: list[TierselLiteLLM]
) -> tuple[Recorder, TierselLiteLLM]:
    import litellm

    from tiersel.litellm import TierselLiteLLM

    # First calls pay LiteLLM's one-off costs (a second or more, 20+ s at 20x simulated
    # speed): made before the clock is set, so that the timed calls start at the spell.
    # Calm first: the warm-up calls go to standard with LiteLLM's own retries, which wait
    # between tries when the spell (where the last test left the server) sheds them.
    server.reset(time_s=0.0)
    warm = {"messages": MESSAGES, "max_tokens": 5, "api_key": "sk-test", "num_retries": 9}
    litellm.completion(model=LITELLM_MODEL, api_base=server.openai_base_url, **warm)
    router.completion(model="kimi", api_base=server.openai_base_url, **warm)
    server.reset(time_s=START_S)
    recorder = Recorder()
    ledger = MemoryLedger(10.0)
    selector = tiersel.Selector(clock=clock, api_key="", ledger=ledger)
    tl = TierselLiteLLM(selector, on_call=recorder, hosts=["127.0.0.1"]).install()
    installed.append(tl)
    return recorder, tl


def _kwargs(server: RunningServer, i: int) -> tuple[bool, dict[str, Any]]:
    tight = i % 2 == 0
    return tight, {
        "messages": MESSAGES,
        "max_tokens": 60,
        "api_base": server.openai_base_url,
        "api_key": "sk-test",
        "metadata": {"tiersel": TIGHT if tight else LOOSE},
    }


def _check(
    server: RunningServer, tl: TierselLiteLLM, outcomes: list[Done], records: Recorder, costs: Costs
) -> None:
    assert len(outcomes) == CALLS
    failed = [d for d in outcomes if d.error]
    done = [d for d in outcomes if not d.error]
    by_id = {r.call_id: r for r in records.records}
    assert len(by_id) == CALLS
    # Tight calls each asked for 0.99: more than 3 failures of 60 is a 0.3% event; loose ones
    # have ten minutes, and none may fail. A failed call is not billed (sheds are free).
    unserved = [r for r in records.records if not r.ok]
    assert len(failed) <= 3 and all(d.tight for d in failed), [
        (r.tried, r.detail, r.elapsed_s) for r in unserved
    ]
    assert len(unserved) == len(failed) and all(r.cost_usd == 0.0 for r in unserved)
    assert all(d.text for d in done)
    for d in done:
        record = by_id[d.call_id]
        assert record.ok and str(record.tier) == d.tier
        wanted = TIGHT if d.tight else LOOSE
        assert record.requirements.deadline_s == wanted["deadline_s"]
        assert record.requirements.reliability == wanted.get("reliability")
    tight = [r for r in records.records if r.requirements.reliability is not None]
    loose = [r for r in records.records if r.requirements.reliability is None]
    assert len(tight) == len(loose) == CALLS // 2
    assert len({t for r in tight for t in r.tried}) > 1, [r.tried for r in tight]
    assert all(set(r.tried) == {"standard"} for r in loose), [r.tried for r in loose]
    ledger = tl.selector.ledger
    assert isinstance(ledger, MemoryLedger)
    state = ledger.state(0.0)
    # LiteLLM's own cost of each call is tiersel's, and their sum is what the ledger spent.
    for d in done:
        assert d.response_cost == pytest.approx(by_id[d.call_id].cost_usd, abs=1e-12)
    assert sum(d.response_cost or 0.0 for d in done) == pytest.approx(state.spent_usd)
    assert sorted(costs.seen) == pytest.approx(sorted(d.response_cost or 0.0 for d in done))
    assert sum(r.cost_usd for r in records.records) == pytest.approx(state.spent_usd)
    assert state.reserved_usd == 0.0
    stats = server.stats()
    assert stats["by_status"].get("503", 0) > 0, "the spell should have shed something"
    assert stats["hinted"] == 0 and stats["priority_with_router"] == 0


def test_sync_litellm_calls_get_a_tier_each(
    server: RunningServer, clock: ScaledClock, costs: Costs, installed: list[TierselLiteLLM]
) -> None:
    import litellm

    router = _router()
    records, tl = _setup(server, clock, router, installed)
    start = clock.now()

    def one(i: int) -> Done:
        clock.sleep(start + i * GAP_S - clock.now())
        tight, kwargs = _kwargs(server, i)
        if i % 4 in (0, 2):  # a client for the call; the others go by the installed handlers
            kwargs["client"] = tl.client
        try:
            if i % 4 < 2:  # half through litellm.completion, half through a Router
                response = litellm.completion(model=LITELLM_MODEL, **kwargs)
            else:
                response = router.completion(model="kimi", **kwargs)
        except openai.APIError as exc:
            return Done(tight, error=repr(exc)[:300])
        return _done(tight, response)

    # A thread for each call, as the async twin has a task for each: with fewer, loose calls
    # waiting out the spell held every thread, and later calls went out up to 30 s late.
    with ThreadPoolExecutor(CALLS) as pool:
        done = list(pool.map(one, range(CALLS)))
    _wait_for_callbacks(costs, sum(not d.error for d in done))
    _check(server, tl, done, records, costs)


def test_async_litellm_calls_get_a_tier_each(
    server: RunningServer, clock: ScaledClock, costs: Costs, installed: list[TierselLiteLLM]
) -> None:
    import litellm

    router = _router()
    records, tl = _setup(server, clock, router, installed)

    async def main() -> list[Done]:
        start = clock.now()

        async def one(i: int) -> Done:
            await clock.asleep(start + i * GAP_S - clock.now())
            tight, kwargs = _kwargs(server, i)
            if i % 4 in (0, 2):
                kwargs["client"] = tl.aclient
            try:
                if i % 4 < 2:
                    response = await litellm.acompletion(model=LITELLM_MODEL, **kwargs)
                else:
                    response = await router.acompletion(model="kimi", **kwargs)
            except openai.APIError as exc:
                return Done(tight, error=repr(exc)[:300])
            return _done(tight, response)

        done = list(await asyncio.gather(*(one(i) for i in range(CALLS))))
        for _ in range(200):  # LiteLLM logs successes in tasks of their own
            if len(costs.seen) >= sum(not d.error for d in done):
                break
            await asyncio.sleep(0.01)
        return done

    _check(server, tl, asyncio.run(main()), records, costs)


def _wait_for_callbacks(costs: Costs, n: int) -> None:
    """LiteLLM runs sync success callbacks in a thread of its own, after the call returns."""
    for _ in range(200):
        if len(costs.seen) >= n:
            return
        time.sleep(0.01)


def test_streamed_litellm_calls_are_routed_and_charged(
    server: RunningServer, clock: ScaledClock, installed: list[TierselLiteLLM]
) -> None:
    import litellm

    records, tl = _setup(server, clock, _router(), installed)
    kwargs = _kwargs(server, 0)[1]

    chunks = litellm.completion(model=LITELLM_MODEL, client=tl.client, stream=True, **kwargs)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)

    async def astream() -> str:
        chunks = await litellm.acompletion(
            model=LITELLM_MODEL, client=tl.aclient, stream=True, **kwargs
        )
        return "".join([c.choices[0].delta.content or "" async for c in chunks])

    atext = asyncio.run(astream())
    assert text and atext
    assert len(records.records) == 2 and all(r.ok and r.streamed for r in records.records)
    assert all(r.usage is not None and r.usage.completion_tokens == 60 for r in records.records)
    ledger = tl.selector.ledger
    assert isinstance(ledger, MemoryLedger)
    assert ledger.state(0.0).spent_usd == pytest.approx(sum(r.cost_usd for r in records.records))


def _one_call(server: RunningServer, tl: TierselLiteLLM, metadata: Any) -> Any:
    """A short ``litellm.completion`` through ``tl``'s sync handler, with ``metadata``."""
    import litellm

    return litellm.completion(
        model=LITELLM_MODEL,
        messages=MESSAGES,
        max_tokens=5,
        api_base=server.openai_base_url,
        api_key="sk-test",
        metadata=metadata,
        client=tl.client,
    )


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"tiersel": {"deadline_s": -1}}, 'metadata["tiersel"].deadline_s: Input should be'),
        ({"tiersel": {"deadline": 5}}, 'metadata["tiersel"].deadline: Extra inputs'),
        ({"tiersel": "fast"}, 'metadata["tiersel"] must be a mapping of requirements, got str'),
        ({"tiersel": {"tiers": ["nope"]}}, 'metadata["tiersel"].tiers: unknown tier(s) nope'),
    ],
)
def test_bad_metadata_is_refused_naming_the_field(
    server: RunningServer, metadata: dict[str, Any], message: str
) -> None:
    import litellm

    from tiersel.litellm import InvalidMetadata, TierselLiteLLM, metadata_requirements

    known = tuple(str(t) for t in tiersel.Selector(api_key="").pricing.tiers)
    with pytest.raises(InvalidMetadata) as caught:
        metadata_requirements(metadata, known)
    assert str(caught.value).startswith(message)
    server.reset(time_s=0.0)
    tl = TierselLiteLLM(tiersel.Selector(api_key=""))
    with pytest.raises(litellm.BadRequestError, match="invalid_metadata"):
        _one_call(server, tl, metadata)
    assert server.stats()["requests"] == 0  # nothing was sent


def test_metadata_without_requirements_leaves_the_call_alone() -> None:
    from tiersel.litellm import metadata_requirements

    assert metadata_requirements(None) == {}
    assert metadata_requirements({"user": "x"}) == {}
    assert metadata_requirements({"tiersel": {"hedge": True}}) == {"hedge": True}


def test_install_is_undone_by_uninstall_and_by_leaving_the_block(calm: RunningServer) -> None:
    import litellm

    from tiersel.litellm import TierselLiteLLM

    before = litellm.in_memory_llm_clients_cache
    records = Recorder()
    selector = tiersel.Selector(api_key="")
    call = {
        "model": LITELLM_MODEL,
        "messages": MESSAGES,
        "max_tokens": 5,
        "api_base": calm.openai_base_url,
        "api_key": "sk-test",
    }
    with TierselLiteLLM(selector, on_call=records, hosts=["127.0.0.1"]) as tl:
        assert tl.installed and litellm.in_memory_llm_clients_cache is not before
        litellm.completion(**call)
    assert not tl.installed and litellm.in_memory_llm_clients_cache is before
    litellm.completion(**call)  # LiteLLM's own handler again: not tiersel's
    assert len(records.records) == 1
    other = TierselLiteLLM(selector, on_call=records, hosts=["api.fireworks.ai"]).install()
    try:
        litellm.completion(**call)  # installed, but for another host: passes by
    finally:
        other.uninstall()
    assert len(records.records) == 1 and calm.stats()["requests"] == 3
    assert litellm.in_memory_llm_clients_cache is before
    with pytest.raises(ValueError, match="hosts must be non-empty host names"):
        TierselLiteLLM(selector, hosts=[])


@pytest.mark.parametrize(
    ("budget", "wanted", "status"),
    [
        (1e-9, {"deadline_s": 600}, 402),  # no budget for any tier
        (10.0, {"deadline_s": 0.01, "reliability": 0.999}, 422),  # no tier meets it
    ],
)
def test_tiersels_refusals_reach_litellm_as_what_they_are(
    calm: RunningServer, budget: float, wanted: dict[str, Any], status: int
) -> None:
    import litellm

    from tiersel.litellm import TierselLiteLLM

    tl = TierselLiteLLM(tiersel.Selector(api_key="", ledger=MemoryLedger(budget)))
    with pytest.raises((openai.APIStatusError, litellm.APIError)) as caught:
        _one_call(calm, tl, {"tiersel": wanted})
    # Not a 500, which a Router's retries and fallbacks would take for the provider failing.
    assert not isinstance(caught.value, litellm.InternalServerError)
    assert caught.value.status_code == status  # type: ignore[union-attr]
    assert "tiersel: " in str(caught.value)
    assert calm.stats()["requests"] == 0


def test_litellms_cost_includes_an_attempt_given_up_on_before_the_answer() -> None:
    # CI, once: a tight call whose first attempt timed out was charged that attempt's bill as
    # well (cost basis 'estimate'), but LiteLLM's response_cost was the answer's usage alone
    # ($0.0015 of $0.0036): the handler passed tiersel's cost on only for basis 'actual'.
    import httpx
    import litellm

    from tiersel.clock import FakeClock
    from tiersel.litellm import TierselLiteLLM

    sent: list[int] = []

    def provider(request: httpx.Request) -> httpx.Response:
        sent.append(1)
        if len(sent) == 1:
            raise httpx.ReadTimeout("no answer", request=request)
        usage = {"prompt_tokens": 300, "completion_tokens": 20, "total_tokens": 320}
        message = {"role": "assistant", "content": "hi"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        doc = {"id": "c", "object": "chat.completion", "created": 1, "model": MODEL}
        return httpx.Response(200, json={**doc, "choices": [choice], "usage": usage})

    records = Recorder()
    selector = tiersel.Selector(
        api_key="", clock=FakeClock(), transport=httpx.MockTransport(provider)
    )
    tl = TierselLiteLLM(selector, on_call=records)
    response = litellm.completion(
        model=LITELLM_MODEL, messages=MESSAGES, max_tokens=20, client=tl.client, api_key="x"
    )
    record = records.last
    assert len(sent) == 2 and record.ok and record.cost_basis.value == "estimate"
    assert record.cost_usd > tiersel.cost.charge(
        selector.pricing.model("kimi-k3"), str(record.tier), 300, 0, 20
    )  # the given-up attempt's bill is in it
    cost = response._hidden_params["response_cost"]  # type: ignore[union-attr]
    assert cost == pytest.approx(record.cost_usd, abs=1e-12)
