"""A running ``tiersel batch`` killed with SIGKILL at points the test picks, then resumed, loses
nothing.

The job sends to a simulator server whose gate (``/sim/hold``) the test controls: once OUT has
the rows the test waits for, it holds the server and kills the job only when a request is held,
so every kill lands with the job alive and requests in flight whose reservations are journaled
but not yet settled (it cannot race the job's end). After the last resume OUT has every input id
exactly once, the spend equals the sum of the rows' costs and stays within the budget, and each
resume carried over exactly what the files said had been spent.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tiersel.batch.journal import DoneLines, Resumed, _replay
from tiersel.sim.server import RunningServer, serve_in_subprocess

from .conftest import batch_line, body, read_rows, write_jsonl

LINES = 800
BUDGET = "1.10"  # not enough for every line: the budget runs out before the input does
KILLS_BEFORE = 150  # rows: the budget lasts for more lines than this
TIME_SCALE = 0.01  # the simulator's: one simulated second lasts 10 ms


def rows_on_disk(out: Path) -> int:
    try:
        with open(out, "rb") as f:
            return sum(1 for line in f if line.endswith(b"\n"))
    except FileNotFoundError:
        return 0


def spent_on_disk(out: Path) -> float:
    """What a resume must carry: the rows' costs plus the charges of lines without a row."""
    rows = read_rows(out) if out.exists() else []
    done = DoneLines()
    for r in rows:
        assert done.add(r["line"]), f"line {r['line']} has two rows"
    resumed = Resumed(job="", run=0, done=done)
    _replay(Path(str(out) + ".journal"), resumed)
    return sum(r["cost_usd"] for r in rows) + resumed.lost_usd


@pytest.mark.slow
def test_sigkill_at_chosen_points_then_resume(tmp_path: Path) -> None:
    with serve_in_subprocess("peak", seed=5, time_scale=TIME_SCALE) as server:
        crash_and_resume(tmp_path, server)


def wait_until(what: str, ready: Callable[[], bool], job: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        assert job.poll() is None, f"the job ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within 60 s"
        time.sleep(0.005)


def crash_and_resume(tmp_path: Path, server: RunningServer) -> None:
    rng = random.Random(20261127)
    docs = [
        batch_line(f"id-{i}", body(i, max_tokens=80, text="q" * rng.randint(50, 600)))
        for i in range(LINES)
    ]
    src = write_jsonl(tmp_path / "in.jsonl", docs)
    out = tmp_path / "out.jsonl"
    args = [
        sys.executable,
        "-m",
        "tiersel",
        "batch",
        str(src),
        "--out",
        str(out),
        "--budget-usd",
        BUDGET,
        "--base-url",
        server.openai_base_url,
        "--concurrency",
        "16",
        "--json",
        "--resume",
        # The job reads time on the simulator's scale: its waits (a cooldown of 30 simulated
        # seconds) last what the simulator's do, not 100 times longer on a loaded machine.
        "--sim-time-scale",
        str(TIME_SCALE),
    ]
    # Kill points, in rows on disk: all before the budget runs out (after that lines end
    # budget_exhausted without a request, and the gate could not keep the job alive).
    kills = sorted(rng.sample(range(10, KILLS_BEFORE), 3))
    carried: list[tuple[float, float]] = []
    done_after_kill: list[set[int]] = []
    for at in kills:
        job = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            server.release()
            wait_until(f"{at} rows", lambda at=at: rows_on_disk(out) >= at, job)
            server.hold()
            wait_until("a held request", lambda: server.stats()["held"] > 0, job)
            job.send_signal(signal.SIGKILL)
            job.wait(timeout=10)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
        assert job.returncode == -signal.SIGKILL, job.stderr.read() if job.stderr else ""
        carried.append((spent_on_disk(out), _last_header(out)["carried_usd"]))
        done_after_kill.append({r["line"] for r in read_rows(out)})
    server.release()
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    summary = json.loads(done.stdout)
    rows = read_rows(out)
    ids = [r["custom_id"] for r in rows]
    assert sorted(ids) == sorted(f"id-{i}" for i in range(LINES))  # each exactly once
    total = sum(r["cost_usd"] for r in rows)
    assert abs(summary["spent_usd"] - total) < 1e-9
    assert total <= float(BUDGET) + 1e-9
    assert summary["run"] == len(kills) + 1 and summary["complete"]
    # A run carries in exactly what the files showed when the run before it was killed.
    headers = _headers(out)
    assert [h["run"] for h in headers] == list(range(1, len(kills) + 2))
    on_disk_after_kill = [spent for spent, _ in carried]
    assert all(
        abs(h["carried_usd"] - s) < 1e-9
        for h, s in zip(headers[1:], on_disk_after_kill, strict=True)
    )
    # No line whose row was on disk at a kill was sent again by a later run.
    for line, run in _reservations(out):
        for killed, done in enumerate(done_after_kill, start=1):
            assert not (run > killed and line in done), (line, run)
    # Requests were in flight at some kill: their reservations were charged, unconfirmed.
    assert summary["unconfirmed_usd"] > 0
    assert summary["calls_ok"] > 0 and summary["calls_budget_exhausted"] > 0


def _headers(out: Path) -> list[dict[str, object]]:
    with open(str(out) + ".journal", "rb") as f:
        return [json.loads(line) for line in f if line.startswith(b'{"op": "job"')]


def _last_header(out: Path) -> dict[str, float]:
    return _headers(out)[-1]  # type: ignore[return-value]


def _reservations(out: Path) -> list[tuple[int, int]]:
    """(line, run) of every attempt the journal shows (attempt ids are job:line:run#n)."""
    found = []
    with open(str(out) + ".journal", "rb") as f:
        for raw in f:
            rec = json.loads(raw)
            if rec["op"] == "r":
                found.append((rec["l"], int(rec["a"].split("#")[0].rsplit(":", 1)[1])))
    return found
