"""One batch job split across workers: shards of its lines, one shared budget and signals.

``tiersel batch IN --out OUT --shard i/n --store redis://...`` on n workers (processes or
machines): worker i sends every n-th request line of IN, starting with the i-th, and writes its
own ``OUT`` named ``<stem>.<i>-of-<n><suffix>`` (with its own journal and lock, so ``--resume``
works per shard). All of them draw on one budget and one picture of overload in the store:

- the budget is named by the URL's ``?budget=NAME``, or else after OUT's file name and the
  input's fingerprint, so the shards of one job meet and other jobs do not; every shard must be
  given the same ``--budget-usd`` (another raises `tiersel.stores.BudgetConflict`);
- it outlives the job: a resumed shard finds the spend already there (nothing is carried twice),
  and an expired reservation (its worker died) is charged in full, not freed, since its call may
  have been billed (``?on_expiry=release`` in the URL frees it instead);
- a store that does not answer stops the job (`tiersel.stores.StoreUnavailable`; no call is sent
  unbudgeted): rerun with ``--resume`` once it answers;
- a store that lost its data (flushed, or restarted without persistence) is caught when a job
  resumes: the store then holds less than the job's journal shows the job spent. A budget that is
  the job's alone (no ``--shard``, no ``?budget=NAME``) is charged the difference again, so the
  cap holds as if nothing was lost; a budget shared with other shards or jobs cannot be rebuilt
  from one journal, so the job is refused (`StoreLostState`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tiersel.batch.journal import Resumed, journaled
from tiersel.budget import Ledger, ListsReservations, OnExpiry, Whereabouts
from tiersel.errors import TierselError
from tiersel.signals import AsyncSignalStore
from tiersel.stores import (
    StoreClock,
    aclose_store,
    close_store,
    open_async_signal_store,
    open_ledger,
    parse_store_url,
)

__all__ = ["Shard", "SharedStores", "StoreLostState", "open_shared_stores"]

log = logging.getLogger("tiersel.batch")

# Redis keeps money in whole nano-dollars, rounding each charge: what a store holds may fall
# short of a journal's float sum by that much, which is no loss.
_ROUNDING_USD = 1e-6


class StoreLostState(TierselError):
    """A shared budget holds less than a resumed job's journal shows the job spent: the store lost
    its data, and other shards or jobs share the budget, so it cannot be rebuilt from here."""


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based): every ``count``-th request line, from the
    ``index``-th.

    >>> shard = Shard.parse("2/3")
    >>> [n for n in range(7) if shard.holds(n)], shard.size(7), shard.out_path("out.jsonl").name
    ([1, 4], 2, 'out.2-of-3.jsonl')
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (self.count >= 1 and 1 <= self.index <= self.count):
            raise ValueError(
                f"shard {self.index}/{self.count}: want i/n with n >= 1 and 1 <= i <= n"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"`` -> `Shard`; `ValueError` names the text and the problem."""
        index, slash, count = text.partition("/")
        if not (slash and index.strip().isdigit() and count.strip().isdigit()):
            raise ValueError(f"shard {text!r}: want i/n, e.g. 1/4 (the first of four)")
        return cls(int(index), int(count))

    def holds(self, ordinal: int) -> bool:
        """Whether the request line with this 0-based ordinal (blank lines not counted) is ours."""
        return ordinal % self.count == self.index - 1

    def size(self, lines: int) -> int:
        """How many of ``lines`` request lines are ours."""
        whole, rest = divmod(lines, self.count)
        return whole + (1 if self.index <= rest else 0)

    def lines(self, numbered: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
        """Our lines of ``numbered`` (request lines, in order, with their line numbers)."""
        for ordinal, item in enumerate(numbered):
            if self.holds(ordinal):
                yield item

    def out_path(self, out: str | os.PathLike[str]) -> Path:
        """This shard's own OUT: ``out.jsonl`` -> ``out.<i>-of-<n>.jsonl``."""
        path = Path(out)
        return path.with_name(f"{path.stem}.{self.index}-of-{self.count}{path.suffix}")

    def alone_with(self, store: str | None) -> bool:
        """Whether this shard, one of several, would hold the job's budget alone with
        ``store``: none, or ``memory://``, is each worker's own memory, where every shard would
        spend the whole budget."""
        return self.count > 1 and (store is None or parse_store_url(store).backend == "memory")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True, slots=True)
