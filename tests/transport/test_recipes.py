"""The README's openai, LangChain and pydantic-ai recipes, run as written against the simulator
server: the real packages, over real HTTP. Each recipe reads its base URL and key from the
environment; the test points them at the simulator and records every call tiersel ends."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import tiersel
from tests.transport.conftest import Recorder
from tiersel.clock import ScaledClock
from tiersel.sim.server import RunningServer

README = Path(__file__).resolve().parents[2] / "README.md"


def recipe(name: str) -> str:
    """The python block that follows ``<!-- recipe: name -->`` in the README."""
    found = re.search(
        rf"<!-- recipe: {re.escape(name)} -->\n```python\n(.*?)\n```", README.read_text(), re.S
    )
    assert found, f"no recipe {name!r} in the README"
    return found.group(1)


@pytest.fixture
def recorded(calm: RunningServer, monkeypatch: pytest.MonkeyPatch, clock: ScaledClock) -> Recorder:
    """Point the recipes at the simulator, and record each call tiersel's transports end."""
    recorder = Recorder()
    monkeypatch.setenv("FIREWORKS_BASE_URL", calm.openai_base_url)
    monkeypatch.setenv("FIREWORKS_API_KEY", "sk-sim")
    real = tiersel.Selector
    sync, asynchronous = tiersel.TierTransport, tiersel.AsyncTierTransport
    monkeypatch.setattr(tiersel, "Selector", lambda **kw: real(clock=clock, **kw))
    monkeypatch.setattr(
        tiersel, "TierTransport", lambda sel, **kw: sync(sel, on_call=recorder, **kw)
    )
    monkeypatch.setattr(
        tiersel, "AsyncTierTransport", lambda sel, **kw: asynchronous(sel, on_call=recorder, **kw)
    )
    return recorder


def _run(name: str, server: RunningServer) -> dict[str, Any]:
    """Run the recipe on the calm stretch. Its imports run first, then the server's clock is
    set back to the calm stretch's start: importing LangChain takes seconds on a busy machine,
    which at 20x simulated speed would carry the server into the peak (and its sheds)."""
    code = recipe(name)
    imports = "\n".join(line for line in code.splitlines() if line.startswith(("import ", "from ")))
    namespace: dict[str, Any] = {}
    exec(compile(imports, f"README.md recipe {name} (imports)", "exec"), {})
    server.reset(time_s=0.0)
    exec(compile(code, f"README.md recipe {name}", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name", ["langchain", "langchain-responses"])
def test_the_langchain_recipes(recorded: Recorder, calm: RunningServer, name: str) -> None:
    _run(name, calm)
    records = recorded.records
    # Sync plain, then streamed (sync, or async for the Responses API), then async plain.
    assert len(records) == (3 if name == "langchain" else 2)
    assert all(r.ok and r.tier for r in records)
    tight, loose, *rest = records
    for r in (tight, *rest):
        assert (r.requirements.deadline_s, r.requirements.reliability) == (10.0, 0.99)
        assert not r.streamed
    assert loose.requirements.deadline_s == 600.0 and loose.streamed
    assert loose.tier == "standard"
    assert all(r.usage is not None and r.usage.completion_tokens > 0 for r in records)
    stats = calm.stats()
    assert stats["requests"] == len(records), [r.tried for r in records]
    assert stats["hinted"] == 0


def test_the_pydantic_ai_recipe(recorded: Recorder, calm: RunningServer) -> None:
    _run("pydantic-ai", calm)
    records = recorded.records
    assert len(records) == 3 and all(r.ok and r.tier for r in records)
    tight, loose, tight_async = records  # sync, plain; async, streamed; async, plain
    for r in (tight, tight_async):
        assert (r.requirements.deadline_s, r.requirements.reliability) == (10.0, 0.99)
        assert not r.streamed
    assert loose.requirements.deadline_s == 600.0 and loose.streamed
    assert loose.tier == "standard"
    assert calm.stats()["hinted"] == 0


def test_the_openai_recipe(recorded: Recorder, calm: RunningServer) -> None:
    _run("openai", calm)
    records = recorded.records
    assert len(records) == 2 and all(r.ok and r.tier for r in records)
    block, hinted = records
    assert (block.requirements.deadline_s, block.requirements.reliability) == (8.0, 0.95)
    assert hinted.requirements.deadline_s == 8.0
    assert calm.stats()["hinted"] == 0
