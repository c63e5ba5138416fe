"""The bundled price table, loading errors, overlays and model-id resolution."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
import warnings
import zipfile
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

import tiersel
from tiersel import PricingError, UnknownModel
from tiersel.clock import FakeClock
from tiersel.errors import RetiredTier
from tiersel.pricing import Pricing, bundled_pricing_path, load_pricing

DATA = Path(__file__).resolve().parents[1] / "data"
ROOT = Path(__file__).resolve().parents[2]
MODELS = "accounts/fireworks/models/"
ROUTERS = "accounts/fireworks/routers/"
KEY = "fireworks_ai/"  # LiteLLM's provider prefix


@pytest.fixture(scope="module")
def pricing() -> Pricing:
    return load_pricing()


def _overlay() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "pricing" / "fireworks_overlay.yaml").read_text())
    return doc


@pytest.fixture(scope="module")
def price_map() -> dict[str, Any]:
    """LiteLLM's price map from the pinned litellm (a dev dependency), checked against its pin."""
    pin = _overlay()["map"]
    dist = metadata.distribution(pin["package"])
    assert dist.version == pin["version"], "install the pinned litellm: pip install -e '.[dev]'"
    data = Path(str(dist.locate_file(pin["file"]))).read_bytes()
    assert hashlib.sha256(data).hexdigest() == pin["sha256"]
    doc: dict[str, Any] = json.loads(data)
    return doc


def test_a_rebuild_from_the_pinned_map_and_the_overlay_is_the_committed_table() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "pricing" / "build_fireworks.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "up to date" in done.stdout


@pytest.mark.filterwarnings("ignore::tiersel.TierselWarning")  # retired ids
def test_the_table_agrees_with_the_map_wherever_both_price_a_model_and_tier(
    pricing: Pricing, price_map: dict[str, Any]
) -> None:
    corrected = set(_overlay()["corrections"])
    checked = 0
    for mp in pricing.models.values():
        if mp.name in corrected:
            continue
        for tier, tp in {**mp.tiers, **mp.retired_tiers}.items():
            entry = price_map[KEY + tp.model_id]
            sfx = "_priority" if tier.endswith("priority") else ""
            assert tp.input_per_1m == pytest.approx(entry[f"input_cost_per_token{sfx}"] * 1e6)
            assert tp.output_per_1m == pytest.approx(entry[f"output_cost_per_token{sfx}"] * 1e6)
            cached = entry.get(f"cache_read_input_token_cost{sfx}")
            want = cached * 1e6 if cached is not None else 0.5 * tp.input_per_1m
            assert tp.cached_input_per_1m == pytest.approx(want), (mp.name, tier)
            checked += 1
    # LiteLLM's short keys (fireworks_ai/kimi-k3, fireworks_ai/kimi-k3-fast) price what they name.
    for key, entry in price_map.items():
        if not key.startswith(KEY) or key.startswith(KEY + "accounts/"):
            continue
        if entry.get("mode") != "chat" or "input_cost_per_token" not in entry:
            continue
        try:
            mp, _ = pricing.resolve(key)
        except RetiredTier:
            continue  # a retired US-only router: its price is checked with its model above
        if mp.name in corrected:
            continue
        short = key[len(KEY) :]
        full = next(p + short for p in (MODELS, ROUTERS) if KEY + p + short in price_map)
        (tp,) = [
            tp
            for name, tp in {**mp.tiers, **mp.retired_tiers}.items()
            if tp.model_id == full and not name.endswith("priority")
        ]
        assert tp.input_per_1m == pytest.approx(entry["input_cost_per_token"] * 1e6), key
        checked += 1
    assert checked > 300


@pytest.mark.filterwarnings("ignore::tiersel.TierselWarning")  # retired ids
def test_every_chat_model_of_the_map_resolves_with_its_status_and_dates(
    pricing: Pricing, price_map: dict[str, Any]
) -> None:
    chat = {
        k: v
        for k, v in price_map.items()
        if k.startswith(KEY + "accounts/") and v.get("mode") == "chat"
    }
    assert len(pricing.models) >= 250
    for key, entry in chat.items():
        try:
            mp, tier = pricing.resolve(key)
        except RetiredTier as exc:
            # Refused, never sent as its model: a retired US-only router, dated by the map.
            assert pricing.tiers[exc.tier].opt_in and str(exc.date) == entry["deprecation_date"]
            continue
        assert mp.status in ("current", "legacy", "retired")
        if "deprecation_date" in entry and tier is None and mp.model_id == key[len(KEY) :]:
            assert str(mp.deprecation_date) == entry["deprecation_date"], key
    statuses = Counter(mp.status for mp in pricing.models.values())
    assert statuses["current"] >= 40 and statuses["legacy"] >= 150 and statuses["retired"] >= 10
    assert pricing.model("kimi-k3").status == "current"
    assert pricing.model("llama-v2-70b-chat").status == "legacy"
    assert pricing.built_from["version"] == _overlay()["map"]["version"]