class LeftOpen:
    """What `SharedStores.close_left_open` or `SharedStores.settle_in_flight` did: the money
    it gave back to the budget (``freed_usd``), the reservations of requests in flight the
    store charged at amounts it no longer knows (``forgiven_usd``: the resume's check does not
    ask the store to hold them), and the attempts in flight it charged (id, amount, whether
    unconfirmed), which the journal is to record."""

    freed_usd: float = 0.0
    forgiven_usd: float = 0.0
    charged: list[tuple[str, float, bool]] = field(default_factory=list)


@dataclass(slots=True)
class SharedStores:
    """The budget and signals a job shares with its other shards (or other jobs).

    ``own``: the budget is this job's alone (no shards, and named after the job, not by
    ``?budget=``).
    """

    ledger: Ledger
    signals: AsyncSignalStore
    budget: str
    url: str = ""
    own: bool = False

    def restore_spend(
        self, spent_usd: float, forgiven_usd: float, *, journal: Path, charge_id: str
    ) -> float:
        """Make the budget hold what this job's journal shows the job spent; return what it had
        lost and was charged again (0.0 when nothing was lost).

        ``spent_usd``: everything the journal shows charged; ``forgiven_usd`` of it, requests
        in flight when the last run ended that the store charged at amounts it no longer knows
        (`settle_in_flight`): the store must hold the rest. Raises `StoreLostState` when the
        budget lost money and is not this job's alone.
        """
        if spent_usd <= 0:
            return 0.0
        state = self.ledger.state(0.0)
        held = state.spent_usd + state.reserved_usd
        least = spent_usd - forgiven_usd
        if held >= least - _ROUNDING_USD * (1.0 + spent_usd):
            return 0.0
        if not self.own:
            raise StoreLostState(
                f"the shared budget {self.budget!r} at {self.url} holds ${held:.6f}, less than"
                f" the ${least:.6f} that {journal} shows this job spent: the store lost its"
                " data (flushed, or restarted without persistence). Other shards or jobs share"
                " this budget and their spend is not in this journal, so it cannot be rebuilt"
                " from here: restore the store's data, then rerun with --resume"
            )
        # The budget is this job's alone, so the journal knows all it spent: charge the
        # difference (one atomic charge, under an id of this run's, so it is never made twice).
        missing = least - held
        self.ledger.settle(charge_id, missing, 0.0)
        log.warning(
            "the budget %r at %s held $%.6f, less than the $%.6f that %s shows this job spent:"
            " the store lost its data (flushed, or restarted without persistence); the"
            " $%.6f missing was charged to it again",
            self.budget,
            self.url,
            held,
            least,
            journal,
            missing,
        )
        return missing

    def close_left_open(self, job: str, journal: Path, now: float) -> LeftOpen:
        """Close the reservations earlier runs of job ``job`` left open in the store (a run
        killed, or its store away), rather than leave them to their expiry, which charges each
        in full by default. Every run of the job but this one has ended (the job's lock says
        so), so each reservation under the job's ids is closed as its ``journal`` says
        (`tiersel.batch.journal.journaled`): charged what the journal charged it (the run
        ended before the store took the charge), or, for a request still in flight, its
        reservation, as the journal counts it; any other is released: nothing was sent under
        it (a line held it between attempts, or its request waited for its journal record when
        the run died). One the store no longer holds is left as it is. A ledger that cannot
        list its reservations (`ListsReservations`) leaves them to their expiry."""
        if not isinstance(self.ledger, ListsReservations):
            return LeftOpen()
        held = self.ledger.reservations(f"{job}:", now)
        if not held:
            return LeftOpen()
        said = journaled(journal, held)
        freed = 0.0
        charged: list[tuple[str, float, bool]] = []
        for reservation, amount in held.items():
            entry = said.get(reservation)
            if entry is None:
                self.ledger.release(reservation, now)
                freed += amount
                continue
            self.ledger.settle(reservation, entry.usd, now)
            freed += max(0.0, amount - entry.usd)
            if not entry.charged:
                charged.append((entry.attempt_id, entry.usd, True))
        return LeftOpen(freed_usd=freed, charged=charged)

    def settle_in_flight(self, resumed: Resumed, now: float) -> LeftOpen:
        """Make the store and the journal agree on the requests in flight when the last run
        ended (``resumed.in_flight``) that the store no longer holds (`close_left_open` closes
        those it holds): one the store charged (settled at its actual cost before the journal
        said so, or charged in full at its expiry) is counted at that charge, and the journal
        is to record it; one it freed at its expiry is charged its reservation now, as the
        journal counts it (its request may have been billed). One it charged at an amount it
        no longer knows is forgiven (`LeftOpen.forgiven_usd`); one it does not know at all is
        money it lost (the resume's check charges it again)."""
        if not resumed.in_flight or not isinstance(self.ledger, ListsReservations):
            return LeftOpen()
        standing = self.ledger.whereabouts(list(resumed.in_flight), now)
        forgiven = 0.0
        charged: list[tuple[str, float, bool]] = []
        for reservation, attempt in list(resumed.in_flight.items()):
            st = standing.get(reservation)
            if st is None:
                continue
            if st.where is Whereabouts.settled and st.usd is None:
                forgiven += attempt.usd
            elif st.where is Whereabouts.settled and st.usd is not None:
                confirmed = st.usd < attempt.usd  # (less than the worst case: its bill)
                resumed.charged(reservation, st.usd, confirmed=confirmed)
                charged.append((attempt.attempt_id, st.usd, not confirmed))
            elif st.where is Whereabouts.lapsed:
                self.ledger.settle(reservation, attempt.usd, now)
                resumed.charged(reservation, attempt.usd, confirmed=False)
                charged.append((attempt.attempt_id, attempt.usd, True))
        return LeftOpen(forgiven_usd=forgiven, charged=charged)

    async def aclose(self) -> None:
        close_store(self.ledger)
        await aclose_store(self.signals)


