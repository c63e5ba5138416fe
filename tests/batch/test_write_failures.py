"""A write to OUT or its journal fails (disk full, file too large): the job stops at once, says
which file and why in one line, and leaves a journal that ``--resume`` finishes from exactly."""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

import tiersel.batch.journal as journal
from tiersel.batch import JobWriteError, run_batch
from tiersel.batch.journal import DoneLines, Resumed, _replay, _truncate_partial
from tiersel.clock import FakeClock
from tiersel.sim import AsyncSimTransport

from .conftest import CappedLedger, batch_line, body, open_new_job, read_rows, write_jsonl

TIERSEL = [sys.executable, "-m", "tiersel"]
LINES = 400
CONCURRENCY = 8


def spent_on_disk(out: Path) -> float:
    """What a resume must carry: the rows' costs plus the charges of lines without a row."""
    for path in (out, Path(f"{out}.journal")):
        _truncate_partial(path)  # a write cut short by the failure, as a resume first does
    rows = read_rows(out)
    done = DoneLines()
    for r in rows:
        assert done.add(r["line"]), f"line {r['line']} has two rows"
    resumed = Resumed(job="", run=0, done=done)
    _replay(Path(f"{out}.journal"), resumed)
    return sum(r["cost_usd"] for r in rows) + resumed.lost_usd


def headers(out: Path) -> list[dict[str, Any]]:
    with open(f"{out}.journal", "rb") as f:
        return [json.loads(line) for line in f if line.startswith(b'{"op": "job"')]


def run_sim(src: Path, out: Path, **options: Any) -> Any:
    clock = FakeClock()
    return run_batch(
        src,
        out,
        budget_usd=5.0,
        concurrency=CONCURRENCY,
        transport=AsyncSimTransport(scenario="calm", clock=clock),
        clock=clock,
        base_url="http://sim/inference/v1",
        api_key="",
        progress=False,
        **options,
    )


def test_a_full_disk_stops_the_job_at_once_and_resume_finishes_it_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    src = write_jsonl(
        tmp_path / "in.jsonl", [batch_line(f"q-{i}", body(i, max_tokens=50)) for i in range(LINES)]
    )
    out = tmp_path / "out.jsonl"
    real = journal._write_all
    writes = {"n": 0, "reserves_after": 0}
    full = {"on": False}

    def disk_fills_up(fd: int, data: bytes) -> None:  # full from the 20th write on
        writes["n"] += 1
        if writes["n"] > 20:
            full["on"] = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    class Counting(CappedLedger):
        def reserve(self, *args: Any, **kwargs: Any) -> Any:
            if full["on"]:
                writes["reserves_after"] += 1
            return super().reserve(*args, **kwargs)

    monkeypatch.setattr(journal, "_write_all", disk_fills_up)
    caplog.set_level(logging.ERROR, logger="asyncio")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(JobWriteError) as raised:
            run_sim(src, out, ledger=Counting(5.0))
        gc.collect()  # a task whose exception was never retrieved is reported when collected
    err = raised.value
    assert re.fullmatch(
        rf"cannot write {re.escape(str(out))}(\.journal)?: \[Errno 28\] No space left on device",
        str(err),
    ), str(err)
    assert isinstance(err.cause, OSError) and err.cause.errno == errno.ENOSPC
    assert err.path in (out, Path(f"{out}.journal"))
    # No line was started after the disk filled up: only calls already deciding may reserve.
    assert writes["reserves_after"] <= CONCURRENCY, writes
    assert writes["n"] == 21  # one failed write, never retried
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [
        str(w.message) for w in caught
    ]
    assert len(read_rows(out)) < LINES
    carried = spent_on_disk(out)

    monkeypatch.setattr(journal, "_write_all", real)  # space was freed
    summary = run_sim(src, out, resume=True)
    rows = read_rows(out)
    assert sorted(r["custom_id"] for r in rows) == sorted(f"q-{i}" for i in range(LINES))
    assert summary.complete and summary.run == 2
    assert headers(out)[-1]["carried_usd"] == pytest.approx(carried, abs=1e-12)
    assert summary.spent_usd == pytest.approx(sum(r["cost_usd"] for r in rows), abs=1e-12)
    assert summary.spent_usd <= 5.0


def _file_size_limit(limit: int) -> None:
    # A write past the limit then fails with EFBIG instead of killing the process (SIGXFSZ).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_cli_a_write_that_fails_mid_job_is_one_line_and_exit_6_then_resume_completes(
    tmp_path: Path,
) -> None:
    src = write_jsonl(
        tmp_path / "in.jsonl", [batch_line(f"q-{i}", body(i, max_tokens=40)) for i in range(600)]
    )
    out = tmp_path / "out.jsonl"
    args = [*TIERSEL, "batch", str(src), "--out", str(out), "--budget-usd", "5", "--sim", "calm"]
    args += ["--concurrency", "16", "--json"]
    failed = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: _file_size_limit(60_000),
    )
    assert failed.returncode == 6, failed.stderr
    assert failed.stdout == ""
    assert re.fullmatch(
        rf"tiersel: error: cannot write {re.escape(str(out))}(\.journal)?: \[Errno 27\] File too"
        r" large; the rows written so far are kept: make room, then rerun with --resume\n",
        failed.stderr,
    ), failed.stderr
    carried = spent_on_disk(out)
    assert 0 < len(read_rows(out)) < 600  # after spent_on_disk cut a half-written last row

    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    rows = read_rows(out)
    assert sorted(r["custom_id"] for r in rows) == sorted(f"q-{i}" for i in range(600))
    assert headers(out)[-1]["carried_usd"] == pytest.approx(carried, abs=1e-12)
    assert summary["spent_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows), abs=1e-12)
    assert summary["run"] == 2 and summary["complete"]


def test_cli_a_full_device_under_out_names_out(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [body(i, max_tokens=10) for i in range(50)])
    out = tmp_path / "out.jsonl"
    out.symlink_to("/dev/full")  # every write to it fails with ENOSPC, as on a full disk
    done = subprocess.run(
        [*TIERSEL, "batch", str(src), "--out", str(out), "--budget-usd", "1", "--sim", "calm"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (6, ""), done.stderr
    assert done.stderr == (
        f"tiersel: error: cannot write {out}: [Errno 28] No space left on device; the rows"
        " written so far are kept: make room, then rerun with --resume\n"
    )


def test_a_journal_that_cannot_take_its_first_record_leaves_nothing_locked(
    tmp_path: Path,
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [body(1)])
    out = tmp_path / "out.jsonl"
    Path(f"{out}.journal").symlink_to("/dev/full")
    for _ in range(2):  # the second attempt finds OUT unlocked: the first let go of its files
        with pytest.raises(
            JobWriteError, match=r"cannot write .*out\.jsonl\.journal: \[Errno 28\]"
        ):
            open_new_job(src, out)
