"""Many processes, one picture: real worker processes sharing a real redis-server, against the
simulator served over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.stores.conftest import free_port
from tiersel.cli import main
from tiersel.sim.server import RunningServer, serve_in_subprocess
from tiersel.stores import open_ledger

WORKERS = Path(__file__).parent / "workers"
ROOT = Path(__file__).resolve().parents[2]


def run_worker(script: str, *args: str, timeout: float = 60) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(WORKERS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def peak_sim() -> Iterator[RunningServer]:
    """The simulator under `peak`, 20x faster than real time."""
    with serve_in_subprocess("peak", time_scale=0.05) as server:
        yield server


@pytest.mark.slow
def test_signals_one_process_records_steer_another_process(
    redis_url: str, prefix: str, peak_sim: RunningServer
) -> None:
    store = f"{redis_url}?prefix={prefix}"
    # Control: with no signals yet, a 20 s call needing 95% reliability goes on standard alone
    # (every attempt of its schedule).
    assert set(run_worker("signal_worker.py", "decide", store)["plan"]) == {"standard"}
    peak_sim.reset(time_s=120)  # inside the busy spell: standard is shed about 90% of the time
    sent = run_worker("signal_worker.py", "send", peak_sim.openai_base_url, store, "8")
    assert sent["statuses"].count(503) >= 3, sent
    # Another process, within one window (60 s), reads what the first one recorded: standard
    # alone no longer meets the reliability, so the plan moves to (or escalates to) priority.
    steered = run_worker("signal_worker.py", "decide", store)
    assert "priority" in steered["plan"], steered
    # A process on another namespace saw nothing: the steer came through Redis.
    fresh = run_worker("signal_worker.py", "decide", f"{redis_url}?prefix={prefix}-other")
    assert set(fresh["plan"]) == {"standard"}


# -- batch shards sharing one budget ---------------------------------------------------------------

SHARDS = 4
PER_SHARD = 160  # well over the 64 each worker keeps in flight


def write_input(path: Path, lines: int) -> list[str]:
    """An OpenAI batch file of ``lines`` small chat calls; returns their custom ids.

    Tiny prompts and a fixed output (the simulator writes ``max_tokens``), so a line's worst
    case is close to what it costs: a budget that lets 4 x 64 lines be reserved at once still
    runs out before every line is paid for.
    """
    ids = [f"req-{k:04d}" for k in range(lines)]
    with path.open("w") as f:
        for k, cid in enumerate(ids):
            body = {
                "model": "accounts/fireworks/models/kimi-k3",
                "messages": [{"role": "user", "content": f"hi {k}"}],
                "max_tokens": 64,
            }
            f.write(json.dumps({"custom_id": cid, "body": body}) + "\n")
    return ids


def batch_worker(
    input_path: Path, out: Path, shard: int, store: str, sim: RunningServer, budget: float,
    *extra: str, deadline: float = 3,
) -> subprocess.Popen[str]:  # fmt: skip
    return subprocess.Popen(
        [
            sys.executable, "-m", "tiersel", "batch", str(input_path),
            "--out", str(out),
            "--budget-usd", repr(budget),
            "--base-url", sim.openai_base_url,
            "--shard", f"{shard}/{SHARDS}",
            "--store", store,
            "--concurrency", "64",
            "--deadline", repr(deadline),
            "--json", "--no-progress",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "FIREWORKS_API_KEY": "sk-sim-not-a-real-key"},
    )  # fmt: skip


def rows(path: Path) -> list[dict[str, Any]]:
    """OUT's rows (a last line a SIGKILL cut short is not a row)."""
    whole = path.read_bytes().split(b"\n")[:-1]
    return [json.loads(line) for line in whole]


def shard_out(out: Path, shard: int) -> Path:
    return out.with_name(f"{out.stem}.{shard}-of-{SHARDS}{out.suffix}")


