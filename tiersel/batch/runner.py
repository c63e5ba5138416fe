"""Run a batch job: every line of IN through the selector, one row each in OUT, under a hard cap.

`arun_batch` is the job (asyncio, up to ``concurrency`` calls in flight); `run_batch` is its sync
shell. Each valid line goes through `Selector.asend`, the core's one dispatch flow, with the job's
`JournaledLedger` as the selector's ledger and `DurableTransport` in front of the real transport:

- the cap: each attempt reserves its worst case before it is sent, the prompt at its bound (one
  token a byte of the messages, an allowance per image and for the chat template:
  `tiersel.dialects.input_token_bound`), ``max_tokens`` at the output price, and settles to its
  real usage after; a line
  whose call no allowed tier can cover waits while money held by calls in flight may come free,
  and is recorded ``budget_exhausted`` when none can;
- pacing: the policy (`CheapestFeasible` with ``pacing=1`` by default) sees how many calls are
  still to come, so early lines cannot spend what the rest need;
- nothing lost: see `tiersel.batch.journal`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import httpx

from tiersel.batch.input import BatchRequest, InvalidLine, LineParser, iter_lines, scan_input
from tiersel.batch.journal import JobFiles, OpenJob, Resumed, open_job, settle_record
from tiersel.batch.ledger import JournaledLedger, LineAccount
from tiersel.batch.progress import ProgressBar
from tiersel.batch.rows import Charges, Status, call_row, invalid_row, unsent_row
from tiersel.batch.sharing import Shard, SharedStores, open_shared_stores
from tiersel.batch.summary import BatchSummary
from tiersel.batch.transport import DurableTransport
from tiersel.budget import Ledger, MemoryLedger
from tiersel.call import Requirements
from tiersel.clock import Clock, FakeClock, SystemClock
from tiersel.decision import Reason
from tiersel.errors import BudgetExhausted, NoFeasibleTier, TierselError
from tiersel.outgoing import check_base_url, reaches_network
from tiersel.policy import CheapestFeasible, Policy
from tiersel.pricing import Pricing, load_pricing
from tiersel.selector import FIREWORKS_BASE_URL, Selector
from tiersel.signals import AsyncSignalStore, SignalStore
from tiersel.stores import StoreUnavailable
from tiersel.virtual_time import run_virtual

__all__ = ["DEFAULT_CONCURRENCY", "arun_batch", "run_batch"]

DEFAULT_CONCURRENCY = 64
_BACKLOG_BYTES = 1 << 20


async def arun_batch(
    input: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    budget_usd: float,
    transport: Any = None,
    base_url: str = FIREWORKS_BASE_URL,
    api_key: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    requirements: Requirements | None = None,
    default_max_tokens: int | None = None,
    resume: bool = False,
    pricing: Pricing | None = None,
    policy: Policy | None = None,
    signals: SignalStore | AsyncSignalStore | None = None,
    clock: Clock | None = None,
    ledger: Ledger | None = None,
    max_attempts: int = 4,
    carry_on: bool = True,
    progress: bool | None = None,
    progress_stream: TextIO | None = None,
    store: str | None = None,
    shard: Shard | None = None,
    instrument: Callable[[Selector], object] | None = None,
) -> BatchSummary:
    """Run the batch job ``input`` -> ``out`` spending at most ``budget_usd``; return its summary.

    - ``transport``: where requests go: an httpx async or sync transport or client, or a
      function from ``httpx.Request`` to a response (sync ones run in worker threads). Default:
      a new ``httpx.AsyncClient`` to ``base_url``, with ``api_key`` (or ``$FIREWORKS_API_KEY``).
    - ``requirements``: the job's defaults for every line; a line's ``tiersel`` object overrides
      them field by field. Default: no requirement, best effort (a line whose requirements no
      tier can meet is sent on the likeliest plan the budget and pacing allow).
    - ``default_max_tokens``: the output cap given to a line that sets none (None: such a line
      is recorded ``invalid``, never sent unbounded).
    - ``resume``: continue the job whose rows OUT already holds: lines with a row are not sent
      again, and the spend of earlier runs counts against ``budget_usd``, which must be the
      budget the job started with.
    - ``policy``: default ``CheapestFeasible(pacing=1.0)``. ``ledger``: default a `MemoryLedger`
      of ``budget_usd`` holding what earlier runs spent; a ledger passed in (a shared one) must
      already hold it, and have ``budget_usd`` as its limit (else `ValueError`, before anything
      is written).
    - ``progress``: a bar on ``progress_stream`` (stderr); None: only when it is a terminal.
    - ``store``: a store URL (``redis://...``, see `tiersel.batch.sharing`) holding the budget and
      signals this job shares with other jobs or shards, instead of ``ledger`` and ``signals``.
      On resume it must still hold what earlier runs spent; if it lost that, the job's own
      budget is charged it again, and a budget shared wider raises
      `tiersel.batch.sharing.StoreLostState`.
    - ``shard``: run only this `Shard` of the lines, into its own OUT (``out.<i>-of-<n>.jsonl``).
    - ``carry_on``: a line sent on a plan that no longer meets its requirements after a failed
      attempt goes on at best effort (see `tiersel.engine.EngineSettings`); False ends it
      with its last error (``tiersel batch --strict``).
    - ``instrument``: called with the job's `Selector` before its first line, to watch it
      (``tiersel.prometheus.TierselMetrics``, for one).

    Raises `tiersel.batch.JobLocked` when another job is writing ``out``;
    `tiersel.batch.JournalError` when ``out`` cannot be used (results there and ``resume`` not
    set, a different input or budget, ``out`` gone while its journal remains); and, stopping
    the job at once (no further line is started, calls in flight are cancelled),
    `tiersel.batch.JobWriteError` when ``out`` or its journal cannot be written, or
    `tiersel.stores.StoreUnavailable` when the shared store does not answer. After those two the
    job can be resumed. Bad lines never raise: they get ``invalid`` rows. See `tiersel.batch`
    for an example.
    """
    if not budget_usd >= 0 or budget_usd == float("inf"):
        raise ValueError(f"budget_usd must be a finite amount >= 0, got {budget_usd!r}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if store is not None and (ledger is not None or signals is not None):
        raise ValueError("pass either store= or ledger= and signals=, not both")
    if shard is not None and ledger is None and shard.alone_with(store):
        raise ValueError(
            f"shard {shard}: the shards must share one budget: give a store= (redis://...) that"
            " every shard names, or a shared ledger= (in this process's memory each shard would"
            " spend the whole budget)"
        )
    if ledger is not None:
        limit = ledger.state((clock if clock is not None else SystemClock()).now()).limit_usd
        if not math.isclose(limit, budget_usd, rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(
                f"ledger: its limit is ${limit:g}, but budget_usd is ${budget_usd:g}; a job"
                " spends at most its budget: give it a ledger of that limit, or none"
            )
    key = api_key if api_key is not None else os.environ.get("FIREWORKS_API_KEY")
    check_base_url(base_url, sends_key=bool(key) and reaches_network(transport))
    if os.path.exists(out) and os.path.samefile(input, out):
        raise ValueError(f"out {os.fspath(out)!r} is the input file: choose another")
    clock = clock if clock is not None else SystemClock()
    job, summary, shared = await _open(
        input, out, budget_usd, resume=resume, shard=shard, store=store, clock=clock
    )
    if shared is not None:
        ledger, signals = shared.ledger, shared.signals
    started = time.perf_counter()
    own_client = _default_client(concurrency) if transport is None else None
    bar = ProgressBar(summary, stream=progress_stream, enabled=progress)
    durable = DurableTransport(own_client or transport, job.writer, threads=concurrency)
    try:
        runner = _Runner(
            job,
            summary,
            bar,
            durable,
            budget_usd=budget_usd,
            lines_to_come=summary.lines - job.resumed.done.count,
            concurrency=concurrency,
            pricing=pricing if pricing is not None else load_pricing(),
            policy=policy if policy is not None else CheapestFeasible(pacing=1.0),
            signals=signals,
            clock=clock,
            ledger=ledger,
            base_url=base_url,
            api_key=api_key,
            max_attempts=max_attempts,
            carry_on=carry_on,
            requirements=requirements
            if requirements is not None
            else Requirements(best_effort=True),
            default_max_tokens=default_max_tokens,
        )
        if instrument is not None:
            instrument(runner.selector)
        await runner.run(iter_lines(input) if shard is None else shard.lines(iter_lines(input)))
    finally:
        bar.close()
        await durable.aclose()
        if own_client is not None:
            await own_client.aclose()
        job.close()
        if shared is not None:
            if not shared.own:  # other shards or jobs spend it too: say what it holds now
                now = clock.now()
                with contextlib.suppress(TierselError):
                    state = shared.ledger.state(now)
                    summary.shared_spent_usd = state.spent_usd
                    summary.shared_reserved_usd = state.reserved_usd  # (this job's are closed)
            await shared.aclose()
    summary.peak_in_flight = durable.peak_in_flight
    summary.overrun_usd = runner.ledger.overrun_usd
    summary.stopped = runner.stop_reason
    summary.elapsed_s = time.perf_counter() - started
    return summary


async def _open(
    input: str | os.PathLike[str],
    out: str | os.PathLike[str],
    budget_usd: float,
    *,
    resume: bool,
    shard: Shard | None,
    store: str | None,
    clock: Clock,
) -> tuple[OpenJob, BatchSummary, SharedStores | None]:
    """The job's files (locked, checked against the input and the budget, resumed where
    earlier runs left it), its summary so far, and the shared stores ``store`` names, with the
    reservations an earlier run left open in them closed."""
    scan = scan_input(input)
    lines = scan.lines if shard is None else shard.size(scan.lines)
    shared = None
    if store is not None:
        shared = open_shared_stores(
            store,
            budget_usd=budget_usd,
            out=out,
            input_sha256=scan.sha256,
            sharded=shard is not None,
            callers_clock=not isinstance(clock, SystemClock),
        )
    if shard is not None:
        out = shard.out_path(out)
    summary = BatchSummary(input=str(input), out=str(out), budget_usd=budget_usd, lines=lines)
    check = None
    charged: list[tuple[str, float, bool]] = []
    if shared is not None:
        check = _store_check(shared, summary, JobFiles.for_out(out).journal, clock, charged)
    try:
        job = open_job(
            out,
            input_path=input,
            scan=scan,
            budget_usd=budget_usd,
            resume=resume,
            visit_row=summary.count_row,
            check=check,
        )
    except BaseException:
        if shared is not None:
            await shared.aclose()
        raise
    summary.run = job.resumed.run
    if charged:  # attempts in flight at the end of the last run, charged in the store
        for attempt_id, amount, unconfirmed in charged:
            job.writer.record(settle_record(attempt_id, amount, unconfirmed=unconfirmed))
        job.writer.flush_now()
    return job, summary, shared


def _default_client(concurrency: int) -> httpx.AsyncClient:
    """The job's own client when none is given: long read timeouts (a call may generate for
    minutes), one connection per line in flight."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(600.0, connect=30.0),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    )


