"""Batch jobs in process, against fake providers: the cap, pacing, budget_exhausted, overruns."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tiersel.batch import JobLocked, JournalError, Status, arun_batch, run_batch
from tiersel.clock import FakeClock
from tiersel.cost import tier_cost
from tiersel.dialects import input_token_bound
from tiersel.policy import CheapestFeasible
from tiersel.pricing import load_pricing

from .conftest import (
    CappedLedger,
    always_ok,
    batch_line,
    body,
    ok_response,
    open_new_job,
    read_rows,
    write_jsonl,
)

PRICING = load_pricing()
KIMI = PRICING.model("kimi-k3")


def worst(doc: dict[str, Any], tier: str) -> float:
    """A line's reservation on ``tier``: input at its bound, all of max_tokens."""
    return tier_cost(KIMI.tiers[tier], input_token_bound(doc), 0, doc["max_tokens"])


def job(
    tmp_path: Path, lines: list[Any], transport: Any, **options: Any
) -> tuple[Any, list[dict[str, Any]]]:
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    options.setdefault("clock", FakeClock())
    options.setdefault("pricing", PRICING)
    summary = run_batch(src, out, transport=transport, api_key="", progress=False, **options)
    return summary, read_rows(out)


def test_every_line_gets_one_row_and_bad_lines_do_not_stop_the_job(tmp_path: Path) -> None:
    lines: list[Any] = [batch_line(f"r{i}", body(i)) for i in range(5)]
    lines[2:2] = [
        "{oops",
        {"model": "kimi-k3"},
        body(9, model="no-such-model"),
        body(10, max_tokens="9"),
    ]
    summary, rows = job(tmp_path, lines, httpx.MockTransport(always_ok), budget_usd=1.0)
    assert [r["line"] for r in sorted(rows, key=lambda r: r["line"])] == list(range(1, 10))
    bad = {r["line"]: r for r in rows if r["status"] == "invalid"}
    assert set(bad) == {3, 4, 5, 6}
    assert bad[3]["error"]["message"].startswith("line 3: invalid JSON")
    assert "unknown model 'no-such-model'" in bad[5]["error"]["message"]
    assert "max_tokens must be a positive integer" in bad[6]["error"]["message"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert sorted(r["custom_id"] for r in ok) == [f"r{i}" for i in range(5)]
    for r in ok:
        assert (
            r["tier"] == "standard" and r["attempts"] == 1 and r["usage"]["completion_tokens"] == 50
        )
        assert r["response"]["body"]["choices"][0]["message"]["content"] == "ok"
    assert (summary.calls_ok, summary.calls_invalid, summary.complete) == (5, 4, True)
    assert summary.spent_usd == pytest.approx(sum(r["cost_usd"] for r in rows))


def test_budget_exhausted_lines_are_not_sent_and_the_job_ends_cleanly(tmp_path: Path) -> None:
    sent: Counter[str] = Counter()

    def provider(request: httpx.Request) -> httpx.Response:
        sent[json.loads(request.content)["messages"][0]["content"]] += 1
        return ok_response(request, prompt_tokens=5)

    docs = [body(i, max_tokens=200, text="x" * 1000) for i in range(30)]
    cap = worst(docs[0], "standard")
    budget = 10.5 * cap  # room for ten calls at their worst case, and a bit
    ledger = CappedLedger(budget)
    summary, rows = job(
        tmp_path,
        docs,
        httpx.MockTransport(provider),
        budget_usd=budget,
        ledger=ledger,
        concurrency=8,
    )
    assert not ledger.violations and ledger.peak_committed <= budget
    exhausted = [r for r in rows if r["status"] == "budget_exhausted"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) + len(exhausted) == 30 and len(exhausted) > 0
    # Calls cost less than their reservation (5 prompt tokens, not 1000), so more than ten fit.
    assert len(ok) > 10
    for r in exhausted:
        assert r["cost_usd"] == 0 and r["attempts"] == 0
        assert "budget cannot cover a call to kimi-k3" in r["error"]["message"]
    assert sum(sent.values()) == len(ok)  # an exhausted line was never sent
    assert summary.spent_usd <= budget and summary.complete
    assert ledger.state(0.0).reserved_usd == 0


def test_pacing_keeps_money_for_the_lines_to_come(tmp_path: Path) -> None:
    # Urgent lines first (they need >= 100 tokens/s: only the fast tier, at twice the price),
    # then relaxed ones. The budget covers every line at standard, and a little more.
    # Every line the same size: pacing plans the lines to come at this line's cheapest tier.
    urgent = [
        batch_line(f"u{i}", body(100 + i, max_tokens=100), tiersel={"min_output_tps": 100})
        for i in range(20)
    ]
    relaxed = [batch_line(f"r{i}", body(200 + i, max_tokens=100)) for i in range(80)]
    std, fast = worst(urgent[0]["body"], "standard"), worst(urgent[0]["body"], "fast")
    budget = 100 * std + 6 * (fast - std) + std / 10

    def run(policy: CheapestFeasible, where: Path) -> tuple[Any, list[dict[str, Any]]]:
        where.mkdir()
        ledger = CappedLedger(budget)
        # Every call billed its full reservation: the prompt at its bound, all of max_tokens.
        bound = input_token_bound(urgent[0]["body"])
        transport = httpx.MockTransport(lambda r: ok_response(r, prompt_tokens=bound))
        out = job(
            where,
            urgent + relaxed,
            transport,
            budget_usd=budget,
            policy=policy,
            ledger=ledger,
            concurrency=1,
        )
        assert not ledger.violations
        return out

    paced, rows = run(CheapestFeasible(pacing=1.0), tmp_path / "paced")
    tiers = {r["custom_id"]: r["tier"] for r in rows}
    assert paced.calls_budget_exhausted == 0 and paced.calls_ok == 100
    assert all(tiers[f"r{i}"] == "standard" for i in range(80))
    assert 1 <= sum(tiers[f"u{i}"] == "fast" for i in range(20)) <= 6  # what the surplus buys
    # Once the surplus is spent, urgent lines get the best plan pacing allows, and say so.
    assert rows[-81]["best_effort"] is True and rows[-81]["tier"] == "standard"

    greedy, rows = run(CheapestFeasible(pacing=None), tmp_path / "greedy")
    assert greedy.calls_budget_exhausted > 0  # the first lines burnt the money of the last
    assert all(r["tier"] == "fast" for r in rows if r["custom_id"].startswith("u"))
    assert all(r["custom_id"].startswith("r") for r in rows if r["status"] == "budget_exhausted")


def test_an_unknown_outcome_is_charged_at_its_worst_case(tmp_path: Path) -> None:
    attempts: Counter[int] = Counter()

    def provider(request: httpx.Request) -> httpx.Response:
        i = json.loads(request.content)["metadata"]["i"]
        attempts[i] += 1
        if i == 1 and attempts[i] == 1:
            raise httpx.ReadTimeout("the provider went quiet", request=request)
        if i == 2 and attempts[i] == 1:
            raise httpx.ConnectError("never reached it", request=request)
        if i == 3 and attempts[i] == 1:
            return httpx.Response(503, json={"error": {"code": "server_overloaded"}})
        if i == 4:
            return httpx.Response(200, json={"choices": []})  # served, but no usage
        return ok_response(request, prompt_tokens=7)

    docs = [body(i, metadata={"i": i}) for i in range(5)]
    _, rows = job(tmp_path, docs, httpx.MockTransport(provider), budget_usd=1.0)
    by = {r["line"] - 1: r for r in rows}

    def real(row: dict[str, Any]) -> float:  # what the served attempt billed, at its tier
        return tier_cost(KIMI.tiers[row["tier"]], 7, 0, 50)

    assert by[0]["cost_usd"] == pytest.approx(real(by[0])) and by[0]["unconfirmed_usd"] == 0
    # Timed out: maybe billed, so charged its reservation; then its retry's real cost.
    assert by[1]["attempts"] == 2 and by[1]["unconfirmed_usd"] == pytest.approx(
        worst(docs[1], "standard")
    )
    assert by[1]["cost_usd"] == pytest.approx(by[1]["unconfirmed_usd"] + real(by[1]))
    # Never sent, or shed: not billed; only the retry's real cost is charged.
    for i in (2, 3):
        assert by[i]["attempts"] == 2 and by[i]["cost_usd"] == pytest.approx(real(by[i]))
        assert by[i]["unconfirmed_usd"] == 0
        assert by[i]["escalated"] is (len(set(by[i]["tiers_tried"])) > 1)
    # Served without usage: charged its worst case.
    assert by[4]["cost_usd"] == pytest.approx(worst(docs[4], "standard"))


def test_a_provider_billing_past_the_bound_stops_the_job(tmp_path: Path) -> None:
    def provider(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        if sent["metadata"]["i"] == 2:  # more output than max_tokens allows
            return httpx.Response(
                200, json={"usage": {"prompt_tokens": 5, "completion_tokens": 5000}}
            )
        return ok_response(request, prompt_tokens=5)

    docs = [body(i, metadata={"i": i}) for i in range(8)]
    summary, rows = job(
        tmp_path, docs, httpx.MockTransport(provider), budget_usd=1.0, concurrency=1
    )
    assert summary.overrun_usd > 0 and "more than its reserved upper bound" in (
        summary.stopped or ""
    )
    statuses = [r["status"] for r in sorted(rows, key=lambda r: r["line"])]
    assert statuses == ["ok"] * 3 + ["budget_exhausted"] * 5
    assert rows[2]["cost_usd"] == pytest.approx(tier_cost(KIMI.tiers["standard"], 5, 0, 5000))
    assert all(r["error"]["code"] == "stopped" for r in rows[3:])
    assert summary.spent_usd == pytest.approx(sum(r["cost_usd"] for r in rows))


def test_sync_transports_and_the_async_api(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [body(i) for i in range(20)])

    async def go() -> Any:
        with pytest.raises(RuntimeError, match="await arun_batch"):
            run_batch(src, tmp_path / "x.jsonl", budget_usd=1.0)
        # A sync transport (run in worker threads) under the async API.
        return await arun_batch(
            src,
            tmp_path / "out.jsonl",
            budget_usd=1.0,
            transport=httpx.MockTransport(always_ok),
            clock=FakeClock(),
            api_key="",
            pricing=PRICING,
            progress=False,
            concurrency=5,
        )

    summary = asyncio.run(go())
    assert summary.calls_ok == 20 and summary.all_ok


def test_out_is_locked_reused_only_on_resume_and_only_for_its_input(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [body(i) for i in range(3)])
    out = tmp_path / "out.jsonl"
    held = open_new_job(src, out)
    try:
        with pytest.raises(
            JobLocked, match=r"being written by another tiersel batch job \(pid \d+\)"
        ):
            run_batch(
                src, out, budget_usd=1.0, transport=httpx.MockTransport(always_ok), pricing=PRICING
            )
    finally:
        held.close()
    # The held job wrote its header: this OUT is now that job's, to resume.
    with pytest.raises(JournalError, match="pass --resume"):
        job(tmp_path, [body(i) for i in range(3)], httpx.MockTransport(always_ok), budget_usd=1.0)
    first, _ = job(
        tmp_path,
        [body(i) for i in range(3)],
        httpx.MockTransport(always_ok),
        budget_usd=1.0,
        resume=True,
    )
    again, rows = job(
        tmp_path,
        [body(i) for i in range(3)],
        httpx.MockTransport(always_ok),
        budget_usd=1.0,
        resume=True,
    )
    assert len(rows) == 3 and again.run == 3 and again.earlier_rows == 3
    assert again.spent_usd == pytest.approx(first.spent_usd)
    with pytest.raises(JournalError, match="not the input this job started with"):
        job(
            tmp_path,
            [body(i) for i in range(4)],
            httpx.MockTransport(always_ok),
            budget_usd=1.0,
            resume=True,
        )


def test_a_line_an_earlier_run_sent_says_so_when_the_budget_cannot_send_it_again(
    tmp_path: Path,
) -> None:
    # One line at a time, a budget that fits the six lines' calls but not a seventh: the
    # last row is lost in a crash, and on resume its line (charged, so carried) cannot be
    # reserved again. Its row must not say it was never sent.
    docs = [body(i) for i in range(6)]
    w = worst(docs[-1], "standard")
    (tmp_path / "probe").mkdir()
    probe, _ = job(tmp_path / "probe", docs, httpx.MockTransport(always_ok), budget_usd=1.0)
    one = probe.spent_usd / 6
    assert w > one  # a reservation is more than a call is billed
    budget = 5 * one + w + one / 2
    first, rows = job(
        tmp_path, docs, httpx.MockTransport(always_ok), budget_usd=budget, concurrency=1
    )
    assert [r["status"] for r in rows] == ["ok"] * 6
    out = tmp_path / "out.jsonl"
    kept = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(kept[:-1]))  # the last row lost
    again, after = job(
        tmp_path, docs, httpx.MockTransport(always_ok), budget_usd=budget, concurrency=1,
        resume=True,
    )  # fmt: skip
    lost = next(r for r in after if r["line"] == json.loads(kept[-1])["line"])
    assert lost["status"] == "budget_exhausted" and lost["cost_usd"] == pytest.approx(one)
    message = lost["error"]["message"]
    assert message.startswith("sent by an earlier run that ended before writing its row")
    assert "not sent again: the budget cannot cover" in message
    assert again.spent_usd == pytest.approx(first.spent_usd)


def test_a_resent_line_that_fails_after_this_runs_send_does_not_say_it_was_not_sent(
    tmp_path: Path,
) -> None:
    # Found in review: the last row lost, the line sent again on resume and the transport
    # failing after the request went out. Its row is this run's failure, not "not sent again".
    docs = [body(i) for i in range(3)]
    job(tmp_path, docs, httpx.MockTransport(always_ok), budget_usd=1.0, concurrency=1)
    out = tmp_path / "out.jsonl"
    kept = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(kept[:-1]))
    sent: list[httpx.Request] = []

    def boom(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise RuntimeError("the transport failed after the request went out")

    _, after = job(
        tmp_path, docs, httpx.MockTransport(boom), budget_usd=1.0, concurrency=1, resume=True
    )
    lost = next(r for r in after if r["line"] == json.loads(kept[-1])["line"])
    assert len(sent) == 1 and lost["status"] == "failed"
    assert lost["error"]["message"].startswith("RuntimeError: the transport failed")


def test_an_in_process_transport_takes_a_job_whatever_key_the_environment_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key check is for requests that reach the network: a mock (or the simulator) at
    # http://mock.test takes the job though FIREWORKS_API_KEY is set; a real client is refused.
    monkeypatch.setenv("FIREWORKS_API_KEY", "sk-test")
    src = write_jsonl(tmp_path / "in.jsonl", [body(0)])
    summary = run_batch(
        src,
        tmp_path / "out.jsonl",
        budget_usd=1.0,
        transport=httpx.MockTransport(always_ok),
        base_url="http://mock.test/v1",
        clock=FakeClock(),
        progress=False,
    )
    assert summary.calls_ok == 1
    with pytest.raises(ValueError, match="the API key would go in clear text"):
        run_batch(
            src,
            tmp_path / "out2.jsonl",
            budget_usd=1.0,
            base_url="http://192.0.2.2:8000/v1",
            progress=False,
        )
    assert not (tmp_path / "out2.jsonl").exists()


def test_summary_counts_tiers_and_status(tmp_path: Path) -> None:
    lines = [batch_line(f"f{i}", body(i), tiersel={"tiers": ["fast"]}) for i in range(3)]
    lines += [body(10 + i) for i in range(4)] + ["nope"]
    summary, rows = job(tmp_path, lines, httpx.MockTransport(always_ok), budget_usd=1.0)
    doc = summary.to_dict()
    assert {
        k: doc[k] for k in ("calls_ok", "calls_failed", "calls_budget_exhausted", "calls_invalid")
    } == {"calls_ok": 7, "calls_failed": 0, "calls_budget_exhausted": 0, "calls_invalid": 1}
    assert doc["by_tier"]["fast"]["calls"] == 3 and doc["by_tier"]["standard"]["ok"] == 4
    spend = sum(r["cost_usd"] for r in rows if r["tier"] == "fast")
    assert doc["by_tier"]["fast"]["spent_usd"] == pytest.approx(spend)
    assert doc["remaining_usd"] == pytest.approx(1.0 - doc["spent_usd"])
    assert Status.ok.value in summary.render()


def test_resume_cuts_a_half_written_last_line_and_refuses_a_corrupt_out(tmp_path: Path) -> None:
    docs = [body(i) for i in range(6)]
    first, _ = job(tmp_path, docs, httpx.MockTransport(always_ok), budget_usd=1.0)
    out = tmp_path / "out.jsonl"
    rows = out.read_bytes().splitlines(keepends=True)
    # A crash while writing: the last row half on disk, a journal record cut short.
    out.write_bytes(b"".join(rows[:-1]) + rows[-1][:40])
    with open(f"{out}.journal", "ab") as f:
        f.write(b'{"op":"r","l":3,"a":"x')
    again, rows_after = job(
        tmp_path, docs, httpx.MockTransport(always_ok), budget_usd=1.0, resume=True
    )
    assert sorted(r["line"] for r in rows_after) == list(range(1, 7))
    assert again.earlier_rows == 5
    # The lost row's call was billed (the journal says so) and is sent again: its new row
    # carries both charges, and the job's spend counts it twice.
    one = first.spent_usd / 6
    resent = next(r for r in rows_after if r["line"] == json.loads(rows[-1])["line"])
    assert resent["cost_usd"] == pytest.approx(2 * one) and resent["unconfirmed_usd"] == 0
    assert again.spent_usd == pytest.approx(first.spent_usd + one)
    # A row that is not a row, in the middle of OUT: refuse, naming it.
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(lines[0] + b"garbage\n" + b"".join(lines[1:]))
    with pytest.raises(JournalError, match=r"out.jsonl: row 2 is not a tiersel batch row"):
        job(tmp_path, docs, httpx.MockTransport(always_ok), budget_usd=1.0, resume=True)


def test_a_ledger_whose_limit_is_not_the_budget_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    # A ledger of $10 under a $0.1 budget spent 4.4x the budget, and the summary showed no
    # overrun (a new user's probe): the job's cap is the ledger's, so the two must agree.
    from tiersel.budget import MemoryLedger

    src = write_jsonl(tmp_path / "in.jsonl", [body(i) for i in range(3)])
    out = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match=r"ledger: its limit is \$10, but budget_usd is \$0.1"):
        run_batch(
            src,
            out,
            budget_usd=0.1,
            ledger=MemoryLedger(10.0),
            transport=httpx.MockTransport(always_ok),
            clock=FakeClock(),
            api_key="",
            progress=False,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no OUT, no journal
    # A ledger of the budget's limit runs.
    summary, rows = job(
        tmp_path,
        [body(i) for i in range(3)],
        httpx.MockTransport(always_ok),
        budget_usd=0.1,
        ledger=MemoryLedger(0.1),
    )
    assert summary.complete and [r["status"] for r in rows] == ["ok"] * 3


def test_shards_that_cannot_share_a_budget_are_refused(tmp_path: Path) -> None:
    from tiersel.batch.sharing import Shard

    src = write_jsonl(tmp_path / "in.jsonl", [body(i) for i in range(4)])

    def run(shard: str) -> Any:
        return run_batch(
            src,
            tmp_path / "out.jsonl",
            budget_usd=1.0,
            shard=Shard.parse(shard),
            transport=httpx.MockTransport(always_ok),
            clock=FakeClock(),
            api_key="",
            progress=False,
        )

    with pytest.raises(ValueError, match="shard 1/2: the shards must share one budget"):
        run("1/2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
    # One shard of one is the whole job: its budget is its own.
    assert run("1/1").complete and len(read_rows(tmp_path / "out.1-of-1.jsonl")) == 4


def test_a_damaged_journal_is_named_with_what_to_do(tmp_path: Path) -> None:
    three, upstream = [body(i) for i in range(3)], httpx.MockTransport(always_ok)
    job(tmp_path, three, upstream, budget_usd=1.0)
    journal = tmp_path / "out.jsonl.journal"
    records = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join([*records[:2], b"not json\n", *records[2:]]))
    with pytest.raises(JournalError, match="record 3 is not a journal record: the file is dam"):
        job(tmp_path, three, upstream, budget_usd=1.0, resume=True)


def test_hedged_lines_are_served_and_their_losers_charged_to_the_line(tmp_path: Path) -> None:
    # A line may ask for a hedge. The engine charged a won race's loser under an id of its own
    # (<call>#hedge<n>), which the job's ledger, accounting lines by their call ids, refused
    # with a KeyError: every such line failed and was charged nothing for what was billed.
    from tiersel.sim import AsyncSimTransport

    src = tmp_path / "in.jsonl"
    body = {"model": "kimi-k3", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200}
    need = {"deadline_s": 8.0, "reliability": 0.99, "hedge": True, "watch": False}
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        | {"tiersel": need}
        for i in range(12)
    ]
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    clock = FakeClock()
    sim = AsyncSimTransport(scenario="calm", clock=clock)
    summary = run_batch(
        src, tmp_path / "out.jsonl", budget_usd=5.0, transport=sim, clock=clock, api_key="",
        progress=False, concurrency=4,
    )  # fmt: skip
    assert summary.calls_ok == 12 and summary.calls_failed == 0
    stats = sim.stats()
    assert stats["requests"] == 24  # each line's two requests raced
    # The losers ran on and were billed: the job's spend covers them (within the estimate).
    assert summary.spent_usd == pytest.approx(stats["billed_usd"], rel=0.01)
