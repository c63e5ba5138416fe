"""The demo's picture (``tiersel demo --plot FILE``): the tiers tiersel bought over the run, beside
the load offered and how often the provider refused an attempt. Needs matplotlib.

Three panels over the run's time, in bins of ``bin_s`` seconds: the share of each bin's served
calls that each tier served, for tiersel; the load offered to the provider's shared pool (other
tenants' share of its slots, from the scenario) beside the demo's own calls; and the share of
attempts refused (shed, rate limited or failed fast) for tiersel and for always-standard, with
the scenario's chance of shedding a standard request at that load.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tiersel.demo import ArmResult, CallOutcome
from tiersel.sim.scenarios import Scenario

__all__ = ["plot"]

_COLOURS = {"standard": "tab:blue", "priority": "tab:orange", "fast": "tab:red"}


def _bins(outcomes: Sequence[CallOutcome], bin_s: float) -> list[list[CallOutcome]]:
    end = max((o.call.at_s for o in outcomes), default=0.0)
    bins: list[list[CallOutcome]] = [[] for _ in range(int(end // bin_s) + 1)]
    for o in outcomes:
        bins[int(o.call.at_s // bin_s)].append(o)
    return bins


def _refused(outcomes: Sequence[CallOutcome]) -> float | None:
    """The share of these calls' attempts that did not serve them."""
    attempts = sum(o.record.attempts for o in outcomes if o.record is not None)
    served = sum(1 for o in outcomes if o.ok)
    return (attempts - served) / attempts if attempts else None


def plot(
    arms: Sequence[ArmResult],
    path: str | Path,
    *,
    scenario: Scenario,
    start_s: float,
    bin_s: float = 15.0,
) -> Path:
    """Draw the demo's picture of ``arms`` (the ``tiersel`` arm and, if run, ``always
    standard``) run under ``scenario`` from ``start_s`` to ``path``, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {a.name: a for a in arms}
    bins = _bins(by_name["tiersel"].outcomes, bin_s)
    t = [start_s + (i + 0.5) * bin_s for i in range(len(bins))]
    fine = [start_s + i * bin_s / 5 for i in range(5 * len(bins) + 1)]
    pool = scenario.pools[scenario.pool_name("standard", False)]
    load = [pool.background.at(x) for x in fine]
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    _tiers_panel(top, t, bins)
    _load_panel(middle, t, bins, fine, load, bin_s)
    _refusals_panel(bottom, t, by_name, fine, load, scenario, bin_s)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out


def _tiers_panel(ax: Any, t: list[float], bins: list[list[CallOutcome]]) -> None:
    """The share of each bin's served calls on each tier."""
    shares: dict[str, list[float]] = {tier: [] for tier in _COLOURS}
    for b in bins:
        served = Counter(o.tier for o in b if o.ok)
        total = sum(served.values()) or 1
        for tier in _COLOURS:
            shares[tier].append(served.get(tier, 0) / total)
    ax.stackplot(
        t,
        [shares[tier] for tier in _COLOURS],
        labels=list(_COLOURS),
        colors=list(_COLOURS.values()),
        step="mid",
    )
    ax.set_ylabel("share of calls served")
    ax.set_title("tiersel: the tier each call was served on")
    ax.legend(loc="upper right", fontsize="small")


def _load_panel(
    ax: Any,
    t: list[float],
    bins: list[list[CallOutcome]],
    fine: list[float],
    load: list[float],
    bin_s: float,
) -> None:
    """The other tenants' load on the standard pool, and the demo's own calls per bin."""
    ax.plot(fine, load, color="tab:gray", label="other tenants (share of the pool's slots)")
    ax.set_ylabel("provider load")
    ax.set_ylim(0, max(1.0, max(load) * 1.1))
    ours_per_bin = ax.twinx()
    ours_per_bin.step(t, [len(b) for b in bins], where="mid", color="tab:purple",
                      label=f"the demo's calls per {bin_s:g} s")  # fmt: skip
    ours_per_bin.set_ylabel("demo calls")
    ours_per_bin.set_ylim(0, max(len(b) for b in bins) * 2 + 1)
    ax.legend(loc="upper left", fontsize="small")
    ours_per_bin.legend(loc="upper right", fontsize="small")


def _refusals_panel(
    ax: Any,
    t: list[float],
    by_name: dict[str, ArmResult],
    fine: list[float],
    load: list[float],
    scenario: Scenario,
    bin_s: float,
) -> None:
    """The share of each arm's attempts refused per bin, beside the scenario's shed chance."""
    for name, colour in (("tiersel", "tab:red"), ("always standard", "tab:blue")):
        arm = by_name.get(name)
        if arm is None:
            continue
        rates = [_refused(b) for b in _bins(arm.outcomes, bin_s)]
        pts = [(x, r) for x, r in zip(t, rates, strict=False) if r is not None]
        ax.plot([x for x, _ in pts], [r for _, r in pts], marker="o", ms=3,
                color=colour, label=name)  # fmt: skip
    curve = scenario.shed_curve("standard", False)
    ax.plot(fine, [curve.probability(u) for u in load], color="tab:gray", linestyle="--",
            label="the scenario's standard shed chance")  # fmt: skip
    ax.set_ylabel("attempts refused")
    ax.set_ylim(0, 1)
    ax.set_xlabel("scenario time, s")
    ax.legend(loc="upper right", fontsize="small")
