"""A batch job's files on disk: OUT (one row per line), its journal, and the lock between jobs.

- ``OUT`` holds the rows. A row is a line's result; once it is on disk the line is done.
- ``OUT.journal`` records every reservation before its request leaves (``r``), and how it ended:
  charged (``s``) or released unbilled (``x``); plus one ``job`` record per run.
- ``OUT.lock`` is held (``flock``) for as long as a job runs, so two jobs never write one OUT;
  the kernel drops it when the process dies, even by SIGKILL.

Writes are made durable in groups (one ``fsync`` per file covers every record and row appended
since the last), and a request is only sent once its reservation is durable, so after a crash the
journal knows every attempt that may have been billed.

On resume, a line with a row is done and is not sent again. A line without a row whose attempts
the journal shows was in flight at the crash: each of its charged attempts is carried at the
charged amount, each still-open reservation at its full amount (the provider may or may not have
billed that request; the reservation is an upper bound of what it can have cost, so charging it
keeps the cap whatever happened). The line is then sent again, and its row carries those charges
in ``cost_usd`` and ``unconfirmed_usd``.

A write that fails (a full disk, an I/O error) raises `JobWriteError`, naming the file, and
nothing more is written: the files end with whole records and rows (and perhaps a half-written
last line, which a resume cuts), so once the cause is mended ``--resume`` carries the spend over
exactly as after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tiersel.batch.input import InputScan
from tiersel.batch.rows import Charges
from tiersel.errors import TierselError

__all__ = [
    "DoneLines",
    "InFlight",
    "JobFiles",
    "JobLocked",
    "JobWriteError",
    "JobWriter",
    "JournalError",
    "Journaled",
    "Resumed",
    "journaled",
    "open_job",
]

JOURNAL_VERSION = 1
_sync = getattr(os, "fdatasync", os.fsync)


class JobLocked(TierselError):
    """Another job is writing the same OUT."""


class JournalError(TierselError):
    """OUT or its journal cannot be used for this job: names the file and the problem."""


class JobWriteError(TierselError, OSError):
    """A write to OUT or its journal failed (a full disk, an I/O error): the job cannot go on.

    ``path`` is the file, ``cause`` the `OSError` (whose ``errno`` this error carries too). What
    was on disk before stays valid: once the cause is mended, ``--resume`` finishes the job with
    its spend carried over exactly.
    """

    def __init__(self, path: Path, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror, str(path))
        self.path = path
        self.cause = cause

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.cause}"


@dataclass(frozen=True, slots=True)
class JobFiles:
    """Where a job's OUT, journal and lock live."""

    out: Path
    journal: Path
    lock: Path

    @classmethod
    def for_out(cls, out: str | os.PathLike[str]) -> JobFiles:
        path = Path(out)
        return cls(
            path, path.with_name(path.name + ".journal"), path.with_name(path.name + ".lock")
        )


class DoneLines:
    """The line numbers that already have a row: one bit per line."""

    __slots__ = ("_bits", "count")

    def __init__(self) -> None:
        self._bits = bytearray()
        self.count = 0

    def add(self, line: int) -> bool:
        """Mark ``line`` done; False if it already was."""
        byte, bit = divmod(line, 8)
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte - len(self._bits) + 1024))
        mask = 1 << bit
        if self._bits[byte] & mask:
            return False
        self._bits[byte] |= mask
        self.count += 1
        return True

    def __contains__(self, line: object) -> bool:
        if not isinstance(line, int):
            return False
        byte, bit = divmod(line, 8)
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << bit))


class InFlight(NamedTuple):
    """An attempt still open at the end of a job's journal (its request may have been billed):
    its id, its line, and its reservation."""

    attempt_id: str
    line: int
    usd: float


