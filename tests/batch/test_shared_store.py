"""``tiersel batch --store redis://...`` against a real redis-server on loopback: the store going
away mid-job, and a store that lost its data (flushed, or restarted without persistence) met by a
resumed job."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from tests.stores.conftest import start_redis
from tiersel.batch.input import scan_input
from tiersel.batch.journal import release_record, reserve_record, settle_record
from tiersel.batch.sharing import open_shared_stores
from tiersel.clock import SystemClock
from tiersel.signals import Observation, Outcome, SignalKey
from tiersel.stores import open_ledger
from tiersel.stores.redis_ledger import RedisLedger

from .conftest import batch_line, body, write_jsonl

TIERSEL = [sys.executable, "-m", "tiersel"]


def whole_rows(out: Path) -> list[dict[str, Any]]:
    """OUT's rows (a last line a SIGKILL cut short is not a row)."""
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_bytes().split(b"\n")[:-1]]


def job_spent(out: Path) -> float:
    """What the journal's last run carried in."""
    with open(f"{out}.journal", "rb") as f:
        heads = [json.loads(line) for line in f if line.startswith(b'{"op": "job"')]
    return float(heads[-1]["carried_usd"])


def store_spent(url: str, src: Path, out: Path, budget: float) -> float:
    """What the job's own budget in the store (named after OUT and the input) has spent."""
    name = f"batch-{out.name}-{scan_input(src).sha256[:12]}"
    ledger = open_ledger(url, limit_usd=budget, name=name)
    try:
        state = ledger.state(0.0)
    finally:
        ledger.close()  # type: ignore[attr-defined]
    assert state.reserved_usd == 0.0
    return state.spent_usd


def wait_for_rows(job: subprocess.Popen[str], out: Path, n: int) -> None:
    deadline = time.monotonic() + 60
    while len(whole_rows(out)) < n:
        assert job.poll() is None, job.communicate()[1]
        assert time.monotonic() < deadline, f"fewer than {n} rows after 60 s"
        time.sleep(0.01)


def peak_job(
    tmp_path: Path, url: str, budget: float, lines: int = 300
) -> tuple[Path, Path, list[str]]:
    """A job of ``lines`` lines of 400 tokens on the peak scenario, budgeted in the store at
    ``url``: its input, its OUT and its command line."""
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [batch_line(f"r{i}", body(i, max_tokens=400)) for i in range(lines)],
    )
    out = tmp_path / "out.jsonl"
    args = [*TIERSEL, "batch", str(src), "--out", str(out), "--budget-usd", repr(budget)]
    return src, out, [*args, "--sim", "peak", "--store", url, "--json"]


def killed_after_rows(args: list[str], out: Path, n: int) -> None:
    """Run the job ``args`` until OUT has ``n`` rows, then SIGKILL it."""
    job = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        wait_for_rows(job, out, n)
        job.send_signal(signal.SIGKILL)
        job.wait(10)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()


LINES = 400  # the first run writes about 20 rows in 0.6 s and all 400 in about 2 s


