"""``tiersel batch`` as a user runs it: exit codes, the summary, the lock between two jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiersel.cli import main

from .conftest import batch_line, body, open_new_job, read_rows, write_jsonl

TIERSEL = [sys.executable, "-m", "tiersel"]


def lines(n: int) -> list[dict[str, object]]:
    return [batch_line(f"q-{i}", body(i, max_tokens=40)) for i in range(n)]


def test_json_summary_and_exit_0_when_every_line_is_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", lines(30))
    out = tmp_path / "out.jsonl"
    code = main(
        ["batch", str(src), "--out", str(out), "--budget-usd", "1", "--sim", "calm", "--json"]
    )
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in (
        "budget_usd",
        "spent_usd",
        "calls_ok",
        "calls_failed",
        "calls_budget_exhausted",
        "calls_invalid",
        "by_tier",
    ):
        assert key in doc
    assert (doc["budget_usd"], doc["calls_ok"], doc["calls_invalid"], doc["complete"]) == (
        1.0,
        30,
        0,
        True,
    )
    assert doc["by_tier"]["standard"]["calls"] == 30
    assert doc["spent_usd"] == pytest.approx(sum(r["cost_usd"] for r in read_rows(out)))


def test_exit_1_when_lines_are_not_all_ok_and_the_summary_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [*lines(5), "{bad json", body(9, max_tokens=None)])
    out = tmp_path / "out.jsonl"
    code = main(["batch", str(src), "--out", str(out), "--budget-usd", "1", "--sim", "calm"])
    text = capsys.readouterr().out
    assert code == 1
    assert "ok 5" in text and "invalid 2" in text and "spent $" in text
    # A default output cap turns the capless line into a request on a new job.
    code = main(
        [
            "batch",
            str(src),
            "--out",
            str(tmp_path / "o2.jsonl"),
            "--budget-usd",
            "1",
            "--sim",
            "calm",
            "--default-max-tokens",
            "16",
            "--json",
        ]
    )
    assert code == 1 and json.loads(capsys.readouterr().out)["calls_invalid"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget-usd", "-1"], "--budget-usd must be a finite amount >= 0"),
        (["--budget-usd", "nan"], "--budget-usd must be a finite amount >= 0"),
        (["--budget-usd", "1", "--concurrency", "0"], "--concurrency must be >= 1"),
        (["--budget-usd", "1", "--sim-time-scale", "0.1"], "--sim-time-scale needs --sim, or"),
        (
            ["--budget-usd", "1", "--reliability", "1.5"],
            "--reliability 1.5: must be less than or equal to 1",
        ),
        (["--budget-usd", "1", "--sim", "no-such-scenario"], "no-such-scenario"),
    ],
)
def test_exit_2_for_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", lines(2))
    code = main(["batch", str(src), "--out", str(tmp_path / "out.jsonl"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_exit_2_for_a_missing_input_a_used_out_or_no_provider(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.jsonl"
    assert (
        main(
            [
                "batch",
                str(tmp_path / "nope.jsonl"),
                "--out",
                str(out),
                "--budget-usd",
                "1",
                "--sim",
                "calm",
            ]
        )
        == 2
    )
    assert "nope.jsonl: no such input file" in capsys.readouterr().err
    args = ["--out", str(out), "--budget-usd", "1", "--sim", "calm"]
    assert main(["batch", str(tmp_path), *args]) == 2
    assert f"{tmp_path}: is a folder, not an input file" in capsys.readouterr().err
    src = write_jsonl(tmp_path / "in.jsonl", lines(2))
    assert main(["batch", str(src), "--out", str(out), "--budget-usd", "1", "--sim", "calm"]) == 0
    assert main(["batch", str(src), "--out", str(out), "--budget-usd", "1", "--sim", "calm"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    monkeypatch.delenv("FIREWORKS_API_KEY", raising=False)
    assert main(["batch", str(src), "--out", str(tmp_path / "o2.jsonl"), "--budget-usd", "1"]) == 2
    assert "set FIREWORKS_API_KEY" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "batch",
                str(src),
                "--out",
                str(out),
                "--budget-usd",
                "1",
                "--sim",
                "calm",
                "--base-url",
                "http://x",
            ]
        )
    assert exc.value.code == 2


def test_exit_2_for_a_base_url_that_is_not_http_or_would_send_the_key_in_clear_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", lines(2))
    out = tmp_path / "out.jsonl"
    monkeypatch.setenv("FIREWORKS_API_KEY", "sk-test")
    for url, message in (
        ("ftp://x", "--base-url: base_url must be an http:// or https:// URL"),
        ("http://192.0.2.2:18999/inference/v1", "the API key would go in clear text"),
    ):
        code = main(["batch", str(src), "--out", str(out), "--budget-usd", "1", "--base-url", url])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == [src]  # refused before OUT or its journal was made


def test_exit_2_for_an_out_that_is_the_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", lines(2))
    before = src.read_bytes()
    code = main(["batch", str(src), "--out", str(src), "--budget-usd", "1", "--sim", "calm"])
    assert code == 2 and "is the input file" in capsys.readouterr().err
    assert src.read_bytes() == before and list(tmp_path.iterdir()) == [src]


def test_exit_4_while_another_job_holds_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", lines(2))
    out = tmp_path / "out.jsonl"
    held = open_new_job(src, out)
    try:
        code = main(
            ["batch", str(src), "--out", str(out), "--budget-usd", "1", "--sim", "calm", "--resume"]
        )
    finally:
        held.close()
    assert code == 4
    assert (
        f"being written by another tiersel batch job (pid {os.getpid()})" in capsys.readouterr().err
    )


def test_two_processes_on_one_out_and_the_lock_dies_with_its_holder(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", lines(40))
    out = tmp_path / "out.jsonl"
    # A slow job: real (scaled) time, one call at a time.
    args = [str(src), "--out", str(out), "--budget-usd", "1", "--sim", "calm", "--concurrency", "1"]
    first = subprocess.Popen(
        [*TIERSEL, "batch", *args, "--sim-time-scale", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        lock = Path(str(out) + ".lock")
        deadline = time.monotonic() + 30
        while not (
            lock.exists()
            and lock.read_text() == str(first.pid)
            and out.exists()
            and out.stat().st_size
        ):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.02)
        second = subprocess.run(
            [*TIERSEL, "batch", *args, "--resume"], capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 4
        assert second.stderr.strip() == (
            f"tiersel: error: {out} is being written by another tiersel batch job"
            f" (pid {first.pid}); wait for it to finish, or choose another --out"
        )
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # The kernel dropped the dead job's lock: the job resumes and finishes.
    third = subprocess.run(
        [*TIERSEL, "batch", *args, "--resume", "--json"], capture_output=True, text=True, timeout=60
    )
    assert third.returncode == 0, third.stderr
    rows = read_rows(out)
    assert sorted(r["custom_id"] for r in rows) == sorted(f"q-{i}" for i in range(40))
    assert json.loads(third.stdout)["run"] == 2


def test_over_real_http_against_the_simulator_server(tmp_path: Path) -> None:
    from tiersel.sim.server import serve_in_subprocess

    anthropic = {
        "model": "kimi-k3",
        "max_tokens": 24,
        "messages": [{"role": "user", "content": "hi"}],
    }
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [*lines(16), *(batch_line(f"a-{i}", anthropic, url="/v1/messages") for i in range(4))],
    )
    out = tmp_path / "out.jsonl"
    secret = "sk-test-do-not-leak-8f3a"
    env = {**os.environ, "FIREWORKS_API_KEY": secret}
    with serve_in_subprocess("calm", time_scale=0.01) as server:
        done = subprocess.run(
            [
                *TIERSEL,
                "batch",
                str(src),
                "--out",
                str(out),
                "--budget-usd",
                "1",
                "--json",
                "--base-url",
                server.openai_base_url,
                "--concurrency",
                "8",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        stats = server.stats()
    assert done.returncode == 0, done.stderr
    rows = {r["custom_id"]: r for r in read_rows(out)}
    assert len(rows) == 20 and all(r["status"] == "ok" for r in rows.values())
    assert rows["a-0"]["response"]["body"]["type"] == "message"  # an Anthropic answer
    assert rows["a-0"]["usage"]["completion_tokens"] == 24
    assert stats["hinted"] == 0 and stats["priority_with_router"] == 0
    assert sum(stats["by_status"].values()) >= 20
    for text in (done.stdout, done.stderr, out.read_text(), Path(f"{out}.journal").read_text()):
        assert secret not in text


@pytest.mark.parametrize(("flags", "carry_on"), [([], True), (["--strict"], False)])
def test_strict_lines_are_not_carried_on_at_best_effort(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], carry_on: bool
) -> None:
    # --strict: a line whose requirements no tier can meet is not sent, and one that can no
    # longer meet them after a failed attempt ends with its error (the engine's carry_on).
    import tiersel.batch.runner

    engines: list[bool] = []
    real = tiersel.batch.runner.Selector

    def watched(*args: object, **kwargs: object) -> object:
        selector = real(*args, **kwargs)  # type: ignore[arg-type]
        engines.append(selector.engine.carry_on)
        return selector

    monkeypatch.setattr(tiersel.batch.runner, "Selector", watched)
    src = write_jsonl(tmp_path / "in.jsonl", lines(3))
    out = tmp_path / "out.jsonl"
    args = ["batch", str(src), "--out", str(out), "--budget-usd", "1", "--sim", "calm", *flags]
    assert main(args) == 0
    assert engines == [carry_on]
    assert all(r["status"] == "ok" for r in read_rows(out))
