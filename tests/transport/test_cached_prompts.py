"""A conversation over a long context, through the openai SDK and `TierTransport` over real HTTP
against the simulator: the first turn reads the whole context and is planned for its prefill;
the next finds it in the provider's cache, and tiersel, which saw it served, plans for that."""

from __future__ import annotations

import itertools

import openai

import tiersel
from tests.transport.conftest import MODEL, Recorder, sync_http
from tiersel.clock import ScaledClock
from tiersel.sim.server import RunningServer

_TOLD = itertools.count()
TIGHT = {"deadline_s": 6.0, "reliability": 0.95}


def test_the_second_turn_of_a_long_conversation_is_planned_with_its_context_cached(
    calm: RunningServer, clock: ScaledClock, recorder: Recorder
) -> None:
    # About 40,000 tokens of context (tiersel's estimate; the simulator counts 30,000): some
    # 5 s of prefill on standard, too slow for a 6 s deadline, so the first turn goes to fast.
    # The second turn's prompt begins with the first's: tiersel expects it cached, plans on
    # standard, and the provider reads it from its cache.
    selector = tiersel.Selector(api_key="", clock=clock)
    client = openai.OpenAI(
        api_key="sk-test",
        base_url=calm.openai_base_url,
        http_client=sync_http("httpx", selector, recorder),
    )
    context = f"{next(_TOLD)} " + "c" * 120_000  # never sent before: the server is shared
    said: list[dict[str, str]] = [
        {"role": "system", "content": context},
        {"role": "user", "content": "What does it say?"},
    ]
    with tiersel.requirements(**TIGHT):
        first = client.chat.completions.create(model=MODEL, messages=said, max_tokens=100)  # type: ignore[arg-type]
        opening = recorder.last
        said += [
            {"role": "assistant", "content": first.choices[0].message.content or ""},
            {"role": "user", "content": "And then?"},
        ]
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=said,  # type: ignore[arg-type]
            max_tokens=100,
        )
        second = raw.parse()
        follow = recorder.last
    assert opening.ok and follow.ok
    assert opening.tier == "fast" and follow.tier == "standard"
    assert first.usage is not None and second.usage is not None
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens > 0.9 * second.usage.prompt_tokens
    # Within its deadline at the provider: the simulator's own time for it, which the load of
    # the machine running the test (counted 20 times over on the scaled clock) does not stretch.
    assert float(raw.headers["x-sim-duration-s"]) < TIGHT["deadline_s"]
