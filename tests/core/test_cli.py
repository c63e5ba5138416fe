"""`tiersel prices` and `tiersel explain`, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import run_cli
from tiersel.cli import main
from tiersel.pricing import load_pricing

TIERSEL = str(Path(sys.executable).with_name("tiersel"))
run = run_cli  # the console script's `main`, in this process (test_the_console_script_runs)


def test_prices_table_and_json() -> None:
    out = run("prices", "--model", "fireworks_ai/kimi-latest")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "USD per 1M tokens" in lines[0] and "litellm 1.110.2" in lines[0]
    assert lines[1] == "model:      kimi-k3 (current)"
    assert "kimi-latest" in lines[2] and "accounts/fireworks/routers/kimi-k3-fast" in lines[2]
    rows = {line.split()[1]: line.split() for line in lines if line.startswith("kimi-k3 ")}
    assert rows["priority"][2:6] == ["3.75", "0.375", "18.75", "1.25x"]
    assert rows["fast"][5:7] == ["1.5x", "model=accounts/fireworks/routers/kimi-k3-fast"]
    assert rows["spot"][-1] == "(opt-in)"
    doc = json.loads(run("prices", "--json").stdout)
    tiers = {(r["model"], r["tier"]) for r in doc["prices"]}
    assert ("kimi-k3", "fast") in tiers and ("glm-5p3", "priority") in tiers
    assert doc["as_of"] == load_pricing().as_of


def test_prices_lists_current_models_and_all_with_their_status() -> None:
    table = load_pricing()
    current = json.loads(run("prices", "--json").stdout)
    everything = json.loads(run("prices", "--all", "--json").stdout)
    assert {m["status"] for m in current["models"]} == {"current"}
    assert len(current["models"]) == current["catalogue"]["current"] >= 40
    assert len(everything["models"]) == len(table.models) >= 250
    statuses = {m["model"]: m for m in everything["models"]}
    assert statuses["kimi-k2p6"]["status"] == "retired"
    assert statuses["kimi-k2p6"]["deprecation_date"] == "2026-09-25"
    assert statuses["glm-5p2"]["successor"] == "glm-5p3"
    assert statuses["llama-v2-70b-chat"]["status"] == "legacy"
    text = run("prices").stdout.splitlines()
    assert "current shown (--all for every model)" in text[0]
    assert not any(line.startswith("kimi-k2p6 ") for line in text)
    assert any(line.startswith("kimi-k2p6 ") for line in run("prices", "--all").stdout.splitlines())


def test_explain_prints_the_decision_and_its_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "explain",
            "--model",
            "kimi-k3",
            "--input-tokens",
            "2000",
            "--max-tokens",
            "300",
            "--min-tps",
            "100",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "tier:               fast" in out
    assert "accounts/fireworks/routers/kimi-k3-fast" in out
    assert "standard: rejected: expected 50 output tokens/s is below min_output_tps 100" in out
    assert "worst case counts:  2000 input tokens (--input-tokens) and all 300" in out


def test_explain_says_which_prompt_bound_the_worst_case_counts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["explain", "--model", "kimi-k3", "--input-tokens", "2000", "--max-tokens", "200"]
    assert main([*argv, "--tiers", "standard"]) == 0
    estimate = capsys.readouterr().out
    assert main([*argv, "--tiers", "standard", "--max-input-tokens", "6000"]) == 0
    bound = capsys.readouterr().out
    assert "worst case counts:  6000 input tokens (--max-input-tokens)" in bound
    # kimi-k3 standard: $3 / M input, $15 / M output.
    assert "(worst case $0.009000)" in estimate and "(worst case $0.021000)" in bound


def test_explain_json_has_the_contract_fields() -> None:
    out = run(
        "explain",
        "--model",
        "kimi-k3",
        "--input-tokens",
        "2000",
        "--cached-input-tokens",
        "500",
        "--max-tokens",
        "300",
        "--deadline",
        "30",
        "--reliability",
        "0.9",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert {
        "tier",
        "model",
        "service_tier",
        "estimated_cost_usd",
        "p_success",
        "plan",
        "reasons",
    } <= set(doc)
    assert doc["tier"] == "standard" and doc["service_tier"] is None


def test_what_if_shed_rate_moves_the_choice() -> None:
    base = [
        "explain",
        "--model",
        "kimi-k3",
        "--input-tokens",
        "2000",
        "--max-tokens",
        "300",
        "--deadline",
        "30",
        "--reliability",
        "0.97",
        "--json",
    ]
    calm = json.loads(run(*base).stdout)
    shedding = json.loads(
        run(*base, "--shed-rate", "standard=0.5", "--shed-rate", "priority=0.01").stdout
    )
    assert calm["plan"][0]["tier"] == "standard"
    assert shedding["tier"] != "standard" or len(shedding["plan"]) > 1
    # Standard alone no longer reaches 0.97: the schedule ends on a dearer tier.
    assert shedding["plan"][-1]["tier"] != "standard"
    assert shedding["p_success"] >= 0.97


def test_no_feasible_tier_exits_3_with_reasons() -> None:
    args = [
        "explain",
        "--model",
        "gpt-oss-20b",
        "--input-tokens",
        "100",
        "--max-tokens",
        "50",
        "--tiers",
        "fast",
    ]
    out = run(*args)
    assert out.returncode == 3
    assert "fast: rejected: the model does not offer this tier" in out.stdout
    doc = json.loads(run(*args, "--json").stdout)
    assert doc["feasible"] is False and doc["reasons"][0]["code"] == "not_offered"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--reliability", "1.5"], "--reliability 1.5: must be less than or equal to 1"),
        (["--deadline", "nan"], "--deadline nan: must be a finite number"),
        (["--deadline", "-5"], "--deadline -5: must be greater than or equal to 0.001"),
        (["--deadline", "1e-300"], "--deadline 1e-300: must be greater than or equal to 0.001"),
        (["--deadline", "5", "--max-ttft", "9"], "--max-ttft (9.0) cannot exceed --deadline (5.0)"),
        (["--shed-rate", "standard"], "expected TIER=RATE"),
        (["--shed-rate", "turbo=0.1"], "unknown tier 'turbo'"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--max-tokens", "ten"], "invalid int value"),
        (
            ["--max-tokens", "1" + "0" * 320],
            "--max-tokens must be at most 9007199254740992 (2**53), got a 321-digit number",
        ),
        (["--input-tokens", "1" + "0" * 320], "--input-tokens must be at most 9007199254740992"),
        (["--cached-input-tokens", str(2**53 + 1)], "--cached-input-tokens must be at most"),
        (["--expected-output-tokens", "1" + "0" * 400], "--expected-output-tokens must be at"),
        (
            ["--tiers", "bogus"],
            "--tiers: unknown tier 'bogus' (known: standard, priority, fast, fast_us, flex,",
        ),
        (["--tiers", "standrd,priority"], "--tiers: unknown tier 'standrd' (known: standard"),
        (["--max-input-tokens", "99"], "--max-input-tokens (99) cannot be below --input-tokens"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: list[str], needle: str) -> None:
    base = {"--model": "kimi-k3", "--input-tokens": "100", "--max-tokens": "10"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = ["explain", *[x for kv in base.items() for x in kv]]
    if args[0] == "--shed-rate":
        argv += args
    out = run(*argv)
    assert out.returncode == 2, out.stdout + out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and needle in out.stderr, out.stderr


def test_a_user_price_table(tmp_path: Path) -> None:
    table = tmp_path / "mine.yaml"
    table.write_text(
        'provider: mine\nsource: test\nas_of: "2026-01"\ntiers:\n  standard: {}\nmodels:\n'
        "  m: {standard: {input: 1, output: 2}}\n"
    )
    out = run("prices", "--pricing", str(table), "--json")
    assert json.loads(out.stdout)["prices"][0]["output_usd_per_1m"] == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(table.read_text().replace("input: 1", "input: -1"))
    out = run("prices", "--pricing", str(bad))
    assert out.returncode == 2 and "bad.yaml: models.m.standard.input" in out.stderr


def test_the_console_script_runs() -> None:
    out = subprocess.run(
        [TIERSEL, "prices", "--model", "fireworks_ai/kimi-latest"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == run("prices", "--model", "fireworks_ai/kimi-latest").stdout


def test_the_module_runs_too() -> None:
    env = {**os.environ}
    out = subprocess.run(
        [sys.executable, "-m", "tiersel", "prices", "--model", "gpt-oss-20b"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0 and "gpt-oss-20b" in out.stdout


def test_explain_json_never_holds_infinity(tmp_path: Path) -> None:
    """A price so high that a call's cost overflows a float is refused with the table's file and
    key, never printed as `Infinity` (which is not JSON)."""
    table = tmp_path / "dear.yaml"
    bundled = (Path(__file__).resolve().parents[2] / "pricing" / "fireworks.yaml").read_text()
    at = bundled.index("\n  kimi-k3:\n")
    standard = "standard: {input: 3, cached_input: 0.3, output: 15}"
    dear = "standard: {input: 3, cached_input: 0.3, output: 1.7e+308}"
    table.write_text(bundled[:at] + bundled[at:].replace(standard, dear, 1))
    args = ["--model", "kimi-k3", "--input-tokens", "100", "--max-tokens", "10000000", "--json"]
    out = run("explain", "--pricing", str(table), *args)
    assert out.returncode == 2, out.stdout
    assert out.stderr == (
        f"tiersel: error: {table}: models.kimi-k3.standard.output: input should be less than"
        " or equal to 100000 (got 1.7e+308)\n"
    )
    assert "Infinity" not in out.stdout


def test_explain_json_refuses_to_print_a_non_finite_number(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tiersel.decision import Decision

    real = Decision.to_dict

    def overflowing(self: Decision) -> dict[str, object]:
        return {**real(self), "estimated_cost_usd": float("inf")}

    monkeypatch.setattr(Decision, "to_dict", overflowing)
    code = main(
        ["explain", "--model", "kimi-k3", "--input-tokens", "9", "--max-tokens", "9", "--json"]
    )
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err == (
        "tiersel: error: --json: estimated_cost_usd is not a finite number; the call or the"
        " price table is out of range\n"
    )


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("fireworks_ai/accounts/fireworks/models/kimi-k3", "accounts/fireworks/models/kimi-k3"),
        ("fireworks_ai/kimi-k3", "accounts/fireworks/models/kimi-k3"),
        ("fireworks_ai/kimi-latest", "accounts/fireworks/models/kimi-k3"),
        ("accounts/fireworks/models/kimi-k2p5", "accounts/fireworks/models/kimi-k2p5"),
        ("accounts/fireworks/routers/kimi-k2p6-turbo", "accounts/fireworks/models/kimi-k2p6"),
    ],
)
def test_explain_resolves_every_id_a_user_may_write(given: str, sent: str) -> None:
    out = run("explain", "--model", given, "--input-tokens", "2000", "--max-tokens", "200")
    assert out.returncode == 0, out.stderr
    assert f"model:              {sent}\n" in out.stdout
    if "k2p6" in given:  # retired: said once, as one line each, naming what is sent
        assert (
            "tiersel: warning: 'accounts/fireworks/routers/kimi-k2p6-turbo' (fast of" in out.stderr
        )


def test_explain_offers_spot_and_flex_only_where_the_table_prices_them() -> None:
    args = ("explain", "--model", "kimi-k3", "--input-tokens", "2000", "--max-tokens", "200")
    plain = run(*args)
    assert "spot: rejected: opt-in: chosen only when the allowed tiers name it" in plain.stdout
    assert "flex" not in plain.stdout  # not priced for kimi-k3: not offered, not mentioned
    named = run(*args, "--tiers", "flex,spot")
    assert named.returncode == 0 and "tier:               spot\n" in named.stdout
    assert "flex: rejected: the model does not offer this tier" in named.stdout
    only_flex = run(*args, "--tiers", "flex")
    assert only_flex.returncode == 3
    assert (
        "flex: rejected: the model does not offer this tier" in only_flex.stdout + only_flex.stderr
    )


def test_prices_all_json_dates_every_model_and_router_the_map_dates() -> None:
    from importlib import metadata

    import yaml

    overlay = Path(__file__).resolve().parents[2] / "pricing" / "fireworks_overlay.yaml"
    pin = yaml.safe_load(overlay.read_text())["map"]
    dist = metadata.distribution(pin["package"])
    price_map = json.loads(Path(str(dist.locate_file(pin["file"]))).read_text())
    dated = {
        k.removeprefix("fireworks_ai/"): v["deprecation_date"]
        for k, v in price_map.items()
        if k.startswith("fireworks_ai/accounts/") and v.get("mode") == "chat"
        if "deprecation_date" in v
    }
    doc = json.loads(run("prices", "--all", "--json").stdout)
    listed: dict[str, str | None] = {}
    for m in doc["models"]:
        listed[m["model_id"]] = m["deprecation_date"]
        for t in m["tiers"] + m["retired_tiers"]:
            if t["model_id"] != m["model_id"]:
                listed[t["model_id"]] = t["deprecation_date"]
    assert len(dated) >= 20
    assert {k: listed.get(k) for k in dated} == dated


@pytest.mark.parametrize(
    ("given", "tier", "sent"),
    [
        ("kimi-k3-us", "us", "accounts/fireworks/routers/kimi-k3-us"),
        (
            "accounts/fireworks/models/kimi-k3-spot",
            "spot",
            "accounts/fireworks/routers/kimi-k3-spot",
        ),
        (
            "accounts/fireworks/routers/kimi-k3-fast",
            "fast",
            "accounts/fireworks/routers/kimi-k3-fast",
        ),
    ],
)
def test_explain_of_a_router_id_decides_for_its_tier_as_send_does(
    given: str, tier: str, sent: str
) -> None:
    args = ("explain", "--model", given, "--input-tokens", "2000", "--max-tokens", "200")
    out = run(*args)
    assert out.returncode == 0, out.stderr
    assert (
        f"tier:               {tier}\n" in out.stdout
        and f"model:              {sent}\n" in out.stdout
    )
    clash = run(*args, "--tiers", "standard")
    assert clash.returncode == 2
    assert f"the model id names the {tier} tier, but the allowed tiers are standard" in clash.stderr


def test_a_retired_us_only_router_is_refused_naming_its_successor() -> None:
    out = run("explain", "--model", "accounts/fireworks/routers/glm-5p3-flash-us",
              "--input-tokens", "10", "--max-tokens", "10")  # fmt: skip
    assert out.returncode == 2
    assert "(us of glm-5p3-flash) was retired on 2026-11-07" in out.stderr
    assert "its successor is 'deepseek-v4p1-flash-1017-us'" in out.stderr
    # A retired fast router still resolves (the map names its model as successor), by slug too.
    turbo = run(
        "explain", "--model", "kimi-k2p6-turbo", "--input-tokens", "10", "--max-tokens", "10"
    )
    assert (
        turbo.returncode == 0 and "'kimi-k2p6-turbo' (fast of kimi-k2p6) is retired" in turbo.stderr
    )


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--max-tokens", "200000"], "--max-tokens 200,000 is above the model's limit: kimi-k3"),
        (["--input-tokens", "2000000"], "--input-tokens 2,000,000 is above the model's limit"),
    ],
)
def test_explain_refuses_token_counts_above_the_model_s_limits(
    capsys: pytest.CaptureFixture[str], flags: list[str], said: str
) -> None:
    # kimi-k3 writes at most 131,072 tokens and reads at most 1,048,576: a call beyond either
    # is one the provider refuses, so explain names the flag rather than price it.
    args = ["explain", "--model", "kimi-k3", "--input-tokens", "2000", "--max-tokens", "300"]
    assert main([*args, *flags]) == 2
    captured = capsys.readouterr()
    assert said in captured.err and captured.out == ""
    assert main([*args, "--max-tokens", "131072"]) == 0  # at the limit: priced
