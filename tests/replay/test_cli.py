"""`tiersel simulate` as a user runs it: its output and its exit codes. One test runs it in a real
subprocess; the others run the same `main` in this process (tests/cli.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import run_cli
from tiersel.cli import main
from tiersel.replay.baselines import POLICY_NAMES


def simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("simulate", *args)


def simulate_in_a_subprocess(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tiersel", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("traces") / "small.csv"
    rows = ["timestamp_s,input_tokens,output_tokens,deadline_s"]
    for i in range(240):
        deadline = "" if i % 3 else "8"
        rows.append(f"{i * 0.5},{400 + 37 * (i % 11)},{20 + 13 * (i % 7)},{deadline}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def flapping_json(small_trace: Path) -> subprocess.CompletedProcess[str]:
    """`simulate --json` of the small trace under ``flapping`` (read by two tests)."""
    return simulate("--trace", str(small_trace), "--scenario", "flapping", "--json")


def test_json_has_one_object_per_policy(flapping_json: subprocess.CompletedProcess[str]) -> None:
    done = flapping_json
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [p["policy"] for p in doc["policies"]] == list(POLICY_NAMES)
    assert doc["calls"] == 240 and doc["scenario"] == "flapping" and doc["trace"] == "small"
    for p in doc["policies"]:
        assert 0.0 <= p["attainment"] <= 1.0
        assert p["cost_usd"] > 0
        assert set(p["tier_mix"]) <= {"standard", "priority", "fast"}
        assert p["latency_p50_s"] <= p["latency_p99_s"]
        assert p["attempts_per_call"] >= 1.0 or p["policy"] == "oracle"
    by_name = {p["policy"]: p for p in doc["policies"]}
    assert by_name["always-priority"]["tier_mix"] == {"priority": 1.0}
    # A third of the calls carry their own 8 s deadline; the mix fills in the rest.
    classes = by_name["tiersel"]["attainment_by_class"]
    assert "trace" in classes and "interactive" in classes and "background" in classes


def test_table_lists_the_chosen_policies_in_order(
    small_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "simulate",
            "--trace",
            str(small_trace),
            "--policy",
            "oracle,tiersel",
            "--policy",
            "always-standard",
            "--mix",
            "none",
            "--speedup",
            "2",
            "--seed",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("policy"))
    rows = [line.split()[0] for line in lines[header + 1 :] if line.strip()]
    assert rows == ["oracle", "tiersel", "always-standard"]
    assert "speedup 2" in out and "seed 3" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "cheapest"], "--policy 'cheapest': unknown policy (known: tiersel,"),
        (["--mix", "a=2:1s"], "mix 'a=2:1s': class 'a=2:1s': share '2' must be in [0, 1]"),
        (["--speedup", "0"], "--speedup 0.0: must be a number > 0"),
        (["--scenario", "stormy"], "stormy: no such scenario"),
        (["--model", "gpt-9"], "unknown model 'gpt-9'"),
        (["--tenant-share", "2"], "--tenant-share 2.0: must be between 0 and 1"),
        (["--limit", "0"], "--limit 0: must be >= 1"),
        (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    small_trace: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["simulate", "--trace", str(small_trace), *args])
    except SystemExit as exc:  # argparse's own checks exit the same way
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert message in err


def test_bad_trace_row_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    path.write_text("timestamp_s,input_tokens,output_tokens\n0,10,5\n1,ten,5\n")
    done = simulate_in_a_subprocess("--trace", str(path))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"tiersel: error: {path}: line 3: input_tokens 'ten' is not a whole number"
    )
    done = simulate("--trace", str(tmp_path / "absent.csv"))
    assert done.returncode == 2 and "absent.csv: no such file" in done.stderr


def test_a_row_past_the_models_limits_is_refused_with_its_line(tmp_path: Path) -> None:
    # The provider refuses such a call; replayed, it was counted as a failure and sized the
    # provider's pools for itself (1,948,439 replicas for one 10^11-token prompt).
    path = tmp_path / "huge.csv"
    path.write_text("timestamp_s,input_tokens,output_tokens\n0,10,5\n1,10,200000\n")
    done = simulate("--trace", str(path))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"tiersel: error: {path}: line 3: 200,000 output tokens: kimi-k3 writes at most 131,072"
        " tokens (the price table's max_output_tokens)"
    )
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,2000000,5\n")
    done = simulate("--trace", str(path))
    assert done.returncode == 2 and f"{path}: line 2: 2,000,000 input tokens" in done.stderr


def test_a_router_id_is_no_model_to_simulate() -> None:
    # It ran kimi-k3 with every tier, saying "model kimi-k3", as if the id had been honoured.
    done = simulate("--trace", "azure-code", "--model", "accounts/fireworks/routers/kimi-k3-fast")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (
        "tiersel: error: --model accounts/fireworks/routers/kimi-k3-fast: that id names"
        " kimi-k3's fast tier, but the policies compared choose the tiers: give the model,"
        " --model kimi-k3"
    )


def test_json_reports_each_predicting_policys_calibration(
    small_trace: Path, flapping_json: subprocess.CompletedProcess[str]
) -> None:
    """policies[].calibration: the ECE and bins of predicted P(success) against success within
    the deadline, for every policy that predicts (the oracle predicts nothing)."""
    done = flapping_json
    assert done.returncode == 0, done.stderr
    for p in json.loads(done.stdout)["policies"]:
        c = p["calibration"]
        if p["policy"] == "oracle":
            assert c is None
            continue
        assert 0.0 <= c["ece"] <= 1.0
        bins = c["bins"]
        assert sum(b["calls"] for b in bins) == p["calls"]  # every call here was sent
        for b in bins:
            assert b["lo"] < b["hi"] and b["lo"] <= b["predicted"] <= b["hi"]
            assert 0.0 <= b["observed"] <= 1.0
        # The ECE is the calls-weighted gap of its bins.
        gap = sum(b["calls"] * abs(b["predicted"] - b["observed"]) for b in bins)
        assert c["ece"] == pytest.approx(gap / p["calls"])
    text = simulate("--trace", str(small_trace), "--scenario", "flapping").stdout
    assert " ECE " in text