def open_shared_stores(
    url: str,
    *,
    budget_usd: float,
    out: str | os.PathLike[str],
    input_sha256: str,
    sharded: bool = False,
    callers_clock: bool = False,
) -> SharedStores | None:
    """The shared stores at ``url``; None for ``memory://`` (the job keeps its own).

    ``sharded``: the job is one shard of several (the budget is then not this job's alone).
    ``callers_clock``: the job runs on a clock of its own (a simulator's): the signals then run
    on it (``clock=caller``) unless the URL names a clock; the budget always on the server's.

    Checks the budget at once, so a store that does not answer, or a budget of that name with
    another limit, stops the job before any call (`StoreUnavailable`, `BudgetConflict`).
    """
    where = parse_store_url(url)
    if where.backend == "memory":
        return None
    name = where.budget or f"batch-{Path(out).name}-{input_sha256[:12]}"
    on_expiry = where.on_expiry or OnExpiry.charge  # the URL's wins, as in open_ledger
    ledger = open_ledger(url, limit_usd=budget_usd, name=name, on_expiry=on_expiry)
    try:
        ledger.state(0.0)
    except BaseException:
        close_store(ledger)
        raise
    own = where.budget is None and not sharded
    # The signals on the job's clock when it has its own (a simulator's, virtual or scaled):
    # on the server's, a 30 s cooldown was waited out in hundreds of ever shorter simulated
    # sleeps, each asking the store again, for 30 real seconds. The budget stays on the
    # server's clock, which every process sharing it reads alike.
    signals = open_async_signal_store(url, clock=StoreClock.caller if callers_clock else None)
    return SharedStores(ledger, signals, name, where.public, own=own)
