"""A prompt the provider reads from its cache: its prefill is not waited for. The engine cannot
see the provider's cache, but it sees the prompts it sent: a call whose prompt begins with one
served lately expects that part cached, at the rate the replies' usage bears out."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tiersel import Call, Requirements, Selector
from tiersel.clock import FakeClock
from tiersel.dialects import Usage
from tiersel.engine import Engine
from tiersel.engine.results import Reply, StreamEnd
from tiersel.prompts import CACHE_TTL_S
from tiersel.signals import Outcome

CONTEXT = {"role": "system", "content": "c" * 150_000}  # about 50,000 tokens at 3 bytes a token
STANDARD = Requirements(tiers=("standard",))
FIVE_SECONDS = Requirements(deadline_s=5, reliability=0.9)


def _turn(*messages: str) -> dict[str, Any]:
    """A turn of a conversation over ``CONTEXT``: its messages so far."""
    said = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": m}
        for i, m in enumerate(messages)
    ]
    return {"model": "kimi-k3", "messages": [CONTEXT, *said], "max_tokens": 100, "stream": True}


def _serve(
    engine: Engine,
    body: dict[str, Any],
    cached: int,
    ttft_s: float,
    *,
    estimated: bool = False,
    outcome: Outcome = Outcome.ok,
) -> int:
    """Stream ``body`` on standard; the provider reports ``cached`` prompt tokens read from its
    cache and a first token at ``ttft_s`` (``estimated``: the stream reported no usage, and the
    door estimated it). Returns the tokens the call expected cached."""
    started = engine.start(body, requirements=STANDARD)
    result = engine.run(started, lambda effect: Reply(200, {}, None, 0.1, True))
    assert result.pending_stream
    usage = Usage(started.call.input_tokens, cached, 100, None)
    end = StreamEnd(outcome, usage, ttft_s + 2.0, ttft_s=ttft_s, usage_estimated=estimated)
    engine.finish_stream(result, end)
    engine.clock.advance(10.0)
    return started.call.expected_cached_input_tokens or 0


def _decide(engine: Engine, body: dict[str, Any]) -> Any:
    started = engine.start(body, requirements=FIVE_SECONDS)
    decision = engine.decide(started.call, FIVE_SECONDS)
    started.flow.close()
    return started.call, decision


def test_a_turn_that_goes_on_from_a_served_prompt_expects_it_cached() -> None:
    # A 50,000-token context: its first turn waits about 6 s of prefill, so a 5 s deadline
    # is not planned on standard. Once the provider has read it, the next turn expects those
    # tokens cached and standard meets the deadline; a prompt that was never sent still
    # expects none, however many cached ones came before (the share is the call's own).
    engine = Engine(clock=FakeClock())
    first = _turn("what does it say?")
    call, fresh = _decide(engine, first)
    assert call.expected_cached_input_tokens is None
    assert not fresh.tier.startswith("standard")

    assert _serve(engine, first, 0, 6.5) == 0
    second = _turn("what does it say?", "it says c", "and then?")
    call, learned = _decide(engine, second)
    expected = call.expected_cached_input_tokens
    assert expected is not None and 0.95 * call.input_tokens < expected < call.input_tokens
    assert learned.tier == "standard" and learned.expected_latency_s < 5.0

    other = _turn("a question never asked")
    other["messages"][0] = {"role": "system", "content": "d" * 150_000}
    call, unseen = _decide(engine, other)
    assert call.expected_cached_input_tokens is None
    assert not unseen.tier.startswith("standard")

    # A guess never lowers a cost, and so never what is reserved.
    call, _ = _decide(engine, second)
    stated = call.model_copy(update={"expected_cached_input_tokens": None})
    guessed, known = engine.decide(call, STANDARD), engine.decide(stated, STANDARD)
    assert guessed.worst_case_cost_usd == known.worst_case_cost_usd
    assert guessed.estimated_cost_usd == known.estimated_cost_usd


def test_the_hit_rate_follows_what_replies_report() -> None:
    # A provider whose cache serves none of what was read before (a cache lost, or one not
    # shared across replicas), then all of it, then half: the expectation follows each, and a
    # rate fallen to 0 still learns (it is learned on what was seen, not on what was expected).
    engine = Engine(clock=FakeClock())
    body = _turn("hello")
    _serve(engine, body, 0, 6.5)
    assert _serve(engine, body, 0, 6.5) > 0  # the same prompt again: all of it expected
    assert engine.cache_hit_rate("kimi-k3") == 0.0
    assert _serve(engine, body, 50_000, 0.5) == 0  # expected none, but the cache served it
    for _ in range(60):
        _serve(engine, body, 50_000, 0.5)
    assert engine.cache_hit_rate("kimi-k3") > 0.95
    for _ in range(150):
        expected = _serve(engine, body, 25_000, 3.0)
    assert engine.cache_hit_rate("kimi-k3") == pytest.approx(0.5, abs=0.02)
    assert expected == pytest.approx(25_000, rel=0.05)


def test_an_estimated_usage_says_nothing_of_the_cache() -> None:
    # A stream the caller closed, or that broke, reported no usage: its estimate counts no
    # cached tokens, which is not a miss. Its prompt was read all the same: it is remembered.
    engine = Engine(clock=FakeClock())
    body = _turn("hello")
    _serve(engine, body, 0, 6.5, estimated=True, outcome=Outcome.error)
    assert _serve(engine, body, 0, 6.5, estimated=True) > 0
    assert engine.cache_hit_rate("kimi-k3") == 1.0


def test_an_image_counts_no_tokens_of_a_prefix() -> None:
    # The token estimate counts text, not images: a shared first message that holds only an
    # image is no part of the prompt's expected cached tokens.
    engine = Engine(clock=FakeClock())
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 400_000}}

    def asking(question: str) -> dict[str, Any]:
        said = [{"role": "user", "content": [image]}, {"role": "user", "content": question}]
        return {"model": "kimi-k3", "messages": said, "max_tokens": 100, "stream": True}

    _serve(engine, asking("a" * 30_000), 0, 2.0)
    assert _serve(engine, asking("b" * 30_000), 0, 2.0) == 0


def test_a_prefix_is_forgotten_after_the_caches_lifetime() -> None:
    engine = Engine(clock=FakeClock())
    body = _turn("hello")
    _serve(engine, body, 0, 6.5)
    engine.clock.advance(CACHE_TTL_S)
    assert _serve(engine, body, 50_000, 0.5) == 0


def test_replies_read_whole_teach_it_too_and_short_prompts_are_not_looked_up() -> None:
    seen: list[int] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        usage: dict[str, Any] = {
            "prompt_tokens": 4000,
            "completion_tokens": 20,
            "prompt_tokens_details": {"cached_tokens": 3000},
        }
        return httpx.Response(200, json={"id": "c", "choices": [], "usage": usage})

    sel = Selector(
        clock=FakeClock(),
        transport=httpx.MockTransport(upstream),
        api_key="",
        on_result=lambda r: seen.append(r.prompt.expected_cached if r.prompt else -1),
    )
    body = {"model": "kimi-k3", "messages": [{"role": "user", "content": "q" * 12_000}]}
    assert sel.send(body).ok and sel.send(body).ok
    assert seen[0] == 0 and seen[1] > 3000
    short = {"model": "kimi-k3", "messages": [{"role": "user", "content": "hi"}]}
    assert sel.send(short).ok and sel.send(short).ok
    assert seen[2:] == [-1, -1]  # under `MIN_CACHED_TOKENS`: no prefixes taken


def test_an_expected_cached_count_above_the_prompt_is_refused() -> None:
    with pytest.raises(
        ValidationError, match=r"expected_cached_input_tokens \(900\) cannot exceed"
    ):
        Call(
            model="kimi-k3",
            input_tokens=800,
            max_output_tokens=10,
            expected_cached_input_tokens=900,
        )
    known = Call(
        model="kimi-k3",
        input_tokens=800,
        cached_input_tokens=600,
        max_output_tokens=10,
        expected_cached_input_tokens=100,
    )
    assert known.uncached_input_tokens == 200  # what is known beats a lower guess


def test_a_prompt_the_provider_never_served_is_not_remembered() -> None:
    # Shed on every attempt: the provider read nothing, so nothing is expected cached after.
    shed = {
        "error": {"object": "error", "type": "server_overloaded", "code": "503", "message": "x"}
    }
    answers = [httpx.Response(503, json=shed)] * 4
    served = {"id": "c", "choices": [], "usage": {"prompt_tokens": 4000, "completion_tokens": 5}}
    answers.append(httpx.Response(200, json=served))
    seen: list[int] = []
    sel = Selector(
        clock=FakeClock(),
        transport=httpx.MockTransport(lambda request: answers.pop(0)),
        api_key="",
        max_attempts=4,
        on_result=lambda r: seen.append(r.prompt.seen if r.prompt else -1),
    )
    body = {"model": "kimi-k3", "messages": [{"role": "user", "content": "q" * 12_000}]}
    only_standard = Requirements(tiers=("standard",))
    assert not sel.send(body, requirements=only_standard).ok
    assert sel.send(body, requirements=only_standard).ok
    assert len(seen) == 2 and seen[1] == 0  # the second call saw no prefix read before


def test_a_prompt_is_cached_from_when_it_was_sent_and_each_model_has_its_rate() -> None:
    # A 250 s call: the provider read its prompt when it was sent, so 400 s after that (150 s
    # after the reply) it is past the cache's lifetime, whatever the reply's time. A miss on
    # kimi-k3 says nothing of another model's cache.
    engine = Engine(clock=FakeClock())
    body = {**_turn("hello"), "stream": False}
    usage = {"prompt_tokens": 50_000, "completion_tokens": 4000}

    def slow(effect: Any) -> Reply:
        engine.clock.advance(250.0)
        return Reply(200, {}, {"id": "c", "choices": [], "usage": usage}, 250.0)

    engine.run(engine.start(body, requirements=STANDARD), slow)
    engine.clock.advance(CACHE_TTL_S - 250.0 - 1.0)
    within = engine.start(body, requirements=STANDARD)
    within.flow.close()
    assert within.call.expected_cached_input_tokens == within.call.input_tokens
    engine.clock.advance(2.0)
    past = engine.start(body, requirements=STANDARD)
    past.flow.close()
    assert past.call.expected_cached_input_tokens is None

    _serve(engine, _turn("again"), 0, 6.5)
    _serve(engine, _turn("again"), 0, 6.5)  # a miss on kimi-k3
    assert engine.cache_hit_rate("kimi-k3") == 0.0
    assert engine.cache_hit_rate("glm-5p3") == 1.0


def test_a_prompt_that_continues_a_stored_conversation_is_not_named() -> None:
    # The Responses API's previous_response_id puts a stored conversation before the input:
    # two such calls with the same input are different prompts.
    from tiersel.dialects import Dialect
    from tiersel.prompts import prompt_prefixes

    asked = {"model": "kimi-k3", "input": "q" * 12_000}
    assert prompt_prefixes(asked, Dialect.responses, 4000)
    stored = {**asked, "previous_response_id": "resp_1"}
    assert prompt_prefixes(stored, Dialect.responses, 4000) == ()