@pytest.mark.parametrize(
    ("given", "model", "tier"),
    [
        ("kimi-k3", "kimi-k3", None),
        (MODELS + "kimi-k3", "kimi-k3", None),
        (KEY + MODELS + "kimi-k3", "kimi-k3", None),
        (KEY + "kimi-k3", "kimi-k3", None),
        (KEY + "kimi-latest", "kimi-k3", None),
        (MODELS + "kimi-k2p5", "kimi-k2p5", None),
        ("accounts/fireworks/routers/kimi-k3-fast", "kimi-k3", "fast"),
        (KEY + "kimi-k3-fast", "kimi-k3", "fast"),
        (MODELS + "kimi-k3-spot", "kimi-k3", "spot"),
        ("accounts/fireworks/routers/kimi-k3-us", "kimi-k3", "us"),
        # A retired router (and its first name) resolves to its model, the map's successor.
        ("accounts/fireworks/routers/kimi-k2p6-turbo", "kimi-k2p6", None),
        ("accounts/fireworks/routers/kimi-k2p6-fast", "kimi-k2p6", None),
    ],
)
@pytest.mark.filterwarnings("ignore::tiersel.TierselWarning")
def test_every_id_a_user_may_write_resolves(
    pricing: Pricing, given: str, model: str, tier: str | None
) -> None:
    mp, implied = pricing.resolve(given)
    assert (mp.name, implied) == (model, tier)


def test_a_retired_model_is_not_offered_where_a_current_one_is_close(pricing: Pricing) -> None:
    # 'kimi-k9' was answered 'closest: kimi-k3, kimi-k2p6, kimi-k2p5': kimi-k2p6 retired on
    # 2026-09-25 (helper-31).
    with pytest.raises(UnknownModel) as info:
        pricing.model("kimi-k9")
    assert "kimi-k3" in str(info.value) and "kimi-k2p6" not in str(info.value)


def test_an_unknown_id_names_the_closest_known_ids(pricing: Pricing) -> None:
    with pytest.raises(UnknownModel) as info:
        pricing.model("kimi-k3x")
    assert "closest: kimi-k3" in str(info.value)
    with pytest.raises(UnknownModel, match="no-such-model"):
        pricing.model("no-such-model")