@dataclass(slots=True)
class Resumed:
    """What earlier runs of this job left: done lines, their spend, and charges still unrowed.

    ``in_flight``: the attempts still open at the end of the journal (requests that may have
    been billed), by the id of the reservation their line holds in the budget's store (its
    envelope, `tiersel.batch.ledger`)."""

    job: str
    run: int
    done: DoneLines = field(default_factory=DoneLines)
    rows_usd: float = 0.0
    lost: dict[int, Charges] = field(default_factory=dict)
    in_flight: dict[str, InFlight] = field(default_factory=dict)

    @property
    def lost_usd(self) -> float:
        return sum(c.cost_usd for c in self.lost.values())

    @property
    def spent_usd(self) -> float:
        """Everything earlier runs charged: the rows' costs plus what lines without rows cost."""
        return self.rows_usd + self.lost_usd

    def charged(self, reservation: str, usd: float, *, confirmed: bool) -> InFlight:
        """Count the attempt in flight under ``reservation`` as charged ``usd`` (what the store
        charged it), not its reservation; ``confirmed``: that is its bill, not a worst case."""
        attempt = self.in_flight.pop(reservation)
        before = self.lost[attempt.line]
        unconfirmed = before.unconfirmed_usd - attempt.usd + (0.0 if confirmed else usd)
        self.lost[attempt.line] = Charges(before.cost_usd - attempt.usd + usd, unconfirmed)
        return attempt


class JobWriter:
    """Appends rows to OUT and records to the journal, and makes them durable in groups.

    ``row``/``record`` buffer; ``durable()`` waits until everything appended before the call is
    written and synced. One flush at a time runs, in a worker thread, and takes whatever is
    buffered when it starts, so every waiter that arrives meanwhile is served by the next and
    many lines share one ``fsync``. Buffers are only ever taken under the I/O lock, so `close`
    (``flush_now``) after an interrupted flush writes everything once, in order. Once a write
    fails, ``durable()`` raises its `JobWriteError` to every waiter and nothing more is written.
    """

    def __init__(self, out_fd: int, journal_fd: int, files: JobFiles | None = None) -> None:
        self._out = out_fd
        self._journal = journal_fd
        self._files = files  # for the messages of failed writes
        self._rows: list[bytes] = []
        self._records: list[bytes] = []
        self._seq = 0  # entries appended
        self._synced = 0  # entries on disk
        self._flushing: asyncio.Future[None] | None = None
        self._broken: BaseException | None = None
        self._closed = False
        self._io = threading.Lock()  # one write at a time, by a flush thread or at close
        self._buffers = threading.Lock()  # appends against a flush thread taking the buffers
        self.pending_bytes = 0

    @property
    def broken(self) -> bool:
        """A write failed: nothing more can be made durable."""
        return self._broken is not None

    def row(self, data: bytes) -> None:
        with self._buffers:
            self._rows.append(data)
            self.pending_bytes += len(data)
            self._seq += 1

    def record(self, data: bytes) -> None:
        with self._buffers:
            self._records.append(data)
            self.pending_bytes += len(data)
            self._seq += 1

    async def durable(self) -> None:
        """Wait until every row and record appended so far is on disk."""
        target = self._seq
        while self._synced < target:
            if self._broken is not None:
                # Without the tracebacks of the waiters it was raised to before.
                raise self._broken.with_traceback(None)
            if self._flushing is None:
                self._flushing = asyncio.ensure_future(self._flush())
            await asyncio.shield(self._flushing)

    async def _flush(self) -> None:
        try:
            upto = await asyncio.get_running_loop().run_in_executor(None, self._write_buffered)
        except BaseException as exc:
            self._broken = exc
            raise
        finally:
            self._flushing = None
        self._synced = max(self._synced, upto)

    def _write_buffered(self) -> int:
        """Take what is buffered, write and sync it; return how many entries are now on disk."""
        with self._io:
            with self._buffers:
                rows, self._rows = self._rows, []
                records, self._records = self._records, []
                upto = self._seq
                self.pending_bytes = 0
            if self._closed:
                return upto
            # The journal first: a row on disk without its records is fine (the row wins on
            # resume), and so is the reverse (the line is then carried as in flight).
            if records:
                self._put(self._journal, b"".join(records), "journal")
            if rows:
                self._put(self._out, b"".join(rows), "out")
            return upto

    def _put(self, fd: int, data: bytes, which: str) -> None:
        try:
            _write_all(fd, data)
            _sync(fd)
        except OSError as exc:
            path = getattr(self._files, which) if self._files is not None else Path(which)
            raise JobWriteError(path, exc) from exc

    def flush_now(self) -> None:
        """Write and sync what is buffered now, after any flush under way."""
        self._synced = max(self._synced, self._write_buffered())

    def close(self) -> None:
        """Write what is buffered (unless a write failed); a later flush writes nothing."""
        try:
            if self._broken is None:
                self.flush_now()
        finally:
            with self._io:
                self._closed = True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@dataclass(slots=True)
