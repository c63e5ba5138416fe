"""An API key set in the client never shows up in logs, records, exceptions or reprs."""

from __future__ import annotations

import logging
import socket

import httpx2
import openai
import pytest

import tiersel
from tests.transport.conftest import ANTHROPIC, CANARY_KEY, MODEL, Recorder
from tiersel.sim.server import RunningServer
from tiersel.wrap import InvalidHint, TierTransport

SELECTOR_CANARY = "fw-canary-0b6e4d1a-SELECTOR"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there once the socket is closed


@ANTHROPIC
def test_the_key_never_leaks(
    calm: RunningServer,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import anthropic

    caplog.set_level(logging.DEBUG)  # every logger, the SDKs' and httpx's included
    selector = tiersel.Selector(api_key=SELECTOR_CANARY, max_attempts=2, backoff_s=0.0)
    transport = TierTransport(selector, on_call=recorder)
    http = httpx2.Client(transport=transport)
    seen: list[object] = [selector, transport]

    oai = openai.OpenAI(api_key=CANARY_KEY, base_url=calm.openai_base_url, http_client=http)
    raw = oai.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8
    )
    seen += [raw.headers, raw.parse()]
    for chunk in oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True
    ):
        seen.append(chunk)
    ant = anthropic.Anthropic(
        api_key=CANARY_KEY, base_url=calm.anthropic_base_url, http_client=http
    )
    seen.append(
        ant.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    )

    # Failures: a bad hint, an impossible requirement, and an upstream nobody answers.
    failures: list[BaseException] = []
    with pytest.raises(InvalidHint) as bad_hint:
        oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=8,
            extra_headers={"x-tiersel-deadline": "later"},
        )
    failures.append(bad_hint.value)
    with pytest.raises(tiersel.NoFeasibleTier) as infeasible:
        oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=8,
            extra_headers={"x-tiersel-max-cost": "0"},
        )
    failures.append(infeasible.value)
    gone = openai.OpenAI(
        api_key=CANARY_KEY,
        base_url=f"http://127.0.0.1:{_closed_port()}/inference/v1",
        http_client=http,
    )
    with pytest.raises(openai.APIStatusError) as unreachable:
        gone.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
    failures.append(unreachable.value)
    assert unreachable.value.status_code == 502

    texts = [repr(x) for x in seen] + [str(x) for x in seen]
    for exc in failures:
        texts += [str(exc), repr(exc), repr(exc.args), repr(getattr(exc, "body", None))]
        response = getattr(exc, "response", None)
        if response is not None:
            texts += [repr(response.headers), response.text]
    for record in recorder.records:
        texts += [repr(record), str(record.requirements), str(record.decisions)]
        if record.decision is not None:
            texts += [record.decision.explain(), repr(record.decision.to_dict())]
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    out, err = capsys.readouterr()
    texts += [out, err]
    assert len(recorder.records) == 5  # the three calls, the refusal, the unreachable one
    for text in texts:
        assert CANARY_KEY not in text
        assert SELECTOR_CANARY not in text
    http.close()