def test_a_retired_model_warns_once_naming_its_successor() -> None:
    table = load_pricing()
    with pytest.warns(tiersel.TierselWarning, match="'glm-5p2' was retired on 2026-09-25; its su"):
        table.model("glm-5p2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table.model("glm-5p2")  # once


def test_a_retired_model_with_no_successor_and_its_retired_router_say_so() -> None:
    # kimi-k2p6's fast router is sent as kimi-k2p6, itself retired, which the table gives no
    # successor: the warnings said neither (a new user's probe read the router's as current).
    table = load_pricing()
    with pytest.warns(tiersel.TierselWarning) as seen:
        table.resolve("accounts/fireworks/routers/kimi-k2p6-fast")
        table.resolve("kimi-k2p6")
    said = [str(w.message) for w in seen]
    assert any(
        "it is sent as 'accounts/fireworks/models/kimi-k2p6', itself retired on 2026-09-25;"
        " the price table names no successor" in m
        for m in said
    ), said
    assert any(
        "model 'kimi-k2p6' was retired on 2026-09-25; the price table names no successor" in m
        for m in said
    ), said


def test_a_model_retires_on_its_deprecation_date(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEAD.replace('"2026-01"', '"2026-03-01"')
        + "  m1: {deprecation_date: 2026-04-01, successor: m2, standard: {input: 1, output: 1}}\n"
        + "  m2: {standard: {input: 1, output: 1}}\n",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        before = load_pricing(path, today=datetime.date(2026, 3, 31))
        assert before.model("m1").status == "current"
    after = load_pricing(path, today=datetime.date(2026, 4, 1))
    with pytest.warns(tiersel.TierselWarning, match="'m1' was retired on 2026-04-01; its succ"):
        assert after.model("m1").retired


def test_a_table_older_than_90_days_warns_once(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + "  m1: {standard: {input: 1, output: 1}}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_pricing(path, today=datetime.date(2026, 3, 1))
    with pytest.warns(tiersel.TierselWarning, match="is from 2026-01, more than 90 days ago"):
        load_pricing(path, today=datetime.date(2026, 6, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_pricing(path, today=datetime.date(2026, 6, 1))


def test_a_table_file_is_parsed_once_and_again_when_it_changes(tmp_path: Path) -> None:
    """Each `Selector()` loads its table: a file's parsed document is kept for the next load of
    the same text, so an edit (even within the same millisecond, at the same size) is read at
    once."""
    from tiersel import pricing as module

    path = _write(
        tmp_path,
        HEAD.replace('"2026-01"', '"2026-11-01"') + "  m1: {standard: {input: 1, output: 1}}\n",
    )
    today = datetime.date(2026, 12, 1)
    parsed: list[Path] = []
    parse = module._parse

    def counted(p: Path, text: str) -> dict[str, Any]:
        parsed.append(p)
        return parse(p, text)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "_parse", counted)
        first, again = load_pricing(path, today=today), load_pricing(path, today=today)
        assert parsed == [path]
        assert first is not again and again.model("m1").tiers["standard"].input_per_token == 1e-6
        path.write_text(path.read_text().replace("input: 1,", "input: 2,"))
        changed = load_pricing(path, today=today)
        assert parsed == [path, path]
        assert changed.model("m1").tiers["standard"].input_per_token == 2e-6
        assert first.model("m1").tiers["standard"].input_per_token == 1e-6  # kept as loaded


def test_a_sent_body_shares_nothing_with_the_table_or_its_next_load(tmp_path: Path) -> None:
    """A tier's body may hold nested values; a body tiersel sends carries them, and a hook may
    edit it. Neither the table it came from nor the next load of the same file (whose parsed
    document is kept) sees the edit."""
    from tiersel.dialects import apply_step

    text = (
        bundled_pricing_path()
        .read_text()
        .replace(
            "body: {service_tier: priority}",
            "body: {service_tier: priority, metadata: {team: a}}",
            1,
        )
    )
    path = tmp_path / "table.yaml"
    path.write_text(text)
    table = load_pricing(path)
    sel = tiersel.Selector(pricing=table, clock=FakeClock(), api_key="")
    call = tiersel.Call(model="kimi-k3", input_tokens=200, max_output_tokens=30)
    step = sel.decide(call, tiersel.Requirements(tiers="priority")).plan[0]
    sent = apply_step({"model": "kimi-k3", "messages": []}, step)
    assert sent["metadata"] == {"team": "a"}
    sent["metadata"]["team"] = "b"
    assert table.tiers["priority"].body["metadata"] == {"team": "a"}
    assert apply_step({"model": "kimi-k3"}, step)["metadata"] == {"team": "a"}
    assert load_pricing(path).tiers["priority"].body["metadata"] == {"team": "a"}


def test_tiers_say_how_they_are_requested(pricing: Pricing) -> None:
    assert dict(pricing.tiers["standard"].body) == {}
    assert dict(pricing.tiers["priority"].body) == {"service_tier": "priority"}
    assert pricing.tiers["fast"].uses_router and not pricing.tiers["fast"].opt_in
    assert pricing.tiers["spot"].opt_in and pricing.tiers["us"].opt_in
    us = pricing.tiers["us_priority"]
    assert us.uses_router and dict(us.body) == {"service_tier": "priority"}
    kimi = pricing.model("kimi-k3")
    assert kimi.tiers["fast"].model_id == "accounts/fireworks/routers/kimi-k3-fast"
    assert kimi.tiers["priority"].model_id == MODELS + "kimi-k3"
    assert kimi.default_tiers == ("standard", "priority", "fast")
    assert "LiteLLM" in pricing.source


def test_opt_in_tiers_are_chosen_only_when_named() -> None:
    from tiersel.clock import FakeClock

    sel = tiersel.Selector(clock=FakeClock(), api_key="")
    call = tiersel.Call(model="kimi-k3", input_tokens=100, max_output_tokens=100)
    plain = sel.decide(call)
    assert plain.tier == "standard"
    assert {r.plan for r in plain.reasons if r.code == "opt_in"} == {"spot", "us", "us_priority"}
    assert sel.decide(call, tiersel.Requirements(tiers="standard,spot")).tier == "spot"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "table.yaml"
    p.write_text(text)
    return p


HEAD = """\
provider: acme
source: test
as_of: "2026-01"
tiers:
  standard: {request: {}}
  priority: {request: {body: {service_tier: priority}}}
models:
"""


@pytest.mark.parametrize(
    ("models", "key", "problem"),
    [
        (
            "  m1: {standard: {input: -1, output: 1}}\n",
            "models.m1.standard.input",
            "greater than or equal to 0",
        ),
        ("  m1: {turbo: {input: 1, output: 1}}\n", "models.m1.turbo", "unknown tier 'turbo'"),
        ("  m1: {standard: {input: 1}}\n", "models.m1.standard.output", "missing field"),
        (
            "  m1: {standard: {input: 1, output: 1, colour: red}}\n",
            "models.m1.standard.colour",
            "unknown field",
        ),
        ("  m1: {standard: {input: .nan, output: 1}}\n", "models.m1.standard.input", "finite"),
    ],
)
def test_malformed_tables_name_file_key_and_problem(
    tmp_path: Path, models: str, key: str, problem: str
) -> None:
    path = _write(tmp_path, HEAD + models)
    with pytest.raises(PricingError) as info:
        load_pricing(path)
    msg = str(info.value)
    assert str(path) in msg and key in msg and problem in msg, msg


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + "  m1: {standard: {input: 1, output: 1}\n  m2: [\n")
    with pytest.raises(PricingError, match=r"table\.yaml: bad YAML at line \d+, column \d+"):
        load_pricing(path)


def test_missing_file_is_a_pricing_error(tmp_path: Path) -> None:
    with pytest.raises(PricingError, match="cannot read"):
        load_pricing(tmp_path / "nope.yaml")


def test_router_tier_needs_router(tmp_path: Path) -> None:
    text = HEAD.replace("models:\n", "  fast: {request: {model: router}}\nmodels:\n")
    path = _write(tmp_path, text + "  m1: {fast: {input: 1, output: 1}}\n")
    with pytest.raises(PricingError, match=r"models\.m1\.fast\.router: missing field"):
        load_pricing(path)


def test_overlay_changes_one_price_and_keeps_the_rest(tmp_path: Path) -> None:
    over = tmp_path / "over.yaml"
    over.write_text("models:\n  kimi-k2p6:\n    standard: {input: 0.5, output: 2.0}\n")
    merged = load_pricing(overlay=over)
    kimi = merged.model("kimi-k2p6")
    assert kimi.tiers["standard"].input_per_1m == pytest.approx(0.5)
    assert kimi.tiers["priority"].input_per_1m == pytest.approx(1.5)
    assert merged.model("gpt-oss-20b").tiers["standard"].input_per_1m == pytest.approx(0.07)


def test_another_providers_tiers_fit_without_code_changes(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
provider: other
source: test
as_of: "2026-01"
tiers:
  flex: {request: {body: {service_tier: flex}}, priors: {shed_rate: 0.3, ttft_s: 2, output_tps: 30}}
  default: {request: {body: {service_tier: default}}, priors: {shed_rate: 0.01}}
  scale: {request: {headers: {x-scale: "1"}}, priors: {shed_rate: 0.0001, error_rate: 0.0}}
models:
  acme/model-1:
    flex: {input: 0.5, output: 1}
    default: {input: 1, output: 2}
    scale: {input: 3, output: 6}
""",
    )
    table = load_pricing(path)
    sel = tiersel.Selector(pricing=table, clock=FakeClock())
    call = tiersel.Call(model="acme/model-1", input_tokens=100, max_output_tokens=50)
    assert sel.decide(call).tier == "flex"
    d = sel.decide(call, tiersel.Requirements(reliability=0.99))
    # Flex is shed 30% of the time: three attempts on it, then one on default, reach 0.99.
    assert d.label == "flex*3>default"
    assert [s.service_tier for s in d.plan] == ["flex"] * 3 + ["default"]
    d = sel.decide(call, tiersel.Requirements(reliability=0.99, max_attempts=2))
    assert d.label == "flex>default"  # flex first, escalate to default after a shed
    assert [s.service_tier for s in d.plan] == ["flex", "default"]
    d = sel.decide(call, tiersel.Requirements(reliability=0.999, tiers=["scale"]))
    assert d.tier == "scale" and dict(d.plan[0].headers) == {"x-scale": "1"}


def test_the_wheel_ships_the_price_tables(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = wheels.glob("tiersel-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert "tiersel/_pricing/fireworks.yaml" in z.namelist()
        site = tmp_path / "site"
        z.extractall(site)
    # A fresh interpreter that sees only the unpacked wheel for tiersel, and this venv for its
    # dependencies (this venv's editable install is a .pth file, which PYTHONPATH does not read).
    deps = [p for p in sys.path if p.endswith("site-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *deps])}
    out = subprocess.run(
        [
            sys.executable,
            "-s",
            "-c",
            "import tiersel, tiersel.pricing; p = tiersel.pricing.load_pricing();"
            " print(tiersel.__file__); print(p.origin); print(len(p.models))",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[0].startswith(str(site))
    assert out[1] == str(site / "tiersel" / "_pricing" / "fireworks.yaml")
    assert int(out[2]) == len(load_pricing().models)


# -- overlays: where a bad value came from, and what an overlay keeps -----------------------------

GOOD_OVERLAY = "models:\n  kimi-k2p6:\n    standard: {input: 1, output: 4}\n"
BAD_OVERLAY = "models:\n  kimi-k2p6:\n    standard: {input: -3, output: 1}\n"


def test_an_error_names_the_file_the_bad_value_came_from(tmp_path: Path) -> None:
    base = _write(tmp_path, HEAD + "  m1: {standard: {input: -2, output: 1}}\n")
    good = tmp_path / "good.yaml"
    good.write_text("models:\n  m2: {standard: {input: 1, output: 2}}\n")
    with pytest.raises(PricingError) as info:
        load_pricing(base, overlay=good)
    assert str(info.value).startswith(f"{base}: models.m1.standard.input: "), info.value
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_OVERLAY)
    later = tmp_path / "later.yaml"
    later.write_text("models:\n  mymodel: {standard: {input: 1, output: 2}}\n")
    with pytest.raises(PricingError) as info:
        load_pricing(overlay=[bad, later])
    assert str(info.value).startswith(f"{bad}: models.kimi-k2p6.standard.input: "), info.value
    assert info.value.file == str(bad)


def test_a_file_name_with_a_plus_is_named_whole(tmp_path: Path) -> None:
    bad = tmp_path / "my+disc.yaml"
    bad.write_text(BAD_OVERLAY)
    with pytest.raises(PricingError) as info:
        load_pricing(overlay=bad)
    assert info.value.file == str(bad)
    assert str(info.value).startswith(f"{bad}: models.kimi-k2p6.standard.input")


def test_an_overlay_that_replaces_a_price_entry_is_blamed_for_what_it_lacks(tmp_path: Path) -> None:
    partial = tmp_path / "partial.yaml"
    partial.write_text("models:\n  kimi-k2p6:\n    standard: {input: 0.8}\n")
    with pytest.raises(PricingError) as info:
        load_pricing(overlay=partial)
    assert str(info.value) == f"{partial}: models.kimi-k2p6.standard.output: missing field"


def test_an_overlay_of_a_tiers_priors_keeps_how_the_tier_is_requested(tmp_path: Path) -> None:
    over = tmp_path / "priors.yaml"
    over.write_text("tiers:\n  priority:\n    priors:\n      shed_rate: 0.01\n")
    base = load_pricing()
    merged = load_pricing(overlay=over)
    tier = merged.tiers["priority"]
    assert dict(tier.body) == {"service_tier": "priority"}
    assert tier.description == base.tiers["priority"].description
    assert tier.priors.shed_rate == 0.01
    assert tier.priors.ttft_s == base.tiers["priority"].priors.ttft_s  # not reset to a default
    kimi = merged.model("kimi-k3").tiers["priority"]
    assert kimi.service_tier == "priority"
    # A tier the overlay declares whole, new, is taken as it is.
    over.write_text("tiers:\n  background: {request: {body: {service_tier: background}}}\n")
    tiers = load_pricing(overlay=over).tiers
    assert dict(tiers["background"].body) == {"service_tier": "background"}


def test_an_overlay_may_still_change_how_a_tier_is_requested(tmp_path: Path) -> None:
    over = tmp_path / "headers.yaml"
    over.write_text("tiers:\n  priority:\n    request: {headers: {x-lane: fast}}\n")
    tier = load_pricing(overlay=over).tiers["priority"]
    assert dict(tier.headers) == {"x-lane": "fast"}
    assert dict(tier.body) == {"service_tier": "priority"}


# -- ids that collide ----------------------------------------------------------------------------

ROUTED = HEAD.replace("models:\n", "  fast: {request: {model: router}}\nmodels:\n")


@pytest.mark.parametrize(
    ("models", "problem"),
    [
        (
            "  m1: {standard: {input: 1, output: 1},"
            " fast: {input: 2, output: 2, router: acme/m2}}\n"
            "  acme/m2: {standard: {input: 1, output: 1}}\n",
            "models.m1.fast.router: 'acme/m2' is already the id of model acme/m2",
        ),
        (
            "  acme/m2: {standard: {input: 1, output: 1}}\n"
            "  m1: {standard: {input: 1, output: 1},"
            " fast: {input: 2, output: 2, router: acme/m2}}\n",
            "models.m1.fast.router: 'acme/m2' is already the id of model acme/m2",
        ),
        (
            "  m1: {standard: {input: 1, output: 1}, fast: {input: 2, output: 2, router: r/x}}\n"
            "  m2: {standard: {input: 1, output: 1}, fast: {input: 2, output: 2, router: r/x}}\n",
            "models.m2.fast.router: 'r/x' is already the router of model m1 (fast)",
        ),
        (
            "  m1: {standard: {input: 1, output: 1}, fast: {input: 2, output: 2, router: m1}}\n",
            "models.m1.fast.router: 'm1' is the model's own id, not a router's",
        ),
        (
            "  m1: {standard: {input: 1, output: 1}}\n  x/m1: {standard: {input: 1, output: 1}}\n",
            "models.x/m1: 'x/m1' is already the id of model m1",
        ),
    ],
)
def test_an_id_that_names_two_things_is_refused(tmp_path: Path, models: str, problem: str) -> None:
    path = _write(
        tmp_path, ROUTED.replace("source: test\n", "source: test\nmodel_prefix: x/\n") + models
    )
    with pytest.raises(PricingError) as info:
        load_pricing(path)
    assert str(info.value) == f"{path}: {problem}"


def test_a_router_overlay_that_takes_another_models_id_is_refused(tmp_path: Path) -> None:
    over = tmp_path / "collide.yaml"
    over.write_text(
        "models:\n  kimi-k2p6:\n    fast:\n      router: accounts/fireworks/models/glm-5p2\n"
        "      input: 2\n      output: 8\n"
    )
    with pytest.raises(PricingError) as info:
        load_pricing(overlay=over)
    assert str(info.value) == (
        f"{over}: models.kimi-k2p6.fast.router: 'accounts/fireworks/models/glm-5p2' is already"
        " the id of model glm-5p2"
    )


# -- values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("output: 1.7e+308", "models.m1.standard.output", "less than or equal to 100000"),
        ("output: 100000.5", "models.m1.standard.output", "less than or equal to 100000"),
        ("output: true", "models.m1.standard.output", "input should be a valid number (got True)"),
        ('output: "4"', "models.m1.standard.output", "input should be a valid number (got '4')"),
        ("output: 1, cached_input: yes", "models.m1.standard.cached_input", "valid number"),
    ],
)
def test_prices_must_be_numbers_within_reason(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    path = _write(tmp_path, HEAD + f"  m1: {{standard: {{input: 1, {text}}}}}\n")
    with pytest.raises(PricingError) as info:
        load_pricing(path)
    assert str(info.value).startswith(f"{path}: {key}: ") and problem in str(info.value), info.value


def test_numbers_in_exponent_form_are_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + "  m1: {standard: {input: 1e-1, output: 2E+1}}\n")
    price = load_pricing(path).model("m1").tiers["standard"]
    assert (price.input_per_1m, price.output_per_1m) == (pytest.approx(0.1), pytest.approx(20))


@pytest.mark.parametrize("schema", ["3", "0", "true", '"1"'])
def test_an_unknown_schema_version_is_refused(tmp_path: Path, schema: str) -> None:
    path = _write(
        tmp_path, f"schema: {schema}\n" + HEAD + "  m1: {standard: {input: 1, output: 1}}\n"
    )
    with pytest.raises(PricingError) as info:
        load_pricing(path)
    assert str(info.value).startswith(f"{path}: schema: unsupported schema version"), info.value


def test_the_highest_price_and_token_count_still_cost_a_finite_amount(tmp_path: Path) -> None:
    from tiersel.dialects import TOKEN_LIMIT

    path = _write(tmp_path, HEAD + "  m1: {standard: {input: 100000, output: 100000}}\n")
    sel = tiersel.Selector(pricing=load_pricing(path), clock=FakeClock(), api_key="")
    call = tiersel.Call(model="m1", input_tokens=TOKEN_LIMIT, max_output_tokens=TOKEN_LIMIT)
    d = sel.decide(call, tiersel.Requirements(best_effort=True))
    assert d.worst_case_cost_usd == pytest.approx(2 * TOKEN_LIMIT * 0.1)


@pytest.mark.parametrize(
    ("priors", "key", "problem"),
    [
        (
            "output_tps: 1.0e-300",
            "tiers.standard.priors.output_tps",
            "greater than or equal to 0.001",
        ),
        ("ttft_s: 1.0e+308", "tiers.standard.priors.ttft_s", "less than or equal to 86400"),
        ("shed_latency_s: 1.0e+308", "tiers.standard.priors.shed_latency_s", "less than or equal"),
        ('shed_rate: "0.1"', "tiers.standard.priors.shed_rate", "valid number (got '0.1')"),
    ],
)
def test_priors_that_would_make_a_latency_infinite_are_refused(
    tmp_path: Path, priors: str, key: str, problem: str
) -> None:
    text = HEAD.replace("standard: {request: {}}", f"standard: {{priors: {{{priors}}}}}")
    path = _write(tmp_path, text + "  m1: {standard: {input: 1, output: 1}}\n")
    with pytest.raises(PricingError) as info:
        load_pricing(path)
    assert str(info.value).startswith(f"{path}: {key}: ") and problem in str(info.value), info.value


def test_decide_on_a_router_id_is_for_its_tier() -> None:
    from tiersel.clock import FakeClock

    sel = tiersel.Selector(clock=FakeClock(), api_key="")
    call = tiersel.Call(
        model="accounts/fireworks/routers/kimi-k3-us", input_tokens=100, max_output_tokens=100
    )
    assert sel.decide(call).tier == "us"
    with pytest.raises(tiersel.ConflictingRequirements, match="names the us tier"):
        sel.decide(call, tiersel.Requirements(tiers="spot"))


def test_a_us_router_id_serves_its_priority_tier_where_the_allowed_tiers_ask_for_it() -> None:
    # The US-only router is sold standard and priority under one id: allowing us_priority alone
    # was refused as contradicting the id (found by a new user's probe), though the same id with
    # service_tier "priority" in the body is sent as us_priority.
    from tiersel.clock import FakeClock
    from tiersel.dialects import apply_step
    from tiersel.engine.effects import Send
    from tiersel.engine.results import Reply

    sel = tiersel.Selector(clock=FakeClock(), api_key="")
    router = "accounts/fireworks/routers/kimi-k3-us"
    call = tiersel.Call(model=router, input_tokens=100, max_output_tokens=100)
    decision = sel.decide(call, tiersel.Requirements(tiers="us_priority"))
    assert decision.tier == "us_priority"
    body = {"model": router, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    sent = apply_step(body, decision.plan[0])
    assert sent["model"] == router and sent["service_tier"] == "priority"
    both = sel.decide(call, tiersel.Requirements(tiers=("us", "us_priority")))
    assert {s.tier for s in both.plan} <= {"us", "us_priority"}
    assert sel.decide(call).tier == "us"  # the bare id, nothing allowed: the id's own tier
    started = sel.engine.start(body, requirements=tiersel.Requirements(tiers="us_priority"))
    sends: list[Send] = []

    def send(effect: Send) -> Reply:
        sends.append(effect)
        return Reply(200, {}, {"usage": {"prompt_tokens": 9, "completion_tokens": 4}}, 0.5)

    assert sel.engine.run(started, send).ok
    assert [(s.step.tier, s.body["model"], s.body["service_tier"]) for s in sends] == [
        ("us_priority", router, "priority")
    ]
    # A body that asks for priority itself names us_priority: allowing only us contradicts it.
    with pytest.raises(tiersel.ConflictingRequirements, match="names the us_priority tier"):
        sel.engine.start(
            {**body, "service_tier": "priority"}, requirements=tiersel.Requirements(tiers="us")
        )
