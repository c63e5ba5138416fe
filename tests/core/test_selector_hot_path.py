"""What the per-call hot path skips must not change what it does: effects only asked for when
they matter, response headers read only for an error, usage and token counts as before."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest

from tiersel import Selector
from tiersel.budget import MemoryLedger
from tiersel.clock import FakeClock
from tiersel.dialects import Dialect, classify, estimate_input_tokens, read_usage
from tiersel.engine.effects import Now, ReadBudget, Reserve, Send, Sleep, run
from tiersel.engine.results import AttemptRecord
from tiersel.http.reply import ReplyHeaders, reply
from tiersel.signals import Outcome

BODY = {
    "model": "accounts/fireworks/models/kimi-k3",
    "messages": [{"role": "user", "content": "hello there"}],
    "max_tokens": 200,
}
USAGE = {"prompt_tokens": 120, "completion_tokens": 80}


class Untouchable(Mapping[str, str]):
    """Headers that fail the test when read."""

    def __getitem__(self, key: str) -> str:
        raise AssertionError(f"header {key!r} was read")

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("headers were iterated")

    def __len__(self) -> int:
        raise AssertionError("headers were counted")


def test_a_success_is_classified_without_reading_its_headers() -> None:
    verdict = classify(200, Untouchable(), {"usage": USAGE})
    assert verdict.outcome is Outcome.ok and not verdict.retryable and verdict.billed


def test_an_error_still_reads_retry_after() -> None:
    verdict = classify(503, {"retry-after": "7"}, None, wall_now=0.0)
    assert verdict.outcome is Outcome.shed and verdict.retry_after_s == 7.0


def test_reply_headers_are_lower_cased_when_first_read() -> None:
    response = httpx.Response(503, headers=[("Retry-After", "3"), ("X-Request-ID", "abc")])
    headers = ReplyHeaders(response)
    assert headers["retry-after"] == "3"
    assert headers.get("x-request-id") == "abc"
    assert headers.get("Retry-After") is None
    assert dict(headers) == {"retry-after": "3", "x-request-id": "abc"}
    assert len(headers) == 2


def test_token_estimates_count_utf8_bytes() -> None:
    ascii_body = {"messages": [{"role": "user", "content": "abcdef"}]}
    wide_body = {"messages": [{"role": "user", "content": "ééé"}]}  # 3 characters, 6 bytes
    assert estimate_input_tokens(ascii_body, bytes_per_token=1) == estimate_input_tokens(
        wide_body, bytes_per_token=1
    )


def test_usage_ignores_booleans_and_negatives() -> None:
    usage = read_usage(
        {"usage": {"prompt_tokens": True, "completion_tokens": -4, "total_tokens": 1}},
        Dialect.openai,
    )
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (0, 0)


def _effects(selector: Selector) -> list[type]:
    """Run one call on ``selector``; the types of the effects its flow yielded, in order."""
    seen: list[type] = []
    flow = selector.engine.start(BODY).flow
    clock = selector.clock
    assert isinstance(clock, FakeClock)

    def perform(effect: Any) -> Any:
        seen.append(type(effect))
        if isinstance(effect, Send):
            clock.advance(0.5)  # the attempt takes half a second
            response = httpx.Response(200, json={"usage": USAGE})
            return reply(response, json.dumps({"usage": USAGE}).encode(), 0.5)
        if isinstance(effect, Sleep):
            return clock.sleep(effect.seconds)
        return selector.engine.perform(effect)

    result = run(flow, perform)
    assert result.ok and result.usage is not None
    return seen


def test_without_a_ledger_the_flow_reads_no_budget() -> None:
    seen = _effects(Selector(clock=FakeClock(), api_key=""))
    assert ReadBudget not in seen and Reserve not in seen
    assert seen.count(Now) == 1  # no hook: the attempt's latency is not read


def test_with_a_ledger_and_a_hook_the_flow_reads_both() -> None:
    records: list[AttemptRecord] = []
    selector = Selector(
        clock=FakeClock(), api_key="", ledger=MemoryLedger(1.0), on_attempt=records.append
    )
    seen = _effects(selector)
    assert ReadBudget in seen and Reserve in seen
    assert len(records) == 1
    assert records[0].latency_s == pytest.approx(0.5)  # from the decision to the reply


def test_an_unknown_effect_is_refused() -> None:
    selector = Selector(clock=FakeClock(), api_key="")
    with pytest.raises(TypeError, match="unknown effect"):
        selector.engine.perform(Sleep(1.0))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="needs a ledger"):
        selector.engine.perform(Reserve("call-1", 0.01))


def test_only_the_tiers_a_call_may_use_have_their_signals_read() -> None:
    # The default policy never uses an opt-in tier unasked, so the flow reads none of their
    # signals; a call that names the tiers it allows reads those.
    from tiersel import Requirements
    from tiersel.engine.effects import ReadSignals

    selector = Selector(clock=FakeClock(), api_key="")
    offered = {k.tier for k in selector.engine.signal_keys("kimi-k3")}
    assert {"spot", "us"} <= offered

    def read(requirements: Requirements | None) -> set[str]:
        flow = selector.engine.start(BODY, requirements=requirements).flow
        effect = flow.send(None)
        while not isinstance(effect, ReadSignals):  # (the clock read first)
            effect = flow.send(selector.engine.perform(effect))
        flow.close()
        return {k.tier for k in effect.keys}

    assert read(None) == {"standard", "priority", "fast"}
    assert read(Requirements(tiers=("spot", "standard"))) == {"spot", "standard"}
    d = selector.decide(selector.engine.call_for(BODY, Dialect.openai)[0])
    assert {r.plan for r in d.reasons if r.code.value == "opt_in"} == offered - {
        "standard",
        "priority",
        "fast",
    }


def test_calls_of_one_shape_share_one_decision_and_models_do_not() -> None:
    from tiersel import Call

    selector = Selector(clock=FakeClock(), api_key="")
    first = selector.decide(Call(model="kimi-k3", input_tokens=500, max_output_tokens=200))
    again = selector.decide(Call(model="kimi-k3", input_tokens=500, max_output_tokens=200))
    assert again is first  # immutable, so the same object serves both
    other = selector.decide(Call(model="glm-5p3", input_tokens=500, max_output_tokens=200))
    assert other.model != first.model and "glm-5p3" in other.model
    assert selector.decide(Call(model="kimi-k3", input_tokens=900, max_output_tokens=200)) != first


def test_a_policy_serving_two_price_tables_never_hands_one_the_other_s_ids(
    tmp_path: Any,
) -> None:
    # Same model, same prices, another fast router id: the remembered decision of one table
    # must not serve the other.
    from tiersel import Call, Requirements
    from tiersel.policy import CheapestFeasible
    from tiersel.pricing import load_pricing

    overlay = tmp_path / "moved.yaml"
    overlay.write_text(
        "models:\n  kimi-k3:\n    fast: {router: accounts/fireworks/routers/kimi-k3-fast-v2,"
        " input: 4.5, cached_input: 0.45, output: 22.5}\n"
    )
    policy = CheapestFeasible()
    call = Call(model="kimi-k3", input_tokens=500, max_output_tokens=200)
    fast = Requirements(min_output_tps=100)
    ids = set()
    for pricing in (load_pricing(), load_pricing(overlay=overlay)):
        selector = Selector(clock=FakeClock(), api_key="", policy=policy, pricing=pricing)
        ids.add(selector.decide(call, fast).model)
    assert ids == {
        "accounts/fireworks/routers/kimi-k3-fast",
        "accounts/fireworks/routers/kimi-k3-fast-v2",
    }
    # Nor the tiers one reads: a table where spot is not opt-in reads spot's signals.
    opened = tmp_path / "spot.yaml"
    opened.write_text("tiers:\n  spot: {opt_in: false}\n")
    read = []
    for pricing in (load_pricing(), load_pricing(overlay=opened)):
        engine = Selector(clock=FakeClock(), api_key="", policy=policy, pricing=pricing).engine
        keys = engine.read_keys(pricing.model("kimi-k3"), Requirements())
        read.append({k.tier for k in keys})
    assert "spot" not in read[0] and "spot" in read[1]
