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
    ours = by_name["tiersel"]
    bins = _bins(ours.outcomes, bin_s)
    t = [start_s + (i + 0.5) * bin_s for i in range(len(bins))]
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)

    shares: dict[str, list[float]] = {tier: [] for tier in _COLOURS}
    for b in bins:
        served = Counter(o.tier for o in b if o.ok)
        total = sum(served.values()) or 1
        for tier in _COLOURS:
            shares[tier].append(served.get(tier, 0) / total)
    top.stackplot(
        t,
        [shares[tier] for tier in _COLOURS],
        labels=list(_COLOURS),
        colors=list(_COLOURS.values()),
        step="mid",
    )
    top.set_ylabel("share of calls served")
    top.set_title("tiersel: the tier each call was served on")
    top.legend(loc="upper right", fontsize="small")

    pool = scenario.pools[scenario.pool_name("standard", False)]
    fine = [start_s + i * bin_s / 5 for i in range(5 * len(bins) + 1)]
    load = [pool.background.at(x) for x in fine]
    middle.plot(fine, load, color="tab:gray", label="other tenants (share of the pool's slots)")
    middle.set_ylabel("provider load")
    middle.set_ylim(0, max(1.0, max(load) * 1.1))
    ours_per_bin = middle.twinx()
    ours_per_bin.step(t, [len(b) for b in bins], where="mid", color="tab:purple",
                      label=f"the demo's calls per {bin_s:g} s")  # fmt: skip
    ours_per_bin.set_ylabel("demo calls")
    ours_per_bin.set_ylim(0, max(len(b) for b in bins) * 2 + 1)
    middle.legend(loc="upper left", fontsize="small")
    ours_per_bin.legend(loc="upper right", fontsize="small")

    for name, colour in (("tiersel", "tab:red"), ("always standard", "tab:blue")):
        arm = by_name.get(name)
        if arm is None:
            continue
        rates = [_refused(b) for b in _bins(arm.outcomes, bin_s)]
        pts = [(x, r) for x, r in zip(t, rates, strict=False) if r is not None]
        bottom.plot([x for x, _ in pts], [r for _, r in pts], marker="o", ms=3,
                    color=colour, label=name)  # fmt: skip
    curve = scenario.shed_curve("standard", False)
    bottom.plot(fine, [curve.probability(u) for u in load], color="tab:gray", linestyle="--",
                label="the scenario's standard shed chance")  # fmt: skip
    bottom.set_ylabel("attempts refused")
    bottom.set_ylim(0, 1)
    bottom.set_xlabel("scenario time, s")
    bottom.legend(loc="upper right", fontsize="small")

    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out
