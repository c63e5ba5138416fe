"""Calls tiersel refuses before sending them (a bad hint, no feasible tier, an exhausted budget),
through the real SDKs over real HTTP: a clear error, at once, never retried by the SDK, with
nothing sent upstream and nothing left reserved."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import httpx2
import openai
import pytest

import tiersel
from tests.transport.conftest import ANTHROPIC, MODEL, Recorder
from tiersel.budget import MemoryLedger
from tiersel.sim.server import RunningServer
from tiersel.wrap import AsyncTierTransport, InvalidHint, TierTransport

if TYPE_CHECKING:
    import anthropic

HI = [{"role": "user", "content": "hi"}]


class Counting(TierTransport):
    """A `TierTransport` that counts the requests the client hands it (SDK retries included)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests = 0

    def handle_request(self, request: Any) -> Any:
        self.requests += 1
        return super().handle_request(request)


class AsyncCounting(AsyncTierTransport):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests = 0

    async def handle_async_request(self, request: Any) -> Any:
        self.requests += 1
        return await super().handle_async_request(request)


def _anthropic(server: RunningServer, transport: TierTransport) -> anthropic.Anthropic:
    import anthropic

    # max_retries=2 is the SDK's default, spelled out: a refusal must not use any of them.
    return anthropic.Anthropic(
        api_key="sk-test",
        base_url=server.anthropic_base_url,
        http_client=httpx2.Client(transport=transport),
        max_retries=2,
    )


@pytest.mark.parametrize(
    ("hints", "error", "status", "kind", "words"),
    [
        (
            {"x-tiersel-reliability": "1.5"},
            "BadRequestError",
            400,
            "InvalidHint",
            "request header x-tiersel-reliability",
        ),
        (
            {"x-tiersel-max-cost": "0.0000001"},
            "UnprocessableEntityError",
            422,
            "NoFeasibleTier",
            "no tier of kimi-k3 meets the requirements",
        ),
    ],
)
@ANTHROPIC
def test_the_anthropic_sdk_gets_a_refusal_as_a_clear_error_it_does_not_retry(
    calm: RunningServer,
    recorder: Recorder,
    hints: dict[str, str],
    error: str,
    status: int,
    kind: str,
    words: str,
) -> None:
    import anthropic

    transport = Counting(tiersel.Selector(api_key=""), on_call=recorder)
    client = _anthropic(calm, transport)
    with pytest.raises(getattr(anthropic, error)) as caught:
        client.messages.create(model=MODEL, max_tokens=8, messages=HI, extra_headers=hints)
    assert caught.value.status_code == status
    assert words in caught.value.message
    assert caught.value.response.headers["x-tiersel-error"] == kind
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert transport.requests == 1  # the SDK did not try again
    assert calm.stats()["requests"] == 0  # nothing went upstream
    # A refusal after the requirements were read is recorded once; a bad hint is not a call.
    assert len(recorder.records) == (1 if kind == "NoFeasibleTier" else 0)


@ANTHROPIC
def test_an_exhausted_budget_is_a_402_and_leaves_nothing_reserved(calm: RunningServer) -> None:
    import anthropic

    ledger = MemoryLedger(1e-7)
    transport = Counting(tiersel.Selector(api_key="", ledger=ledger))
    with pytest.raises(anthropic.APIStatusError) as caught:
        _anthropic(calm, transport).messages.create(model=MODEL, max_tokens=8, messages=HI)
    assert caught.value.status_code == 402
    assert "the budget cannot cover a call to kimi-k3" in caught.value.message
    assert caught.value.response.headers["x-tiersel-error"] == "BudgetExhausted"
    assert transport.requests == 1
    assert calm.stats()["requests"] == 0
    state = ledger.state(0.0)
    assert state.reserved_usd == 0 and state.spent_usd == 0


@ANTHROPIC
async def test_the_async_anthropic_sdk_gets_the_same_refusal(calm: RunningServer) -> None:
    import anthropic

    transport = AsyncCounting(tiersel.Selector(api_key=""))
    client = anthropic.AsyncAnthropic(
        api_key="sk-test",
        base_url=calm.anthropic_base_url,
        http_client=httpx2.AsyncClient(transport=transport),
    )
    with pytest.raises(anthropic.BadRequestError, match="x-tiersel-deadline"):
        await client.messages.create(
            model=MODEL, max_tokens=8, messages=HI, extra_headers={"x-tiersel-deadline": "-1"}
        )
    assert transport.requests == 1
    assert calm.stats()["requests"] == 0
    await client.close()


@ANTHROPIC
def test_other_clients_get_the_exception_unless_asked_to_respond(calm: RunningServer) -> None:
    import anthropic

    hint = {"x-tiersel-tiers": "priorty"}
    raising = openai.OpenAI(
        api_key="sk-test",
        base_url=calm.openai_base_url,
        http_client=httpx.Client(transport=TierTransport(tiersel.Selector(api_key=""))),
    )
    with pytest.raises(InvalidHint, match="unknown tier"):
        raising.chat.completions.create(model=MODEL, max_tokens=8, messages=HI, extra_headers=hint)
    responding = openai.OpenAI(
        api_key="sk-test",
        base_url=calm.openai_base_url,
        http_client=httpx.Client(
            transport=TierTransport(tiersel.Selector(api_key=""), refusals="respond")
        ),
    )
    with pytest.raises(openai.BadRequestError) as caught:
        responding.chat.completions.create(
            model=MODEL, max_tokens=8, messages=HI, extra_headers=hint
        )
    assert "request header x-tiersel-tiers: 'priorty' names unknown tier" in caught.value.message
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error"
    # And the anthropic SDK can be told to get the exception, wrapped as the SDK wraps any.
    told = _anthropic(calm, Counting(tiersel.Selector(api_key=""), refusals="raise"))
    with pytest.raises(anthropic.APIConnectionError) as wrapped:
        told.with_options(max_retries=0).messages.create(
            model=MODEL, max_tokens=8, messages=HI, extra_headers=hint
        )
    assert isinstance(wrapped.value.__cause__, InvalidHint)
    assert calm.stats()["requests"] == 0


def test_refusals_must_be_a_known_mode() -> None:
    with pytest.raises(
        ValueError, match="refusals must be one of auto, raise, respond; got 'never'"
    ):
        TierTransport(tiersel.Selector(api_key=""), refusals="never")
