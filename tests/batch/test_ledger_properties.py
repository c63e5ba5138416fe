"""The budget under random interleavings: the cap always holds and reservations always balance.

Two levels: the job's ledger alone (`JournaledLedger` over a `MemoryLedger`, driven by a state
machine through reservations, charges, releases, doubt and lines ending in any order), and whole
jobs run through the selector against a scripted provider that sheds, fails, times out, answers
without usage or with more prompt tokens than estimated, in random orders, and is cancelled at
random points, then resumed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
from hypothesis import given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from tiersel.batch import arun_batch
from tiersel.batch.journal import DoneLines, JobWriter, Resumed, _replay
from tiersel.batch.ledger import JournaledLedger, LineAccount
from tiersel.clock import FakeClock
from tiersel.dialects import input_token_bound
from tiersel.pricing import load_pricing

from .conftest import CappedLedger, batch_line, read_rows, write_jsonl

EPS = 1e-9
PRICING = load_pricing()


class LedgerMachine(RuleBasedStateMachine):
    """Lines reserve, are charged, released, doubted and closed in any interleaving."""

    lines = Bundle("lines")

    def __init__(self) -> None:
        super().__init__()
        # On tmpfs where there is one: this machine syncs its journal after every step.
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.dir = tempfile.mkdtemp(prefix="tiersel-ledger-", dir=shm)
        self.fds = [
            os.open(os.path.join(self.dir, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            for name in ("out", "journal")
        ]
        self.writer = JobWriter(self.fds[0], self.fds[1])
        self.inner: CappedLedger | None = None
        self.ledger: JournaledLedger | None = None
        self.open_accounts: dict[str, LineAccount] = {}
        self.charged_closed = 0.0
        self.next_line = 1
        self.changes = 0

    def teardown(self) -> None:
        for fd in self.fds:
            os.close(fd)
        shutil.rmtree(self.dir, ignore_errors=True)

    @precondition(lambda self: self.ledger is None)
    @rule(limit=st.floats(0.0, 1.0))
    def start(self, limit: float) -> None:
        self.inner = CappedLedger(limit)
        self.ledger = JournaledLedger(self.inner, self.writer, on_change=self._changed)

    def _changed(self) -> None:
        self.changes += 1

    @precondition(lambda self: self.ledger is not None and len(self.open_accounts) < 6)
    @rule(target=lines)
    def open_line(self) -> str:
        assert self.ledger is not None
        call_id = f"job:{self.next_line}:1"
        self.open_accounts[call_id] = self.ledger.open(call_id, self.next_line)
        self.next_line += 1
        return call_id

    @rule(call_id=lines, amount=st.floats(0.0, 0.4))
    def reserve(self, call_id: str, amount: float) -> None:
        account = self.open_accounts.get(call_id)
        if account is None or account.attempt_id is not None:
            return
        assert self.ledger is not None and self.inner is not None
        before = self.inner.state(0.0)
        # The engine reads the budget as the line's call sees it: its envelope is its own.
        seen = self.ledger.state_for(call_id, 0.0)
        own = before.limit_usd - before.spent_usd - (before.reserved_usd - account.envelope_usd)
        assert abs(seen.remaining_usd - max(0.0, own)) < EPS
        state = self.ledger.reserve(call_id, amount, 0.0)
        after = self.inner.state(0.0)
        if state is None:
            # Refused: nothing changed, and it really did not fit.
            assert after.reserved_usd == before.reserved_usd
            assert amount > seen.remaining_usd - EPS
            assert account.attempt_id is None
        else:
            assert amount <= seen.remaining_usd + EPS
            assert account.attempt_id is not None and account.envelope_usd >= amount

    @rule(call_id=lines)
    def doubt(self, call_id: str) -> None:
        account = self.open_accounts.get(call_id)
        if account is not None and account.attempt_id is not None:
            account.in_doubt = True

    @rule(call_id=lines, fraction=st.floats(0.0, 1.0))
    def settle(self, call_id: str, fraction: float) -> None:
        account = self.open_accounts.get(call_id)
        if account is None or account.attempt_id is None:
            return
        assert self.ledger is not None and self.inner is not None
        spent = self.inner.state(0.0).spent_usd
        actual = fraction * account.attempt_usd  # usage within the reserved bound
        self.ledger.settle(call_id, actual, 0.0)
        assert abs(self.inner.state(0.0).spent_usd - (spent + actual)) < EPS
        assert account.attempt_id is None and account.envelope_id is None
        self.ledger.settle(call_id, actual, 0.0)  # settling again charges nothing
        assert abs(self.inner.state(0.0).spent_usd - (spent + actual)) < EPS

    @rule(call_id=lines)
    def release(self, call_id: str) -> None:
        account = self.open_accounts.get(call_id)
        if account is None or account.attempt_id is None:
            return
        assert self.ledger is not None and self.inner is not None
        spent = self.inner.state(0.0).spent_usd
        doubt, amount, envelope = account.in_doubt, account.attempt_usd, account.envelope_usd
        self.ledger.release(call_id, 0.0)
        if doubt:  # charged at its worst case, as it may have been billed
            assert abs(self.inner.state(0.0).spent_usd - (spent + amount)) < EPS
            assert account.envelope_id is None
        else:  # unbilled: nothing charged, the envelope stays for a retry
            assert self.inner.state(0.0).spent_usd == spent
            assert account.envelope_usd == envelope

    @rule(call_id=consumes(lines))
    def close(self, call_id: str) -> None:
        account = self.open_accounts.get(call_id)
        if account is None:
            return
        if account.attempt_id is not None:
            self.ledger.release(call_id, 0.0)  # type: ignore[union-attr]
        assert self.ledger is not None
        self.ledger.close(call_id, 0.0)
        self.charged_closed += account.charged_usd
        del self.open_accounts[call_id]

    @invariant()
    def balances(self) -> None:
        if self.ledger is None or self.inner is None:
            return
        state = self.inner.state(0.0)
        assert not self.inner.violations
        assert state.spent_usd + state.reserved_usd <= state.limit_usd + EPS
        envelopes = [a for a in self.open_accounts.values() if a.envelope_id is not None]
        assert self.ledger.held == len(envelopes)
        assert abs(state.reserved_usd - sum(a.envelope_usd for a in envelopes)) < EPS
        charged = self.charged_closed + sum(a.charged_usd for a in self.open_accounts.values())
        assert abs(state.spent_usd - charged) < EPS

    @invariant()
    def journal_replays_to_the_same_money(self) -> None:
        """A crash now: the journal charges every line what the ledger did, plus open attempts."""
        if self.ledger is None or self.inner is None:
            return
        self.writer.flush_now()
        resumed = Resumed(job="job", run=2, done=DoneLines())
        _replay(Path(self.dir) / "journal", resumed)
        in_flight = sum(
            a.attempt_usd for a in self.open_accounts.values() if a.attempt_id is not None
        )
        assert abs(resumed.spent_usd - (self.inner.state(0.0).spent_usd + in_flight)) < 1e-7


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)


# -- whole jobs -----------------------------------------------------------------------------------

OUTCOMES = st.sampled_from(
    [
        "ok",
        "ok",
        "ok",
        "no_usage",
        "downgraded",
        "shed",
        "error",
        "rate_limited",
        "timeout",
        "connect",
        "not_json",
        "read_error",
    ]
)


@st.composite
def scripted_jobs(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 14))
    lines = []
    scripts = {}
    for i in range(n):
        text = "x" * draw(st.integers(0, 300))
        doc = {
            "model": "kimi-k3",
            "messages": [{"role": "user", "content": text}],
            "max_tokens": draw(st.integers(1, 300)),
        }
        hints = draw(
            st.sampled_from(
                [
                    None,
                    {"reliability": 0.999},
                    {"min_output_tps": 100},
                    {"deadline_s": 8},
                    {"tiers": ["priority", "fast"]},
                    {"max_cost_usd": 0.001},
                ]
            )
        )
        line = batch_line(f"c{i}", doc, **({"tiersel": hints} if hints else {}))
        lines.append(line)
        scripts[f"c{i}"] = [
            (draw(OUTCOMES), draw(st.floats(0.0, 1.0)), draw(st.integers(0, 4)))
            for _ in range(draw(st.integers(1, 5)))
        ]
    return {
        "lines": lines,
        "scripts": scripts,
        "budget": draw(st.floats(0.0, 0.03)),
        "concurrency": draw(st.integers(1, 8)),
        "cancel_after": draw(st.none() | st.integers(1, 30)),
    }


def scripted_provider(
    scripts: dict[str, list[tuple[str, float, int]]], on_call: Any
) -> httpx.MockTransport:
    """Answers each line's attempts from its script (then ``ok``), after random yields."""

    async def handler(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        script = scripts[sent["metadata"]["line"]]
        kind, fraction, yields = script.pop(0) if script else ("ok", 1.0, 0)
        on_call()
        for _ in range(yields):
            await asyncio.sleep(0)
        bound = input_token_bound(sent)
        if kind == "timeout":
            raise httpx.ReadTimeout("scripted", request=request)
        if kind == "read_error":
            raise httpx.ReadError("scripted", request=request)
        if kind == "connect":
            raise httpx.ConnectError("scripted", request=request)
        if kind == "shed":
            return httpx.Response(503, json={"error": {"code": "server_overloaded"}})
        if kind == "error":
            return httpx.Response(500, json={"error": {"code": "internal"}})
        if kind == "rate_limited":
            return httpx.Response(429, headers={"retry-after": "1"}, json={"error": {}})
        if kind == "not_json":
            return httpx.Response(200, content=b"<html>ok?</html>")
        doc: dict[str, Any] = {"choices": [{"message": {"role": "assistant", "content": "ok"}}]}
        if kind != "no_usage":
            # Prompt tokens anywhere up to the bound: often far above the 3-bytes-a-token estimate.
            doc["usage"] = {
                "prompt_tokens": round(fraction * bound),
                "completion_tokens": round(fraction * sent["max_tokens"]),
            }
        if kind == "downgraded" and sent.get("service_tier") == "priority":
            doc["service_tier"] = "default"  # served at standard: billed less than reserved
        return httpx.Response(200, json=doc)

    return httpx.MockTransport(handler)


@settings(max_examples=40, deadline=None)
@given(job=scripted_jobs())
def test_jobs_never_pass_the_cap_and_resume_to_the_same_money(job: dict[str, Any]) -> None:
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="tiersel-job-", dir=shm) as d:
        for line in job["lines"]:
            line["body"]["metadata"] = {"line": line["custom_id"]}
        src = write_jsonl(Path(d) / "in.jsonl", job["lines"])
        out = Path(d) / "out.jsonl"
        budget = job["budget"]
        ledger = CappedLedger(budget)
        calls = 0
        task: asyncio.Task[Any] | None = None

        def on_call() -> None:
            nonlocal calls
            calls += 1
            if (
                job["cancel_after"] is not None
                and calls == job["cancel_after"]
                and task is not None
            ):
                task.cancel()

        provider = scripted_provider(job["scripts"], on_call)

        async def first_run() -> bool:
            nonlocal task
            task = asyncio.ensure_future(
                arun_batch(
                    src,
                    out,
                    budget_usd=budget,
                    transport=provider,
                    clock=FakeClock(),
                    concurrency=job["concurrency"],
                    ledger=ledger,
                    api_key="",
                    progress=False,
                    pricing=PRICING,
                )
            )
            try:
                await task
            except asyncio.CancelledError:
                return False
            return True

        finished = asyncio.run(first_run())
        state = ledger.state(0.0)
        note(f"finished={finished} state={state}")
        assert not ledger.violations
        assert state.reserved_usd < EPS  # every reservation balanced, even when cancelled
        assert state.spent_usd <= budget + EPS
        if not finished:
            # Resume: the journal carries exactly what the ledger spent; finish the job.
            again = CappedLedger(budget, spent_usd=state.spent_usd)
            summary = asyncio.run(
                arun_batch(
                    src,
                    out,
                    budget_usd=budget,
                    transport=provider,
                    clock=FakeClock(),
                    concurrency=job["concurrency"],
                    ledger=again,
                    api_key="",
                    resume=True,
                    progress=False,
                    pricing=PRICING,
                )
            )
            assert not again.violations
            assert again.state(0.0).reserved_usd < EPS
            state = again.state(0.0)
        else:
            summary = None
        rows = read_rows(out)
        assert sorted(r["custom_id"] for r in rows) == sorted(x["custom_id"] for x in job["lines"])
        total = sum(r["cost_usd"] for r in rows)
        assert abs(total - state.spent_usd) < 1e-9
        assert total <= budget + EPS
        if summary is not None:
            assert abs(summary.spent_usd - total) < 1e-9
        for r in rows:
            assert r["unconfirmed_usd"] <= r["cost_usd"] + EPS
            if r["status"] == "ok":
                assert r["response"]["status_code"] == 200