class BudgetWatch:
    """Samples the shared budget from this process while the workers run."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger
        self.worst = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            state = self.ledger.state(0.0)
            self.worst = max(self.worst, state.spent_usd + state.reserved_usd)
            self.samples += 1
            time.sleep(0.005)

    def __enter__(self) -> BudgetWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode in (0, 1), err
    summary: dict[str, Any] = json.loads(out)
    return summary


def wait_until_held(sim: RunningServer, n: int, workers: list[subprocess.Popen[str]]) -> None:
    deadline = time.monotonic() + 60
    while (held := sim.stats()["held"]) < n:
        assert all(w.poll() is None for w in workers), "a worker ended while the answers were held"
        assert time.monotonic() < deadline, f"only {held} of {n} calls reached the simulator"
        time.sleep(0.02)


@pytest.mark.slow
def test_four_workers_with_64_in_flight_share_one_budget_under_peak(
    redis_url: str, prefix: str, peak_sim: RunningServer, tmp_path: Path
) -> None:
    ids = write_input(tmp_path / "in.jsonl", SHARDS * PER_SHARD)
    # Room for 4 x 64 worst-case reservations at once (about $0.44), not for every line (about
    # $0.9): every worker keeps 64 calls in flight, and the money runs out before the lines do.
    budget = 0.48
    store = f"{redis_url}?prefix={prefix}&budget=job"
    ledger = open_ledger(store, limit_usd=budget)
    peak_sim.reset(time_s=95)  # the busy spell: standard shed about 90% of the time
    before = peak_sim.stats()["requests"]
    # The simulator holds every answer until all four workers have 64 calls out, so no worker
    # spends before the last one has started (process start-up times vary a lot under load).
    # The deadline is long enough that no held call times out meanwhile.
    peak_sim.hold()
    try:
        with BudgetWatch(ledger) as watch:
            workers = [
                batch_worker(
                    tmp_path / "in.jsonl", tmp_path / "out.jsonl", i, store, peak_sim, budget,
                    deadline=12,
                )
                for i in range(1, SHARDS + 1)
            ]  # fmt: skip
            wait_until_held(peak_sim, SHARDS * 64, workers)
            peak_sim.release()
            # Calls with 30 s to spare may wait out standard's cooldowns: give them time.
            summaries = [finish(w, timeout=300) for w in workers]
    finally:
        peak_sim.release()
    assert [s["peak_in_flight"] for s in summaries] == [64] * SHARDS
    # Committed plus reserved, sampled from here while they ran, never passed the budget.
    assert watch.samples > 10
    assert watch.worst <= budget + 1e-9
    final = ledger.state(0.0)
    assert final.reserved_usd == 0.0 and final.spent_usd <= budget
    # Each input line has exactly one row, in exactly one shard's OUT.
    every = [r for i in range(1, SHARDS + 1) for r in rows(shard_out(tmp_path / "out.jsonl", i))]
    assert sorted(r["custom_id"] for r in every) == ids
    spent = sum(r["cost_usd"] for r in every)
    assert spent <= budget + 1e-9
    assert spent == pytest.approx(final.spent_usd, abs=1e-6)
    # The cap bound: lines found no money left.
    refused = [r for r in every if "budget" in r["status"] or "budget" in json.dumps(r["error"])]
    ok = sum(x["calls_ok"] for x in summaries)
    assert refused and ok > 0, (len(refused), ok)
    stats = peak_sim.stats()
    assert stats["requests"] - before >= ok
    assert stats["by_tier"]["standard"].get("503", 0) > 0  # it was the peak
    assert stats["hinted"] == 0 and stats["priority_with_router"] == 0


@pytest.mark.slow
def test_a_killed_worker_pins_nothing_past_expiry_and_its_shard_resumes(
    redis_url: str, prefix: str, peak_sim: RunningServer, tmp_path: Path
) -> None:
    per_shard = 72  # 64 in flight, and a few to come: the kill lands mid-run
    ids = write_input(tmp_path / "in.jsonl", SHARDS * per_shard)
    budget, ttl = 5.0, 5.0  # longer than a call takes here, even under load
    store = f"{redis_url}?prefix={prefix}&budget=job&reservation_ttl_s={ttl}"
    ledger = open_ledger(store, limit_usd=budget)
    client = redis.Redis.from_url(redis_url)
    held_key = f"{prefix}:budget:{{job}}:held"
    out = tmp_path / "out.jsonl"
    victim, victim_out = 2, shard_out(out, 2)
    peak_sim.reset(time_s=95)
    workers = {
        i: batch_worker(tmp_path / "in.jsonl", out, i, store, peak_sim, budget)
        for i in range(1, SHARDS + 1)
    }
    deadline = time.monotonic() + 30
    while len(rows(victim_out)) < 10 if victim_out.exists() else True:
        assert workers[victim].poll() is None, "the victim finished before it could be killed"
        assert time.monotonic() < deadline, "the victim wrote no rows"
        time.sleep(0.005)
    workers[victim].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    workers[victim].wait()
    job = json.loads(
        victim_out.with_name(victim_out.name + ".journal").read_bytes().split(b"\n")[0]
    )
    victims = [k for k in client.hkeys(held_key) if k.decode().startswith(job["job"])]
    assert victims, "the victim died holding no reservation: nothing to test"
    for i, w in workers.items():
        if i != victim:
            finish(w)
    # Past their expiry, none of the dead worker's reservations holds money any more.
    time.sleep(max(0.0, killed_at + ttl + 0.1 - time.monotonic()))
    assert ledger.state(0.0).reserved_usd == 0.0
    assert not set(victims) & set(client.hkeys(held_key))
    client.close()
    done_before = {r["custom_id"] for r in rows(victim_out)}
    assert 10 <= len(done_before) < per_shard
    finish(batch_worker(tmp_path / "in.jsonl", out, victim, store, peak_sim, budget, "--resume"))
    victim_rows = rows(victim_out)
    assert len(victim_rows) == len({r["custom_id"] for r in victim_rows}) == per_shard
    assert done_before <= {r["custom_id"] for r in victim_rows}
    every = [r for i in range(1, SHARDS + 1) for r in rows(shard_out(out, i))]
    assert sorted(r["custom_id"] for r in every) == ids
    final = ledger.state(0.0)
    assert final.reserved_usd == 0.0 and final.spent_usd <= budget


# -- the command line's own errors --------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``tiersel batch ARGS`` in this process: its exit code and what it wrote to stderr."""
    code = main(["batch", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "problem"),
    [
        (["--shard", "5/4"], "--shard: shard 5/4: want i/n with n >= 1 and 1 <= i <= n"),
        (["--shard", "two"], "--shard: shard 'two': want i/n"),
        (["--store", "mongodb://h"], "--store: store URL 'mongodb://h': unknown scheme"),
        (
            ["--store", "redis://127.0.0.1:notaport/0"],
            "--store: store URL 'redis://127.0.0.1:notaport/0': the port 'notaport' is not a"
            " number from 0 to 65535",
        ),
        (
            ["--store", "redis://127.0.0.1:6379/abc"],
            "--store: store URL 'redis://127.0.0.1:6379/abc': the database 'abc' is not a number"
            " (redis://host:port/DB, DB from 0)",
        ),
        (
            ["--store", "redis://127.0.0.1:6379/0?reservation_ttl=60"],
            # (the value of a setting tiersel does not know is masked: it may be a password's)
            "--store: store URL 'redis://127.0.0.1:6379/0?reservation_ttl=***': unknown setting"
            " 'reservation_ttl' (did you mean 'reservation_ttl_s'?)",
        ),
    ],
)
def test_bad_shard_or_store_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str], problem: str
) -> None:
    write_input(tmp_path / "in.jsonl", 3)
    where = ["--out", str(tmp_path / "o.jsonl"), "--base-url", "http://127.0.0.1:9/v1"]
    code, err = cli(capsys, str(tmp_path / "in.jsonl"), *where, "--budget-usd", "1", *option)
    assert code == 2
    assert err.count("\n") == 1 and problem in err, err