def _store_check(
    shared: SharedStores,
    summary: BatchSummary,
    journal: Path,
    clock: Clock,
    charged: list[tuple[str, float, bool]],
) -> Callable[[Resumed], None]:
    """Before a run is recorded: the reservations earlier runs left open in the shared budget
    are closed (`SharedStores.close_left_open`; the attempts in flight it charges are added to
    ``charged``, for the journal), and the budget must hold what earlier runs spent (a store
    that lost its data would otherwise let the job spend it again)."""

    def check(resumed: Resumed) -> None:
        forgiven = 0.0
        if resumed.run > 1:
            now = clock.now()
            settled = shared.settle_in_flight(resumed, now)  # (before any is closed)
            forgiven = settled.forgiven_usd
            closed = shared.close_left_open(resumed.job, journal, now)
            summary.store_freed_usd = closed.freed_usd
            charged.extend(settled.charged + closed.charged)
        summary.store_restored_usd = shared.restore_spend(
            resumed.spent_usd,
            forgiven,
            journal=journal,
            charge_id=f"{resumed.job}:{resumed.run}:restored",
        )

    return check


def run_batch(
    input: str | os.PathLike[str], out: str | os.PathLike[str], **options: Any
) -> BatchSummary:
    """The sync shell of `arun_batch` (same arguments): runs the job in a new event loop, a
    `tiersel.virtual_time.VirtualTimeLoop` when ``clock`` is a `FakeClock` (the simulator's
    virtual time: concurrent calls overlap as they would in real time)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # none: run the job below, outside this handler (its errors are not "during" it)
    else:
        raise RuntimeError("run_batch() was called inside a running event loop; await arun_batch()")
    clock = options.get("clock")
    if isinstance(clock, FakeClock):
        return run_virtual(arun_batch(input, out, **options), clock)
    return asyncio.run(arun_batch(input, out, **options))


class _Runner:
    """One run of a job: reads the lines still to do and keeps ``concurrency`` calls going."""

    def __init__(
        self,
        job: OpenJob,
        summary: BatchSummary,
        bar: ProgressBar,
        transport: DurableTransport,
        *,
        budget_usd: float,
        lines_to_come: int,
        concurrency: int,
        pricing: Pricing,
        policy: Policy,
        signals: SignalStore | AsyncSignalStore | None,
        clock: Clock,
        ledger: Ledger | None,
        base_url: str,
        api_key: str | None,
        max_attempts: int,
        carry_on: bool,
        requirements: Requirements,
        default_max_tokens: int | None,
    ) -> None:
        self.job = job
        self.summary = summary
        self.bar = bar
        self.transport = transport
        self.clock = clock
        self.to_come = lines_to_come
        self.concurrency = concurrency
        # The job's ledger never settles an attempt twice, so the memory ledger need not keep
        # many settled ids: keeping them all would grow with the input.
        inner = (
            ledger
            if ledger is not None
            else MemoryLedger(
                budget_usd,
                spent_usd=job.resumed.spent_usd,
                settled_memory=max(1024, 4 * concurrency),
            )
        )
        self.ledger = JournaledLedger(
            inner,
            job.writer,
            remaining_calls=self._remaining_calls,
            on_change=self._money_moved,
        )
        transport.accounts = self.ledger.account  # which line a request is an attempt of
        self.selector = Selector(
            pricing,
            policy,
            signals,
            clock,
            ledger=self.ledger,
            async_transport=transport,
            base_url=base_url,
            max_attempts=max_attempts,
            carry_on=carry_on,
            api_key=api_key,
            budget_wait_s=0.0,  # the job waits for money in flight itself (see _money_freed)
        )
        # Plan each line's prompt at its bound, not only reserve it: pacing then keeps for the
        # lines to come what they may be billed at most, so a job whose prompts tokenize
        # densely still reaches its last line.
        self.selector.engine.plan_at_bound = True
        self.parser = LineParser(pricing, requirements, default_max_tokens)
        self.stop_reason: str | None = None
        self.failure: Exception | None = None  # the first error that ends the job
        self._slots = asyncio.Semaphore(concurrency)
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def _remaining_calls(self) -> int:
        return self.to_come + 1  # the call deciding now, and the lines not yet started

    async def run(self, lines: Iterable[tuple[int, bytes]]) -> None:
        tasks: set[asyncio.Task[None]] = set()
        resumed = self.job.resumed
        writer = self.job.writer

        def ended(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            if not task.cancelled():
                task.exception()  # retrieved: the first one is in self.failure, raised below

        try:
            for number, raw in lines:
                if self.failure is not None:
                    break
                if number in resumed.done:
                    continue
                carried = resumed.lost.pop(number, None) or Charges()
                item = self.parser.parse(number, raw)
                if isinstance(item, InvalidLine):
                    self.to_come -= 1
                    self.summary.invalid(number, item.reason)
                    self._write(
                        invalid_row(item.custom_id, number, item.reason, carried),
                        Status.invalid,
                        None,
                        carried,
                    )
                    if writer.pending_bytes > _BACKLOG_BYTES:
                        await writer.durable()
                    continue
                await self._slots.acquire()
                if self.failure is not None:
                    break  # a line failed while this one waited for its slot
                self.to_come -= 1  # only now: pacing counts this line among those to come
                task = asyncio.create_task(self._line(item, carried))
                tasks.add(task)
                task.add_done_callback(ended)
            while tasks and self.failure is None:
                await asyncio.gather(*tasks)
            if self.failure is None:
                await writer.durable()
        finally:
            # Interrupted, or a line failed: stop the calls in flight. Their reservations are
            # released, or charged if their requests may have been billed, and journaled (if
            # the journal can still be written; if not, a resume carries them as in flight).
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        if self.failure is not None:
            raise self.failure

    async def _line(self, req: BatchRequest, carried: Charges) -> None:
        # What escapes here ends the job (`_send` turns one line's failures into its row): a
        # write to OUT or the journal that failed, a shared store that does not answer.
        try:
            call_id = f"{self.job.resumed.job}:{req.line}:{self.job.resumed.run}"
            account = self.ledger.open(call_id, req.line, carried)
            try:
                row, status, tier, escalated = await self._send(req, call_id, account)
            finally:
                self.ledger.close(call_id, self.clock.now())
            # The row is made durable with the next group (every send waits for one).
            self._write(row, status, tier, account.charges, escalated)
        except Exception as exc:
            if self.failure is None:
                self.failure = exc  # set before the slot is freed: no further line starts
            raise
        finally:
            self._slots.release()

    async def _send(
        self, req: BatchRequest, call_id: str, account: LineAccount
    ) -> tuple[bytes, Status, str | None, bool]:
        while True:
            if self.stop_reason is not None:
                return self._unsent(
                    req, account, Status.budget_exhausted, "stopped", self.stop_reason
                )
            try:
                result = await self.selector.asend(
                    req.body, requirements=req.requirements, path=req.path, call_id=call_id
                )
            except BudgetExhausted as exc:
                if self.ledger.held > 0:
                    await self._money_freed(_need(exc.reasons))
                    continue
                self.summary.unaffordable(*_cheapest_refused(exc.reasons))
                return self._unsent(
                    req, account, Status.budget_exhausted, "budget_exhausted", _exhausted(exc)
                )
            except NoFeasibleTier as exc:
                return self._unsent(req, account, Status.failed, "no_feasible_tier", str(exc))
            except StoreUnavailable:
                # The shared budget is away: end the job (rerun with --resume once it answers).
                # This line's reservation stays open in the journal, so a resume carries it.
                self.ledger.abandon(call_id)
                raise
            except Exception as exc:  # one line's failure must not end the job...
                if self.job.writer.broken:
                    raise  # ...but a journal that cannot be written must
                message = f"{type(exc).__name__}: {exc}"
                return self._unsent(req, account, Status.failed, "error", message)
            break
        if account.overrun_usd > 0 and self.stop_reason is None:
            self.stop_reason = (
                f"line {req.line} was billed ${account.overrun_usd:.6f} more than its reserved"
                " upper bound, so the cap could no longer be guaranteed; no further line was sent"
            )
        status, row = call_row(req.custom_id, req.line, result, account.charges)
        escalated = len(set(result.tried)) > 1
        return row, status, result.tier, escalated

    def _unsent(
        self, req: BatchRequest, account: LineAccount, status: Status, code: str, message: str
    ) -> tuple[bytes, Status, str | None, bool]:
        carried = account.carried
        if carried.cost_usd > 0 and account.attempts == 0 and account.charged_usd == 0:
            # Sent by an earlier run, which ended before writing its row: the row says so, not
            # only why this run could not send it again.
            message = (
                f"sent by an earlier run that ended before writing its row (charged"
                f" ${carried.cost_usd:.6f}, ${carried.unconfirmed_usd:.6f} of it unconfirmed);"
                f" not sent again: {message.removeprefix('not sent: ')}"
            )
        row = unsent_row(req.custom_id, req.line, status, code, message, account.charges)
        return row, status, None, False

    def _write(
        self,
        row: bytes,
        status: Status,
        tier: str | None,
        charges: Charges,
        escalated: bool = False,
    ) -> None:
        self.job.writer.row(row)
        self.summary.count(status, tier, charges.cost_usd, charges.unconfirmed_usd, escalated)
        self.bar.update()

    # -- waiting for money held by calls in flight ----------------------------------------------

    async def _money_freed(self, need_usd: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (need_usd, next(self._order), future))
        await future

    def _money_moved(self) -> None:
        """After a charge or release: wake the lines waiting for money that is now free."""
        waiting = self._waiting
        if not waiting:
            return
        if self.ledger.held == 0:
            free = float("inf")  # nothing more will come free: every waiter decides now
        else:
            free = self.ledger.inner.state(self.clock.now()).remaining_usd
        while waiting and waiting[0][0] <= free:
            future = heapq.heappop(waiting)[2]
            if not future.done():
                future.set_result(None)


def _need(reasons: tuple[Reason, ...]) -> float:
    """The least a call needs free to fit: its cheapest worst case the budget turned down."""
    return _cheapest_refused(reasons)[0]


def _cheapest_refused(reasons: tuple[Reason, ...]) -> tuple[float, str | None]:
    """The cheapest worst case the budget turned down, and its tier (0 and None if none)."""
    refused = [(float(r.values[0]), r.plan) for r in reasons if r.code == "budget" and r.values]
    return min(refused) if refused else (0.0, None)


def _exhausted(exc: BudgetExhausted) -> str:
    budget = [r for r in exc.reasons if r.code == "budget" and len(r.values) >= 2]
    if not budget:
        return f"not sent: {exc}"
    cheapest = min(budget, key=lambda r: float(r.values[0]))
    cooling = [r for r in exc.reasons if r.code == "cooldown" and r.values]
    also = "".join(
        f"; {r.plan} cooling down for {float(r.values[0]):.1f} s, past the line's deadline"
        for r in cooling
    )
    return (
        f"not sent: the budget cannot cover a call to {exc.model} on any tier that could serve"
        f" it in time (cheapest worst case ${float(cheapest.values[0]):.6f} on {cheapest.plan};"
        f" ${float(cheapest.values[1]):.6f} left{also})"
    )