class OpenJob:
    """A job's files, open and locked, and what earlier runs left."""

    files: JobFiles
    writer: JobWriter
    resumed: Resumed
    _fds: tuple[int, int, int]

    def close(self) -> None:
        """Flush what is buffered, then close the files and drop the lock."""
        try:
            self.writer.close()
        finally:
            for fd in self._fds:
                with contextlib.suppress(OSError):
                    os.close(fd)


def open_job(
    out: str | os.PathLike[str],
    *,
    input_path: str | os.PathLike[str],
    scan: InputScan,
    budget_usd: float,
    resume: bool,
    visit_row: Callable[[dict[str, Any]], None],
    check: Callable[[Resumed], None] | None = None,
) -> OpenJob:
    """Lock OUT for this job and open its files; on resume, read what earlier runs left.

    ``visit_row`` sees every row already in OUT (to rebuild the job's counts); ``check`` sees
    what earlier runs left before this run is recorded, and may raise to refuse it. Raises
    `JobLocked` when another job holds OUT, `JournalError` when OUT cannot be used (it has
    results and ``resume`` is false, it belongs to a different input or budget, or it is gone
    while its journal remains), `JobWriteError` when the journal cannot be written.
    """
    files = JobFiles.for_out(out)
    if files.out.is_dir():
        raise JournalError(f"{files.out} is a folder: OUT names the file to write the rows to")
    if not files.out.parent.is_dir():
        raise JournalError(
            f"{files.out}: the folder {files.out.parent} does not exist; create it first"
        )
    fds = [_lock(files)]
    try:
        resumed = _prepare(files, input_path, scan, budget_usd, resume, visit_row)
        if check is not None:
            check(resumed)
        fds.append(os.open(files.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
        fds.append(os.open(files.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
        _sync_dir(files.out.parent)  # the new files' names survive a power cut too
        writer = JobWriter(fds[1], fds[2], files)
        header = {
            "op": "job",
            "v": JOURNAL_VERSION,
            "job": resumed.job,
            "run": resumed.run,
            "input": str(Path(input_path).resolve()),
            "input_sha256": scan.sha256,
            "input_lines": scan.lines,
            "budget_usd": budget_usd,
            "carried_usd": resumed.spent_usd,
            "pid": os.getpid(),
        }
        writer.record(json.dumps(header).encode() + b"\n")
        writer.flush_now()
    except BaseException:
        for fd in reversed(fds):  # the lock last: no other job gets OUT while it is open here
            os.close(fd)
        raise
    return OpenJob(files, writer, resumed, (fds[1], fds[2], fds[0]))


def _lock(files: JobFiles) -> int:
    try:
        import fcntl  # POSIX: imported here so that tiersel imports everywhere
    except ImportError:
        raise JournalError(
            "tiersel batch locks OUT with fcntl.flock, which this platform does not have"
            " (a POSIX system is needed for batch jobs)"
        ) from None
    fd = os.open(files.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise JobLocked(
            f"{files.out} is being written by another tiersel batch job{who}; wait for it to"
            " finish, or choose another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _prepare(
    files: JobFiles,
    input_path: str | os.PathLike[str],
    scan: InputScan,
    budget_usd: float,
    resume: bool,
    visit_row: Callable[[dict[str, Any]], None],
) -> Resumed:
    has_rows = _nonempty(files.out)
    has_journal = _nonempty(files.journal)
    if has_journal and not files.out.exists():
        # OUT is created before the journal's first record, so it was removed: its rows are
        # gone, and the journal holds charges, not results.
        earlier = Resumed(job="", run=0)
        _replay(files.journal, earlier)
        raise JournalError(
            f"{files.out} is missing but its journal {files.journal.name} exists: the journal"
            f" records what earlier runs spent (${earlier.spent_usd:.6f}), not their results, so"
            " OUT cannot be rebuilt from it; put OUT back and rerun with --resume, or choose"
            " another --out"
        )
    if not has_rows and not has_journal:
        return Resumed(job=secrets.token_hex(6), run=1)
    if not resume:
        raise JournalError(
            f"{files.out} already holds this or another job's results; pass --resume to"
            " continue that job, or choose another --out"
        )
    if not has_journal:
        raise JournalError(
            f"{files.out} has rows but no journal ({files.journal.name}): it was not written by"
            " tiersel batch, or its journal was removed, so it cannot be resumed"
        )
    header, runs = _read_header(files.journal)
    _check_same_job(files, header, input_path, scan, budget_usd)
    resumed = Resumed(job=str(header["job"]), run=runs + 1)
    _truncate_partial(files.out)
    _read_rows(files.out, resumed, visit_row)
    _replay(files.journal, resumed)
    return resumed


def _check_same_job(
    files: JobFiles,
    header: dict[str, Any],
    input_path: str | os.PathLike[str],
    scan: InputScan,
    budget_usd: float,
) -> None:
    """`JournalError` unless the job in ``files`` was started on this input and budget."""
    if header.get("input_sha256") != scan.sha256:
        raise JournalError(
            f"{input_path} is not the input this job started with (its sha256 differs from"
            f" the one in {files.journal.name}); resume needs the same input file"
        )
    started = header.get("budget_usd")
    if isinstance(started, (int, float)) and started != budget_usd:
        # Refused either way: lines already recorded budget_exhausted would not get more money,
        # and a shared store keeps the first limit (BudgetConflict).
        raise JournalError(
            f"{files.out} is a job started with --budget-usd {float(started)!r}, not"
            f" {float(budget_usd)!r}: a resumed job keeps the budget it started with (what it"
            f" spent so far counts against it); resume with --budget-usd {float(started)!r},"
            " or choose another --out for a new job"
        )


def _read_rows(out: Path, resumed: Resumed, visit_row: Callable[[dict[str, Any]], None]) -> None:
    """Count OUT's rows into ``resumed`` (the lines done, what their rows cost), each shown to
    ``visit_row``; `JournalError` for a row that is not a tiersel batch row, or a line twice."""
    with open(out, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                row = json.loads(raw)
                line = row["line"]
                cost = float(row["cost_usd"])
            except (ValueError, KeyError, TypeError):
                raise JournalError(f"{out}: row {number} is not a tiersel batch row") from None
            if not isinstance(line, int) or line < 1:
                raise JournalError(f"{out}: row {number} has no valid line number")
            if not resumed.done.add(line):
                raise JournalError(f"{out}: line {line} has two rows (row {number})")
            resumed.rows_usd += cost
            visit_row(row)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _truncate_partial(path: Path) -> None:
    """Cut a last line the crash left half-written (no newline): it was never a whole record."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        end = size
        while end > 0:
            step = min(4096, end)
            f.seek(end - step)
            chunk = f.read(step)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                end = end - step + cut + 1
                break
            end -= step
        if end != size:
            f.truncate(end)


def _read_header(journal: Path) -> tuple[dict[str, Any], int]:
    _truncate_partial(journal)
    first: dict[str, Any] | None = None
    runs = 0
    with open(journal, "rb") as f:
        for raw in f:
            if raw.startswith(b'{"op": "job"'):
                runs += 1
                if first is None:
                    first = json.loads(raw)
    if first is None or first.get("v") != JOURNAL_VERSION or "job" not in first:
        raise JournalError(f"{journal}: not a tiersel batch journal (version {JOURNAL_VERSION})")
    return first, runs


def _replay(journal: Path, resumed: Resumed) -> None:
    """Charges of the lines without a row, from their attempts' records (see the module doc)."""
    done = resumed.done
    held: dict[str, tuple[int, float]] = {}
    lost: dict[int, list[float]] = {}
    envelopes = _Envelopes()  # (of the unrowed lines)
    with open(journal, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                break  # a last record a crash cut short: never a whole record
            try:
                rec = json.loads(raw)
                op = rec["op"]
                if op == "r":
                    line = int(rec["l"])
                    if line not in done:
                        held[rec["a"]] = (line, float(rec["usd"]))
                        envelopes.reserved(rec["a"])
                elif op in ("s", "x"):
                    hit = held.pop(rec["a"], None)
                    if op == "s":
                        envelopes.charged(rec["a"])
                    if hit is not None and op == "s":
                        acc = lost.setdefault(hit[0], [0.0, 0.0])
                        acc[0] += float(rec["usd"])
                        if rec.get("u"):
                            acc[1] += float(rec["usd"])
            except (ValueError, KeyError, TypeError):
                raise JournalError(
                    f"{journal}: record {number} is not a journal record: the file is damaged"
                    " (edited, or written by something else), so what the job spent cannot be"
                    " read; restore it from a copy, or start afresh under another --out with"
                    " the budget that is left"
                ) from None
    for attempt, (line, amount) in held.items():
        acc = lost.setdefault(line, [0.0, 0.0])
        acc[0] += amount
        acc[1] += amount
        envelope = envelopes.of(attempt)
        if envelope is not None:
            resumed.in_flight[envelope] = InFlight(attempt, line, amount)
    resumed.lost = {
        line: Charges(total, unconfirmed) for line, (total, unconfirmed) in lost.items()
    }


@dataclass(frozen=True, slots=True)
class Journaled:
    """What a job's journal says of one line's reservation in its store (an envelope,
    `tiersel.batch.ledger`): its attempt ``attempt_id`` was ``charged`` ``usd`` (the run ended
    before the store took the charge, if the store still holds it), or is still open
    (``charged`` False: reserved at ``usd``, its request may have been billed)."""

    attempt_id: str
    usd: float
    charged: bool


def journaled(journal: Path, reservations: Collection[str]) -> dict[str, Journaled]:
    """What ``journal`` says of each of ``reservations`` (reservation ids in the store) that it
    records an attempt under: its charge, or its attempt still open. One held between attempts
    (its last attempt released unbilled), or never journaled, is not in the result: nothing was
    sent under it. Reads the journal once, keeping only the calls of ``reservations``."""
    wanted = set(reservations)
    calls = {_call_of(r) for r in wanted}
    envelopes = _Envelopes()
    open_: dict[str, tuple[str, float]] = {}  # call -> its attempt open now
    found: dict[str, Journaled] = {}
    with open(journal, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n") or raw.startswith(b'{"op": "job"'):
                continue
            rec = json.loads(raw)
            attempt = str(rec.get("a", ""))
            call = _call_of(attempt)
            if call not in calls:
                continue
            op = rec["op"]
            if op == "r":
                envelopes.reserved(attempt)
                open_[call] = (attempt, float(rec["usd"]))
            elif op == "x":
                open_.pop(call, None)
            elif op == "s":
                open_.pop(call, None)
                held = envelopes.charged(attempt)
                if held in wanted:
                    found[held] = Journaled(attempt, float(rec["usd"]), charged=True)
    for attempt, usd in open_.values():
        held = envelopes.of(attempt)
        if held in wanted:
            found[held] = Journaled(attempt, usd, charged=False)
    return found


class _Envelopes:
    """Each call's envelope, its reservation in the budget's store (`tiersel.batch.ledger`), as
    the journal's records make and drop it: made under the id of the attempt that reserves when
    the call holds none, kept through an attempt released unbilled, dropped by a charge."""

    __slots__ = ("_of_call",)

    def __init__(self) -> None:
        self._of_call: dict[str, str] = {}

    def reserved(self, attempt_id: str) -> None:
        self._of_call.setdefault(_call_of(attempt_id), attempt_id)

    def charged(self, attempt_id: str) -> str | None:
        """The envelope the charge of ``attempt_id`` dropped."""
        return self._of_call.pop(_call_of(attempt_id), None)

    def of(self, attempt_id: str) -> str | None:
        """The envelope ``attempt_id``'s call holds now."""
        return self._of_call.get(_call_of(attempt_id))


def _call_of(attempt_id: str) -> str:
    """The call id of attempt ``<call id>#<n>``."""
    return str(attempt_id).rpartition("#")[0]


def reserve_record(line: int, attempt_id: str, amount_usd: float) -> bytes:
    """The journal record of a reservation (written before its request is sent)."""
    return f'{{"op":"r","l":{line},"a":"{attempt_id}","usd":{amount_usd!r}}}\n'.encode()


def settle_record(attempt_id: str, amount_usd: float, *, unconfirmed: bool = False) -> bytes:
    """The journal record of a charge; ``unconfirmed``: charged at the worst case, unknown."""
    flag = ',"u":1' if unconfirmed else ""
    return f'{{"op":"s","a":"{attempt_id}","usd":{amount_usd!r}{flag}}}\n'.encode()


def release_record(attempt_id: str) -> bytes:
    """The journal record of a reservation dropped unbilled."""
    return f'{{"op":"x","a":"{attempt_id}"}}\n'.encode()
