"""What a batch job did: calls by status and tier, spend by tier, escalations, budget left."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tiersel.batch.rows import Status
from tiersel.cost import billed

__all__ = ["INVALID_SHOWN", "BatchSummary", "TierTally"]

INVALID_SHOWN = 5
"""Invalid lines the summary names (each row in OUT says what is wrong with its line)."""


@dataclass(slots=True)
class TierTally:
    """One tier's share of a job: calls that ended on it, by outcome, and what they cost."""

    calls: int = 0
    ok: int = 0
    failed: int = 0
    spent_usd: float = 0.0


@dataclass(slots=True)
class BatchSummary:
    """A job's totals over all its runs (a resumed job counts the rows earlier runs wrote).

    ``spent_usd`` is the sum of the rows' ``cost_usd``: every charge of every attempt, including
    those of earlier runs. ``stopped`` says why a job stopped sending before its end, if it did.
    ``store_restored_usd``: what a shared store had lost of this job's spend when it resumed, and
    was charged again (see `tiersel.batch.sharing`). ``store_freed_usd``: what the reservations
    an earlier run left open in a shared store held beyond the requests then in flight, given
    back when this run began (`SharedStores.close_left_open`). ``least_needed_usd``: the least
    worst case a line of this run was refused for (``budget_exhausted``): the money left was
    less than that.
    """

    input: str
    out: str
    budget_usd: float
    lines: int
    run: int = 1
    spent_usd: float = 0.0
    calls_ok: int = 0
    calls_failed: int = 0
    calls_budget_exhausted: int = 0
    calls_invalid: int = 0
    by_tier: dict[str, TierTally] = field(default_factory=dict)
    escalations: int = 0
    unconfirmed_usd: float = 0.0
    overrun_usd: float = 0.0
    earlier_rows: int = 0
    peak_in_flight: int = 0
    elapsed_s: float = 0.0
    stopped: str | None = None
    store_restored_usd: float = 0.0
    store_freed_usd: float = 0.0
    least_needed_usd: float | None = None
    least_needed_tier: str | None = None
    invalid_lines: list[tuple[int, str]] = field(default_factory=list)
    shared_spent_usd: float | None = None
    """What the budget this job shares with other shards or jobs had spent when it ended (None
    when the budget is its own), and ``shared_reserved_usd`` what others held reserved then
    (calls in flight elsewhere, or a dead worker's until their expiry): ``remaining_usd`` is
    what those leave."""
    shared_reserved_usd: float | None = None

    @property
    def rows(self) -> int:
        return self.calls_ok + self.calls_failed + self.calls_budget_exhausted + self.calls_invalid

    @property
    def remaining_usd(self) -> float:
        spent = self.spent_usd if self.shared_spent_usd is None else self.shared_spent_usd
        return max(0.0, self.budget_usd - spent - (self.shared_reserved_usd or 0.0))

    @property
    def complete(self) -> bool:
        """Every line has its row."""
        return self.rows >= self.lines

    @property
    def all_ok(self) -> bool:
        return self.complete and self.calls_ok == self.lines

    def count(
        self,
        status: Status,
        tier: str | None,
        cost_usd: float,
        unconfirmed_usd: float = 0.0,
        escalated: bool = False,
    ) -> None:
        """Add one row."""
        if status is Status.ok:
            self.calls_ok += 1
        elif status is Status.failed:
            self.calls_failed += 1
        elif status is Status.budget_exhausted:
            self.calls_budget_exhausted += 1
        else:
            self.calls_invalid += 1
        # As the row shows it (billing precision), so the summary is the sum of OUT's rows.
        cost_usd = billed(cost_usd)
        self.spent_usd += cost_usd
        self.unconfirmed_usd += billed(unconfirmed_usd)
        if escalated:
            self.escalations += 1
        if tier is not None:
            name = str(tier)
            tally = self.by_tier.get(name)
            if tally is None:
                tally = self.by_tier[name] = TierTally()
            tally.calls += 1
            tally.spent_usd += cost_usd
            if status is Status.ok:
                tally.ok += 1
            else:
                tally.failed += 1

    def invalid(self, line: int, reason: str) -> None:
        """Note an invalid line of this run (the first `INVALID_SHOWN` are named in `render`)."""
        if len(self.invalid_lines) < INVALID_SHOWN:
            self.invalid_lines.append((line, reason))

    def unaffordable(self, need_usd: float, tier: str | None) -> None:
        """Note a line refused for want of money: it needed ``need_usd`` free on ``tier``."""
        if need_usd > 0 and (self.least_needed_usd is None or need_usd < self.least_needed_usd):
            self.least_needed_usd = need_usd
            self.least_needed_tier = tier

    def count_row(self, row: dict[str, Any]) -> None:
        """Add a row read back from OUT (on resume)."""
        self.earlier_rows += 1
        tier = row.get("tier")
        self.count(
            Status(row["status"]),
            tier if isinstance(tier, str) else None,
            float(row.get("cost_usd") or 0.0),
            float(row.get("unconfirmed_usd") or 0.0),
            bool(row.get("escalated")),
        )

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable summary (``tiersel batch --json``)."""
        return {
            "input": self.input,
            "out": self.out,
            "lines": self.lines,
            "rows": self.rows,
            "complete": self.complete,
            "run": self.run,
            "earlier_rows": self.earlier_rows,
            "budget_usd": self.budget_usd,
            "spent_usd": billed(self.spent_usd),
            "remaining_usd": billed(self.remaining_usd),
            "shared_spent_usd": (
                None if self.shared_spent_usd is None else billed(self.shared_spent_usd)
            ),
            "shared_reserved_usd": (
                None if self.shared_reserved_usd is None else billed(self.shared_reserved_usd)
            ),
            "unconfirmed_usd": billed(self.unconfirmed_usd),
            "overrun_usd": self.overrun_usd,
            "calls_ok": self.calls_ok,
            "calls_failed": self.calls_failed,
            "calls_budget_exhausted": self.calls_budget_exhausted,
            "calls_invalid": self.calls_invalid,
            "escalations": self.escalations,
            "by_tier": {
                name: {
                    "calls": t.calls,
                    "ok": t.ok,
                    "failed": t.failed,
                    "spent_usd": billed(t.spent_usd),
                }
                for name, t in sorted(self.by_tier.items())
            },
            "peak_in_flight": self.peak_in_flight,
            "elapsed_s": self.elapsed_s,
            "stopped": self.stopped,
            "store_restored_usd": self.store_restored_usd,
            "store_freed_usd": billed(self.store_freed_usd),
            "least_needed_usd": self.least_needed_usd,
            "least_needed_tier": self.least_needed_tier,
            "invalid_lines": [{"line": n, "reason": r} for n, r in self.invalid_lines],
        }

    def render(self) -> str:
        """The summary for people, a few lines."""
        out = [
            f"tiersel batch: {self.rows} of {self.lines} lines have a row in {self.out}"
            + (f" (run {self.run}; {self.earlier_rows} from earlier runs)" if self.run > 1 else ""),
            f"  ok {self.calls_ok}   failed {self.calls_failed}"
            f"   budget_exhausted {self.calls_budget_exhausted}   invalid {self.calls_invalid}",
        ]
        for n, reason in self.invalid_lines:
            out.append(f"  invalid line {n}: {reason}")
        shown = len(self.invalid_lines)
        if self.calls_invalid > shown:
            more = self.calls_invalid - shown
            out.append(
                f"  {'and ' if shown else ''}{more} invalid lines"
                f"{' more' if shown else ''}: their rows in {self.out} say why"
            )
        if self.by_tier:
            out.append(f"  {'tier':<12}{'calls':>8}{'ok':>8}{'failed':>8}{'spent':>14}")
            for name, t in sorted(self.by_tier.items(), key=lambda kv: -kv[1].calls):
                spent = f"${t.spent_usd:.6f}"
                out.append(f"  {name:<12}{t.calls:>8}{t.ok:>8}{t.failed:>8}{spent:>14}")
        out.append(f"  escalations {self.escalations} (calls that climbed to a dearer tier)")
        pct = 100.0 * self.spent_usd / self.budget_usd if self.budget_usd > 0 else 0.0
        if self.shared_spent_usd is None:
            out.append(
                f"  spent ${self.spent_usd:.6f} of ${self.budget_usd:.6f} ({pct:.1f}%);"
                f" left ${self.remaining_usd:.6f}"
            )
        else:
            held = self.shared_reserved_usd or 0.0
            elsewhere = f", held by calls elsewhere ${held:.6f}" if held > 0 else ""
            out.append(
                f"  spent ${self.spent_usd:.6f} here ({pct:.1f}% of ${self.budget_usd:.6f});"
                f" the shared budget: spent ${self.shared_spent_usd:.6f}{elsewhere}, left"
                f" ${self.remaining_usd:.6f}"
            )
        if self.calls_budget_exhausted and self.least_needed_usd is not None:
            on = f" on {self.least_needed_tier}" if self.least_needed_tier else ""
            out.append(
                f"  why left: {self.calls_budget_exhausted} lines were not sent for want of money;"
                f" the cheapest needed ${self.least_needed_usd:.6f}{on} (its worst case) on a tier"
                " that could serve it in time"
            )
        if self.unconfirmed_usd > 0:
            out.append(
                f"  of which ${self.unconfirmed_usd:.6f} charged at the worst case, unconfirmed"
                " (timed out, or in flight at a crash)"
            )
        if self.store_restored_usd > 0:
            out.append(
                f"  the shared store had lost ${self.store_restored_usd:.6f} of this job's spend"
                " (flushed, or restarted without persistence): charged to it again from the journal"
            )
        if billed(self.store_freed_usd) > 0:
            out.append(
                f"  ${self.store_freed_usd:.6f} that the last run's reservations held for no"
                " request (between attempts, or past what a request was charged) was given back"
                " to the shared budget"
            )
        if self.stopped:
            out.append(f"  stopped early: {self.stopped}")
        return "\n".join(out)