@pytest.mark.slow
def test_the_store_going_away_ends_the_job_at_once_with_one_line(tmp_path: Path) -> None:
    server, url = start_redis(tmp_path)
    src = write_jsonl(
        tmp_path / "in.jsonl", [batch_line(f"q-{i}", body(i, max_tokens=40)) for i in range(LINES)]
    )
    out = tmp_path / "out.jsonl"
    args = [*TIERSEL, "batch", str(src), "--out", str(out), "--budget-usd", "5", "--sim", "calm"]
    args += ["--concurrency", "16", "--json", "--store"]
    job = subprocess.Popen(
        [*args, url, "--sim-time-scale", "0.02"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_rows(job, out, 20)
        server.terminate()  # no persistence: what it held is gone
        server.wait(10)
        stopped = time.monotonic()
        stdout, stderr = job.communicate(timeout=60)
        took = time.monotonic() - stopped
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
        if server.poll() is None:
            server.kill()
            server.wait()
    assert job.returncode == 5, stderr
    assert stdout == ""
    # One line, and before it at most the signal store's one warning (it falls back to memory):
    # no "Task exception was never retrieved", no "coroutine ... was never awaited".
    *warned, error = stderr.splitlines()
    assert warned in (
        [],
        [
            f"the signal store at {url} is unreachable (ConnectionError); signals"
            " are kept in this process's memory until it answers again"
        ],
    ), stderr
    assert error.startswith(f"tiersel: error: the budget store at {url} is unreachable"), stderr
    assert error.endswith("; rerun with --resume once it answers"), stderr
    assert took < 20, took
    done_before = len(whole_rows(out))
    assert done_before < LINES

    # A new, empty store: the resumed job puts back what its journal shows it spent, and ends
    # with the store holding exactly what the rows cost.
    (tmp_path / "again").mkdir()
    server, url = start_redis(tmp_path / "again")
    try:
        resume = [*args, url, "--sim-time-scale", "0.02", "--resume"]
        done = subprocess.run(resume, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        rows = whole_rows(out)
        assert sorted(r["custom_id"] for r in rows) == sorted(f"q-{i}" for i in range(LINES))
        assert summary["store_restored_usd"] == pytest.approx(job_spent(out), abs=1e-6)
        spent = sum(r["cost_usd"] for r in rows)
        assert store_spent(url, src, out, 5.0) == pytest.approx(spent, abs=1e-6)
    finally:
        server.terminate()
        server.wait(10)


def test_a_resumed_job_whose_store_was_flushed_stays_within_its_budget(tmp_path: Path) -> None:
    server, url = start_redis(tmp_path)
    budget = 0.3
    src, out, args = peak_job(tmp_path, url, budget)
    try:
        killed_after_rows([*args, "--sim-time-scale", "0.02", "--concurrency", "16"], out, 15)
        client = redis.Redis.from_url(url)
        client.flushall()  # as a restart of a Redis without persistence would
        client.close()
        done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=120)
        assert done.returncode in (0, 1), done.stderr
        summary = json.loads(done.stdout)
        rows = whole_rows(out)
        spent = sum(r["cost_usd"] for r in rows)
        assert sorted(r["custom_id"] for r in rows) == sorted(f"r{i}" for i in range(300))
        assert summary["spent_usd"] == pytest.approx(spent, abs=1e-9)
        assert spent <= budget + 1e-9, summary
        assert summary["calls_budget_exhausted"] > 0  # the cap bound, and held
        assert summary["store_restored_usd"] == pytest.approx(job_spent(out), abs=1e-6)
        assert summary["store_restored_usd"] > 0
        assert store_spent(url, src, out, budget) == pytest.approx(spent, abs=1e-6)
    finally:
        server.terminate()
        server.wait(10)


def test_a_shard_whose_store_was_flushed_is_refused_and_its_files_are_untouched(
    tmp_path: Path,
) -> None:
    server, url = start_redis(tmp_path)
    src = write_jsonl(tmp_path / "in.jsonl", [body(i, max_tokens=30) for i in range(40)])
    out = tmp_path / "out.jsonl"
    shard_out = tmp_path / "out.1-of-2.jsonl"
    args = [*TIERSEL, "batch", str(src), "--out", str(out), "--budget-usd", "1", "--sim", "calm"]
    args += ["--shard", "1/2", "--store", url, "--json"]
    try:
        first = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        spent = json.loads(first.stdout)["spent_usd"]
        # The store still holds the spend: a resume is no false alarm.
        again = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["store_restored_usd"] == 0.0
        client = redis.Redis.from_url(url)
        client.flushall()
        client.close()
        files = {p: p.read_bytes() for p in (shard_out, Path(f"{shard_out}.journal"))}
        lost = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=60)
    finally:
        server.terminate()
        server.wait(10)
    assert (lost.returncode, lost.stdout) == (5, ""), lost.stderr
    name = f"batch-out.jsonl-{scan_input(src).sha256[:12]}"
    assert lost.stderr == (
        f"tiersel: error: the shared budget {name!r} at {url} holds $0.000000, less than the"
        f" ${spent:.6f} that {shard_out}.journal shows this job spent: the store lost its data"
        " (flushed, or restarted without persistence). Other shards or jobs share this budget"
        " and their spend is not in this journal, so it cannot be rebuilt from here: restore"
        " the store's data, then rerun with --resume\n"
    )
    assert {p: p.read_bytes() for p in files} == files


def test_a_shards_summary_says_what_the_shared_budget_has_left(tmp_path: Path) -> None:
    # Shard 1 spends; shard 2's summary said 'left $1.000000' and remaining_usd 1.0 while the
    # shared budget had less (helper-31): it showed its own spend only.
    server, url = start_redis(tmp_path)
    src = write_jsonl(tmp_path / "in.jsonl", [body(i, max_tokens=30) for i in range(20)])
    args = [*TIERSEL, "batch", str(src), "--out", str(tmp_path / "out.jsonl")]
    args += ["--budget-usd", "1", "--sim", "calm", "--store", url, "--json"]
    # helper-33 (d4): a dead shard's reservations were not in the summary's 'left' either.
    ledger = open_ledger(f"{url}?budget=batch-out.jsonl-{scan_input(src).sha256[:12]}",
                         limit_usd=1.0)  # fmt: skip
    try:
        run = [*args, "--shard", "1/2"]
        runs = [subprocess.run(run, capture_output=True, text=True, timeout=60)]
        assert ledger.reserve("a-dead-shard:1:1#1", 0.3, 0.0) is not None
        run = [*args, "--shard", "2/2"]
        runs.append(subprocess.run(run, capture_output=True, text=True, timeout=60))
        shared = ledger.state(0.0)
    finally:
        server.terminate()
        server.wait(10)
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    first, second = (json.loads(r.stdout) for r in runs)
    both = first["spent_usd"] + second["spent_usd"]
    assert shared.spent_usd == pytest.approx(both, abs=1e-9) and first["spent_usd"] > 0
    assert second["shared_spent_usd"] == pytest.approx(both, abs=1e-9)
    assert second["shared_reserved_usd"] == pytest.approx(0.3, abs=1e-9)
    assert second["remaining_usd"] == pytest.approx(1.0 - both - 0.3, abs=1e-9)


def test_a_store_away_before_the_job_began_says_to_run_it_again(tmp_path: Path) -> None:
    # It said 'rerun with --resume' when there was no OUT to resume (helper-31).
    src = write_jsonl(tmp_path / "in.jsonl", [body(i) for i in range(3)])
    out = tmp_path / "out.jsonl"
    args = [*TIERSEL, "batch", str(src), "--out", str(out), "--budget-usd", "1", "--sim", "calm"]
    args += ["--store", "redis://127.0.0.1:1/0?socket_connect_timeout=0.5"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 5, done.stderr
    assert done.stderr.rstrip().endswith("; run it again once it answers"), done.stderr
    assert "--resume" not in done.stderr and not out.exists()


@pytest.mark.slow
def test_a_resumed_job_closes_the_reservations_its_killed_run_left_open(tmp_path: Path) -> None:
    # helper-31 (d6): a run killed with lines between attempts left their reservations in the
    # store, which charged each in full at its expiry ($0.43 for requests never sent). The
    # resume closes every reservation of the job's earlier runs at once: those the journal
    # shows in flight are charged their reservation, as the journal counts them; the rest
    # (held between attempts, or never journaled, so never sent) are given back.
    server, url = start_redis(tmp_path)
    budget = 5.0
    src, out, args = peak_job(tmp_path, url, budget, lines=150)
    args += ["--sim-time-scale", "0.02"]
    name = f"batch-{out.name}-{scan_input(src).sha256[:12]}"
    clock = SystemClock()  # the store's own clock ignores it: the server's
    on_clock = {"name": name}
    ledger = cast(RedisLedger, open_ledger(url, limit_usd=budget, **on_clock))
    try:
        killed_after_rows([*args, "--concurrency", "32"], out, 15)
        # Seven more of the killed run's lines, as a run can leave them (lines far down the
        # input, which it never reached; each reserved $0.01 but 145):
        # - 144's request was in flight, and its reservation lapsed, freed at its expiry
        #   (helper-33, on_expiry=release: its money was spent again, past the cap);
        # - 145's request ($1) was in flight, and the store lost its reservation (a failover);
        # - 146's answer was charged $0.004 in the journal, and the store was away for the
        #   charge (helper-32: the resume released it, and the budget came up short);
        # - 147's answer was charged $0.002 in the store, and the run died before its journal
        #   said so (helper-33: its row carried the whole reservation, and the rows passed the
        #   cap while the store did not);
        # - 148 held money between attempts (its first was shed);
        # - 149's reservation was made but never journaled, so its request never left;
        # - 150's request was in flight.
        # And a reservation of another job, whose id begins with this job's.
        jid = json.loads(Path(f"{out}.journal").read_bytes().split(b"\n")[0])["job"]
        lines = range(144, 151)
        assert not set(lines) & {r["line"] for r in whole_rows(out)}
        ids = [f"{jid}:{n}:1#1" for n in lines]
        lapsed, lost, unsettled, served, idle, unjournaled, flying = ids
        other = f"{jid}0:1:1#1"
        for rid in (unsettled, served, idle, unjournaled, flying):
            assert ledger.reserve(rid, 0.01, clock.now()) is not None
        assert ledger.reserve(other, 0.001, clock.now()) is not None
        ledger.settle(served, 0.002, clock.now())
        freeing = cast(
            RedisLedger, open_ledger(url, limit_usd=budget, on_expiry="release", **on_clock)
        )
        assert freeing.reserve(lapsed, 0.01, clock.now(), ttl_s=0.05) is not None
        time.sleep(0.1)
        freeing.state(clock.now())  # (its expiry, seen by a store that frees expired ones)
        freeing.close()
        with open(f"{out}.journal", "ab") as f:
            f.write(reserve_record(144, lapsed, 0.01))
            f.write(reserve_record(145, lost, 1.0))
            f.write(reserve_record(146, unsettled, 0.01) + settle_record(unsettled, 0.004))
            f.write(reserve_record(147, served, 0.01))
            f.write(reserve_record(148, idle, 0.01) + release_record(idle))
            f.write(reserve_record(150, flying, 0.01))
        done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=120)
        assert done.returncode in (0, 1), done.stderr
        summary = json.loads(done.stdout)
        after = ledger.state(clock.now())
        others = ledger.reservations(jid, clock.now())
        where = ledger.whereabouts(ids, clock.now())
    finally:
        ledger.close()
        server.terminate()
        server.wait(10)
    rows = {r["line"]: r for r in whole_rows(out)}
    assert sorted(rows) == list(range(1, 151))
    # Nothing of this job is left reserved; the other job's reservation is untouched.
    assert others == {other: pytest.approx(0.001)}
    assert after.reserved_usd == pytest.approx(0.001, abs=1e-9)
    # Each was charged as the journal counts it, or released (a released id is forgotten).
    charged = {n: where[i].usd for n, i in zip(lines, ids, strict=True)}
    assert [where[i].where.value for i in ids] == [
        "settled", "unknown", "settled", "settled", "unknown", "unknown", "settled"
    ]  # fmt: skip
    assert (charged[144], charged[146], charged[147], charged[150]) == pytest.approx(
        (0.01, 0.004, 0.002, 0.01)
    )
    journal = Path(f"{out}.journal").read_text()
    for attempt, usd, flag in [
        (lapsed, 0.01, ',"u":1'),
        (flying, 0.01, ',"u":1'),
        (served, 0.002, ""),
    ]:
        assert f'{{"op":"s","a":"{attempt}","usd":{usd!r}{flag}}}' in journal
    # Its row carries what the store charged: 147's $0.002, confirmed, not its reservation.
    assert rows[147]["unconfirmed_usd"] == 0.0 and rows[147]["cost_usd"] >= 0.002
    assert rows[150]["unconfirmed_usd"] >= 0.01 and rows[144]["unconfirmed_usd"] >= 0.01
    # Given back: the two that sent nothing, what 146 held past its charge, and what the
    # killed run held for no request.
    assert summary["store_freed_usd"] >= 0.026 - 1e-9
    # The store lost 145's reservation: that, and only that, is charged again (less the other
    # job's $0.001, which the store's total counts: a budget shared is checked as a whole).
    assert summary["store_restored_usd"] == pytest.approx(1.0 - 0.001, abs=1e-6), done.stderr
    assert "the store lost its data" in done.stderr
    # The store charged what the rows say (and the summary), but the $0.001 of the lost one
    # that the other job's reservation hid.
    spent = sum(r["cost_usd"] for r in rows.values())
    assert after.spent_usd == pytest.approx(spent - 0.001, abs=1e-6)
    assert summary["spent_usd"] == pytest.approx(spent, abs=1e-9)


@pytest.mark.parametrize(("url_clock", "on_jobs_clock"), [("", True), ("?clock=server", False)])
def test_a_job_on_a_simulated_clock_reads_its_signals_on_that_clock(
    tmp_path: Path, url_clock: str, on_jobs_clock: bool
) -> None:
    # helper-33 (d6): with --sim-time-scale, the signals kept cooldowns on the Redis server's
    # real clock while the job slept simulated seconds: a 30 s cooldown was waited out in
    # hundreds of ever shorter sleeps, each asking the store again, for 30 real seconds. The
    # budget stays on the server's clock, which every process sharing it reads alike
    # (helper-34: on two clocks, one process freed the other's reservations).
    server, url = start_redis(tmp_path)
    try:
        shared = open_shared_stores(
            url + url_clock, budget_usd=1.0, out=tmp_path / "o.jsonl", input_sha256="0" * 64,
            callers_clock=True,
        )  # fmt: skip
        assert shared is not None
        # The budget: 20 s after a reservation of 10 s on the job's clock, still held.
        assert shared.ledger.reserve("job:1:1#1", 0.5, 0.0, 10.0) is not None
        assert shared.ledger.state(20.0).reserved_usd == 0.5
        shared.ledger.close()  # type: ignore[attr-defined]

        async def seen_much_later() -> int:
            # An observation is out of the signals' window a million seconds later on the
            # job's clock; on the server's, the job's time is not read.
            key = SignalKey("fireworks", "kimi-k3", "standard")
            await shared.signals.record(key, Observation(Outcome.ok), 1000.0)
            n = (await shared.signals.stats(key, 1e6)).n
            await shared.signals.aclose()  # type: ignore[attr-defined]
            return n

        assert (asyncio.run(seen_much_later()) == 0) is on_jobs_clock
    finally:
        server.terminate()
        server.wait(10)
