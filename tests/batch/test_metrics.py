"""``tiersel batch --metrics-port N``: Prometheus metrics served on loopback while the job runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.stores.conftest import free_port

from .conftest import batch_line, body, write_jsonl


def _scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            totals[s.name] = totals.get(s.name, 0.0) + s.value
    return totals


def test_a_job_serves_its_metrics_while_it_runs(tmp_path: Path) -> None:
    src = write_jsonl(
        tmp_path / "in.jsonl", [batch_line(f"q-{i}", body(i, max_tokens=40)) for i in range(300)]
    )
    out = tmp_path / "out.jsonl"
    port = free_port()
    job = subprocess.Popen(
        [
            sys.executable, "-m", "tiersel", "batch", str(src), "--out", str(out),
            "--budget-usd", "5", "--sim", "calm", "--sim-time-scale", "0.02",
            "--concurrency", "8", "--metrics-port", str(port), "--json", "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    seen: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 60
        while job.poll() is None and time.monotonic() < deadline:
            try:
                seen = _scrape(port)
            except httpx.TransportError:
                seen = {}
            if seen.get("tiersel_calls_total", 0) >= 20:
                break
            time.sleep(0.05)
        stdout, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == 0, stderr
    assert seen.get("tiersel_calls_total", 0) >= 20, seen
    assert seen["tiersel_spend_usd_total"] > 0
    assert 0 < seen["tiersel_budget_remaining_usd"] < 5
    assert seen["tiersel_decide_seconds_count"] >= seen["tiersel_calls_total"]
    summary = json.loads(stdout)
    assert summary["calls_ok"] == 300


def test_a_bad_metrics_port_is_refused_before_the_job_starts(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [batch_line("q-0", body(0, max_tokens=40))])
    done = subprocess.run(
        [sys.executable, "-m", "tiersel", "batch", str(src), "--out", str(tmp_path / "o.jsonl"),
         "--budget-usd", "1", "--sim", "calm", "--metrics-port", "70000"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--metrics-port must be a port number from 1 to 65535, got 70000" in done.stderr
    assert not (tmp_path / "o.jsonl").exists()