def test_an_unreachable_store_sends_nothing_writes_nothing_and_exits_5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_input(tmp_path / "in.jsonl", 3)
    port = free_port()
    code, err = cli(capsys, str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "o.jsonl"),
                    "--budget-usd", "1", "--base-url", "http://127.0.0.1:9/v1", "--shard", "1/2",
                    "--store", f"redis://:pw-canary@127.0.0.1:{port}/0")  # fmt: skip
    assert code == 5, err
    assert "unreachable" in err and "no call is sent" in err
    assert "run it again once it answers" in err and "pw-canary" not in err  # nothing to resume
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_shards_given_different_budgets_are_refused(
    redis_url: str, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_input(tmp_path / "in.jsonl", 3)
    store = f"{redis_url}?prefix={prefix}&budget=b"
    open_ledger(store, limit_usd=1.0).state(0.0)
    code, err = cli(capsys, str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "o.jsonl"),
                    "--budget-usd", "2", "--base-url", "http://127.0.0.1:9/v1",
                    "--store", store)  # fmt: skip
    assert code == 5
    assert "budget 'b'" in err and "limit of $1.000000" in err


def test_a_database_the_server_does_not_have_is_one_line_and_exit_2(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_input(tmp_path / "in.jsonl", 3)
    store = redis_url.rsplit("/", 1)[0].replace("redis://", "redis://:pw-canary@") + "/99999"
    code, err = cli(capsys, str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "o.jsonl"),
                    "--budget-usd", "1", "--base-url", "http://127.0.0.1:9/v1",
                    "--store", store)  # fmt: skip
    assert code == 2, err
    masked = store.replace(":pw-canary@", ":***@")
    assert err == (
        f"tiersel: error: --store: store URL {masked!r}: the server has no database 99999"
        " (DB index is out of range)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


# -- wrapper processes sharing one budget ----------------------------------------------------------


@pytest.mark.slow
def test_four_wrapper_processes_and_a_restarted_one_share_one_budget(
    redis_url: str, prefix: str
) -> None:
    """One process sends, stops, and starts again (a restart: it once reused the call ids its
    first run had settled, and was charged nothing); then four processes at once, each sending
    openai SDK calls through `AsyncTierTransport` on one Redis budget, until it runs out. The
    provider's bill stays within the cap and equals what the ledger charged: no process settled,
    released or overwrote another's reservation."""
    budget = 0.10
    store = f"{redis_url}?prefix={prefix}"
    with serve_in_subprocess("calm", time_scale=0.01) as sim:

        def worker(n: int) -> dict[str, Any]:
            return run_worker("budget_worker.py", sim.openai_base_url, store, str(budget), str(n))

        first = worker(4)
        billed_first = sim.stats()["billed_usd"]
        restarted = worker(4)
        billed_restarted = sim.stats()["billed_usd"]
        crowd: list[dict[str, Any]] = []
        threads = [threading.Thread(target=lambda: crowd.append(worker(40))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        billed = sim.stats()["billed_usd"]
    state = open_ledger(store, limit_usd=budget, name="shared").state(time.monotonic())
    assert first == restarted == {"served": 4}
    assert billed_restarted > billed_first > 0  # the restarted process's calls were charged
    assert len(crowd) == 4 and sum(r.get("served", 0) for r in crowd) > 0
    assert sum(r.get("refused", 0) for r in crowd) > 0  # the budget ran out
    assert billed <= budget + 1e-9
    assert state.spent_usd == pytest.approx(billed, abs=1e-9)
    assert state.reserved_usd == 0
