"""Per-call requirements without touching call sites: ``tiersel.requirements(...)`` blocks
(contextvars: each thread and asyncio task has its own) and ``x-tiersel-*`` request headers."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx2
import openai
import pytest
from pydantic import ValidationError

import tiersel
from tests.transport.conftest import MODEL, Recorder, sync_http
from tiersel.dialects import Dialect
from tiersel.sim.server import RunningServer
from tiersel.wrap import AsyncTierTransport, InvalidHint, current_requirements, requirements


def _client(server: RunningServer, selector: tiersel.Selector, recorder: Recorder) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-test",
        base_url=server.openai_base_url,
        http_client=sync_http("httpx2", selector, recorder),
    )


def _ask(client: openai.OpenAI, **kwargs: object) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=8,
        **kwargs,  # type: ignore[arg-type]
    )
    return raw.headers["x-tiersel-call-id"]


def _record(recorder: Recorder, call_id: str) -> tiersel.wrap.CallRecord:
    return next(r for r in recorder.records if r.call_id == call_id)


def test_blocks_nest_and_restore() -> None:
    assert current_requirements() is None
    with requirements(deadline_s=30, reliability=0.9) as outer:
        assert outer.deadline_s == 30 and outer.reliability == 0.9
        with requirements(tiers="standard,priority", reliability=None) as inner:
            assert inner.deadline_s == 30  # inherited
            assert inner.reliability is None  # cleared
            assert inner.tiers == ("standard", "priority")
            assert current_requirements() is inner
        assert current_requirements() is outer
    assert current_requirements() is None


def test_a_bad_block_fails_at_the_with_line_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="deadline_s"), requirements(deadline_s=-1):
        pass
    with (
        pytest.raises(ValidationError, match="max_ttft_s"),
        requirements(deadline_s=2),
        requirements(max_ttft_s=5),
    ):
        pass
    assert current_requirements() is None


def test_blocks_reach_routed_calls(calm: RunningServer, recorder: Recorder) -> None:
    selector = tiersel.Selector(api_key="", requirements=tiersel.Requirements(reliability=0.5))
    client = _client(calm, selector, recorder)
    plain = _ask(client)
    with requirements(deadline_s=40, tiers=("priority",)):
        scoped = _ask(client)
    assert _record(recorder, plain).requirements == tiersel.Requirements(reliability=0.5)
    got = _record(recorder, scoped)
    assert got.requirements == tiersel.Requirements(
        reliability=0.5, deadline_s=40, tiers=("priority",)
    )
    assert got.tier == "priority"


def test_each_thread_has_its_own_requirements(calm: RunningServer, recorder: Recorder) -> None:
    client = _client(calm, tiersel.Selector(api_key=""), recorder)
    barrier = threading.Barrier(6)

    def work(i: int) -> tuple[float, str]:
        with requirements(deadline_s=100 + i):
            barrier.wait(timeout=10)  # all six blocks are open at once
            return 100.0 + i, _ask(client)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(work, range(6)))
    for deadline, call_id in results:
        assert _record(recorder, call_id).requirements.deadline_s == deadline
    # A plain thread starts with an empty context; copy_context() carries a block over.
    seen: list[object] = []
    with requirements(deadline_s=7):
        t = threading.Thread(target=lambda: seen.append(current_requirements()))
        t.start()
        t.join()
        ctx = contextvars.copy_context()
    ctx.run(lambda: seen.append(current_requirements()))
    assert seen[0] is None
    assert isinstance(seen[1], tiersel.Requirements) and seen[1].deadline_s == 7


def test_each_task_has_its_own_requirements(calm: RunningServer, recorder: Recorder) -> None:
    async def main() -> list[tuple[float, str]]:
        selector = tiersel.Selector(api_key="")
        transport = AsyncTierTransport(selector, on_call=recorder)
        async with httpx2.AsyncClient(transport=transport) as http:
            client = openai.AsyncOpenAI(
                api_key="sk-test", base_url=calm.openai_base_url, http_client=http
            )

            async def ask(deadline: float) -> tuple[float, str]:
                with requirements(deadline_s=deadline):
                    await asyncio.sleep(0)  # let the other tasks open their blocks
                    raw = await client.chat.completions.with_raw_response.create(
                        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8
                    )
                return deadline, raw.headers["x-tiersel-call-id"]

            async def inherits() -> tuple[float, str]:
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8
                )
                return 77.0, raw.headers["x-tiersel-call-id"]

            with requirements(deadline_s=77):
                child = asyncio.create_task(inherits())  # a task copies the block it starts in
            return [*await asyncio.gather(*(ask(50.0 + i) for i in range(5))), await child]

    for deadline, call_id in asyncio.run(main()):
        assert _record(recorder, call_id).requirements.deadline_s == deadline


def test_hint_headers_set_requirements_and_never_go_upstream(
    calm: RunningServer, recorder: Recorder
) -> None:
    client = _client(calm, tiersel.Selector(api_key=""), recorder)
    hints = {
        "x-tiersel-deadline": "45",
        "x-tiersel-reliability": "0.9",
        "x-tiersel-max-cost": "0.5",
        "x-tiersel-tiers": "priority, fast",
    }
    with requirements(deadline_s=500, max_ttft_s=20):
        call_id = _ask(client, extra_headers=hints)
    got = _record(recorder, call_id)
    # Headers override the block field by field; the block's other fields hold.
    assert got.requirements == tiersel.Requirements(
        deadline_s=45, reliability=0.9, max_cost_usd=0.5, tiers=("priority", "fast"), max_ttft_s=20
    )
    assert got.tier == "priority"
    stats = calm.stats()
    assert stats["requests"] == 1 and stats["hinted"] == 0


@pytest.mark.parametrize(
    ("header", "value", "problem"),
    [
        ("x-tiersel-deadline", "soon", "is not a number"),
        ("x-tiersel-deadline", "-5", "greater than or equal to 0.001"),
        ("x-tiersel-deadline", "1e-320", "greater than or equal to 0.001"),  # not 9.99989e-321
        ("x-tiersel-deadline", "1_0", "is not a number"),
        ("x-tiersel-reliability", "1.5", "less than or equal to 1"),
        ("x-tiersel-max-cost", "nan", "must be finite"),
        ("x-tiersel-tiers", " , ", "at least one tier"),
        ("x-tiersel-tiers", "priorty", "unknown tier"),
        ("x-tiersel-best-effort", "maybe", "true or false"),
        ("x-tiersel-deadlin", "5", "not a tiersel hint header"),
    ],
)
def test_a_bad_hint_is_a_clear_error_naming_the_header(
    calm: RunningServer, recorder: Recorder, header: str, value: str, problem: str
) -> None:
    client = _client(calm, tiersel.Selector(api_key=""), recorder)
    with pytest.raises(InvalidHint, match=problem) as caught:
        _ask(client, extra_headers={header: value})
    assert caught.value.header == header
    # The value is quoted as it was sent (stripped): "-5", not the "-5.0" it parsed to.
    assert str(caught.value).startswith(f"request header {header}: {value.strip()!r} ")
    assert calm.stats()["requests"] == 0  # nothing was sent


def test_a_hint_that_conflicts_with_the_block_names_the_header(
    calm: RunningServer, recorder: Recorder
) -> None:
    client = _client(calm, tiersel.Selector(api_key=""), recorder)
    with requirements(deadline_s=2), pytest.raises(InvalidHint) as caught:
        _ask(client, extra_headers={"x-tiersel-max-ttft": "5"})
    # The header's value as written (it said 'max_ttft_s=5.0', a rewriting of it).
    assert str(caught.value).startswith(
        "request header x-tiersel-max-ttft: '5' is not valid: max_ttft_s (5.0) cannot exceed"
    ), str(caught.value)


def test_a_block_that_conflicts_with_the_selectors_requirements_is_a_clear_error(
    calm: RunningServer, recorder: Recorder
) -> None:
    # Each is valid alone; together the time to first token outlasts the deadline.
    selector = tiersel.Selector(api_key="", requirements=tiersel.Requirements(deadline_s=2))
    client = _client(calm, selector, recorder)
    with requirements(max_ttft_s=5), pytest.raises(tiersel.ConflictingRequirements) as caught:
        _ask(client)
    message = str(caught.value)
    assert message == (
        "the requirements block (max_ttft_s=5) and the selector's requirements (deadline_s=2.0)"
        " conflict: max_ttft_s (5.0) cannot exceed deadline_s (2.0)"
    )
    assert isinstance(caught.value, tiersel.TierselError)
    assert calm.stats()["requests"] == 0


def test_a_tiny_cost_cap_is_shown_to_its_own_precision() -> None:
    selector = tiersel.Selector(api_key="")
    call, _ = selector.engine.call_for(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        Dialect.openai,
    )
    with pytest.raises(tiersel.NoFeasibleTier) as caught:
        selector.decide(call, tiersel.Requirements(max_cost_usd=1e-7))
    assert "exceeds max_cost_usd $1e-07" in str(caught.value)
