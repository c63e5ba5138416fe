"""The demo's workload and report, against the session's simulator server, and its command's
argument checks. (``tiersel demo`` itself runs for about 20 s, too long for this suite.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.transport.conftest import MODEL, TIME_SCALE
from tiersel.cli import main
from tiersel.clock import ScaledClock
from tiersel.demo import ARMS, format_report, run_demo, workload
from tiersel.demo_plot import plot
from tiersel.sim import load_scenario
from tiersel.sim.server import RunningServer


@pytest.mark.slow
def test_the_demo_runs_every_arm_on_the_same_workload(
    server: RunningServer, tmp_path: Path
) -> None:
    calls = workload(8, span_s=24.0, seed=1)
    assert {c.kind for c in calls} == {"interactive", "background"}
    seen = []
    arms = run_demo(
        calls,
        base_url=server.openai_base_url,
        api_key="sk-simulator",
        clock=ScaledClock(TIME_SCALE),
        model=MODEL,
        before_arm=lambda name: server.reset(time_s=0.0),
        after_arm=lambda arm: seen.append((arm.name, server.stats())),
    )
    assert [a.name for a in arms] == [name for name, _ in ARMS]
    for arm in arms:
        assert [o.call for o in arm.outcomes] == calls
        assert all(o.ok and o.record is not None for o in arm.outcomes)
    by_arm = {name: stats["by_tier"] for name, stats in seen}
    assert set(by_arm["always standard"]) == {"standard"}
    assert set(by_arm["always priority"]) == {"priority"}
    for _, stats in seen:
        assert stats["hinted"] == 0 and stats["priority_with_router"] == 0
    report = format_report(arms)
    for name, _ in ARMS:
        assert name in report
    assert "what tiersel chose:" in report
    # The picture (tiersel demo --plot): a PNG of its three panels.
    picture = plot(
        arms, tmp_path / "demo.png", scenario=load_scenario("peak"), start_s=0.0, bin_s=6.0
    )
    data = picture.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--calls", "0"], "--calls must be >= 1"),
        (["demo", "--time-scale", "-1"], "--time-scale must be a number > 0"),
        (["demo", "--live"], "--live needs FIREWORKS_API_KEY"),
        (["demo", "--plot", "/no/such/folder/x.png"], "--plot /no/such/folder/x.png: no such"),
        (["demo", "--plot", "/tmp"], "--plot /tmp: name a .png file"),
        (["demo", "--plot", "demo.svg"], "--plot demo.svg: name a .png file"),
    ],
)
def test_demo_arguments_are_checked(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FIREWORKS_API_KEY", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
