"""Request traces to replay: arrival times and token counts, read from a CSV file.

Three formats are read, told apart by their header line:

- the Azure LLM inference trace, ``TIMESTAMP,ContextTokens,GeneratedTokens``, with timestamps such
  as ``2023-11-16 18:17:03.9799600`` (the 2023 release; two slices ship with tiersel:
  `shipped_trace`) or ``2024-05-10 00:00:00.009930+00:00`` (the 2024 week-long release, whose
  times carry a UTC offset; github.com/Azure/AzurePublicDataset, AzureLLMInferenceDataset2024);
- BurstGPT's (github.com/HPMLL/BurstGPT): the columns ``Timestamp`` (seconds from the trace's
  start), ``Request tokens`` and ``Response tokens``, in any order, beside its ``Model``,
  ``Total tokens`` and ``Log Type``, which are not read (every call asks for the replay's
  model). A request that failed there has 0 response tokens: it is replayed as a call for one;
- a plain CSV, ``timestamp_s,input_tokens,output_tokens``, optionally followed by ``deadline_s``
  and/or ``reliability`` (an empty cell means "no requirement": the mix assigns one), and
  ``prefix,prefix_tokens``: a name for the request's cacheable prompt prefix and its size (the
  simulated provider reads those tokens from its cache when a request with the same prefix
  reached the model within its ``cache_ttl_s``; an empty prefix: nothing cacheable).

Arrival times are kept relative to the first request. Rows out of time order are sorted (stably).
"""

from __future__ import annotations

import csv
import datetime
import io
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

from tiersel.errors import TierselError
from tiersel.pricing import ModelPrices

__all__ = [
    "SHIPPED_TRACES",
    "Trace",
    "TraceError",
    "TraceRequest",
    "check_limits",
    "parse_trace",
    "shipped_trace",
]

SHIPPED_TRACES = {"azure-code": "azure2023_code.csv", "azure-conv": "azure2023_conv.csv"}
"""Trace names `tiersel.replay.sources.load_trace` accepts besides file paths, and the packaged
files they name."""

_AZURE_HEADER = ("timestamp", "contexttokens", "generatedtokens")
_PLAIN_HEADER = ("timestamp_s", "input_tokens", "output_tokens")
_PLAIN_OPTIONAL = ("deadline_s", "reliability", "prefix", "prefix_tokens")
_AZURE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(Z|[+-]\d{2}:?\d{2})?$"
)
_BURST_COLUMNS = ("timestamp", "request tokens", "response tokens")
_BURST_OTHERS = ("model", "total tokens", "log type")


class TraceError(TierselError, ValueError):
    """A trace could not be read: names the file, the line and the problem."""

    def __init__(self, source: str, line: int | None, problem: str) -> None:
        self.source = source
        self.line = line
        self.problem = problem
        where = f"{source}: line {line}: " if line is not None else f"{source}: "
        super().__init__(where + problem)


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace.

    ``arrival_s`` counts from the trace's first arrival; ``deadline_s`` and ``reliability`` are
    the request's own requirements when the trace states them (None otherwise). ``prefix``
    names the prompt's cacheable prefix (None: nothing cacheable), ``prefix_tokens`` its size:
    requests that share a prefix share the provider's cached copy of it.
    """

    arrival_s: float
    input_tokens: int
    output_tokens: int
    deadline_s: float | None = None
    reliability: float | None = None
    prefix: str | None = None
    prefix_tokens: int = 0
    line: int | None = field(default=None, compare=False, repr=False)
    """The line of the file it was read from (None: not read from one)."""


@dataclass(frozen=True, slots=True)
class Trace:
    """A named, time-ordered sequence of requests.

    >>> t = parse_trace("timestamp_s,input_tokens,output_tokens\\n10,500,40\\n12,900,80\\n")
    >>> len(t), t.duration_s, t.compressed(4).duration_s
    (2, 2.0, 0.5)
    """

    name: str
    requests: tuple[TraceRequest, ...]

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[TraceRequest]:
        return iter(self.requests)

    @property
    def duration_s(self) -> float:
        """Seconds from the first arrival to the last."""
        return self.requests[-1].arrival_s if self.requests else 0.0

    def compressed(self, speedup: float) -> Trace:
        """The same requests arriving ``speedup`` times faster (inter-arrival times divided)."""
        if not (isinstance(speedup, (int, float)) and math.isfinite(speedup) and speedup > 0):
            raise ValueError(f"speedup must be a finite number > 0, got {speedup!r}")
        if speedup == 1:
            return self
        reqs = tuple(replace(r, arrival_s=r.arrival_s / speedup) for r in self.requests)
        return Trace(f"{self.name} x{speedup:g}", reqs)

    def head(self, n: int) -> Trace:
        """The first ``n`` requests."""
        return Trace(self.name, self.requests[:n])


def shipped_trace(name: str) -> Trace:
    """One of the traces packaged with tiersel, by name (see `SHIPPED_TRACES`).

    Both are slices of the Azure LLM inference trace 2023 (CC-BY 4.0; Patel et al., "Splitwise:
    Efficient generative LLM inference using phase splitting", ISCA 2024).
    """
    file = SHIPPED_TRACES.get(name)
    if file is None:
        known = ", ".join(SHIPPED_TRACES)
        raise TraceError(name, None, f"no shipped trace of that name (known: {known})")
    text = (
        resources.files("tiersel.replay")
        .joinpath("data")
        .joinpath(file)
        .read_text(encoding="utf-8")
    )
    return parse_trace(text, name=name)


def parse_trace(text: str, *, name: str = "trace", source: str | None = None) -> Trace:
    """Parse a trace from CSV text (either format); errors name ``source`` (else ``name``)."""
    where = source if source is not None else name
    rows = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    header: list[str] | None = None
    for header in rows:
        if any(cell.strip() for cell in header):
            break
    else:
        raise TraceError(where, None, "empty: expected a header line")
    line = rows.line_num
    columns = tuple(cell.strip().lower() for cell in header)
    if columns == _AZURE_HEADER:
        requests = _azure_rows(rows, where)
    elif columns[:3] == _PLAIN_HEADER and _optional_ok(columns[3:]):
        requests = _plain_rows(rows, where, columns[3:])
    elif _burst_ok(columns):
        requests = _burst_rows(rows, where, columns)
    else:
        raise TraceError(
            where,
            line,
            f"unrecognised header {','.join(header)!r}: expected"
            f" 'TIMESTAMP,ContextTokens,GeneratedTokens' (Azure trace),"
            f" 'timestamp_s,input_tokens,output_tokens[,deadline_s][,reliability]"
            f"[,prefix,prefix_tokens]', or BurstGPT's columns (Timestamp, Request tokens,"
            f" Response tokens, in any order, with Model, Total tokens and Log Type)",
        )
    if not requests:
        raise TraceError(where, None, "no requests after the header")
    requests.sort(key=_by_time)
    t0 = requests[0].arrival_s
    return Trace(name, tuple(replace(r, arrival_s=r.arrival_s - t0) for r in requests))


_Row = TraceRequest  # its arrival time absolute until the trace is sorted
_Reader = Any  # csv.reader's type is private to the csv module


def _by_time(row: _Row) -> float:
    return row.arrival_s


def _optional_ok(extra: Sequence[str]) -> bool:
    both = ("prefix" in extra) == ("prefix_tokens" in extra)
    return both and len(set(extra)) == len(extra) and all(c in _PLAIN_OPTIONAL for c in extra)


def _azure_rows(rows: _Reader, name: str) -> list[_Row]:
    out: list[_Row] = []
    # Seconds counted from the first day seen, so float precision stays below a microsecond.
    day_base: dict[tuple[int, int, int], float] = {}
    first_day: int | None = None
    for cells in rows:
        line = rows.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != 3:
            raise TraceError(name, line, f"expected 3 fields, found {len(cells)}")
        stamp, ctx, gen = (c.strip() for c in cells)
        m = _AZURE_TIME.match(stamp)
        if m is None:
            raise TraceError(
                name,
                line,
                f"TIMESTAMP {stamp!r} is not of the form YYYY-MM-DD HH:MM:SS.fffffff"
                " (optionally with a UTC offset, +00:00)",
            )
        y, mo, d, h, mi, s, frac, zone = m.groups()
        key = (int(y), int(mo), int(d))
        base = day_base.get(key)
        if base is None:
            try:
                ordinal = datetime.date(*key).toordinal()
            except ValueError as exc:
                raise TraceError(name, line, f"TIMESTAMP {stamp!r}: {exc}") from None
            if first_day is None:
                first_day = ordinal
            base = day_base[key] = (ordinal - first_day) * 86400.0
        hh, mm, ss = int(h), int(mi), int(s)
        if hh > 23 or mm > 59 or ss > 60:
            raise TraceError(name, line, f"TIMESTAMP {stamp!r}: time of day out of range")
        t = base + hh * 3600 + mm * 60 + ss + (int(frac) / 10 ** len(frac) if frac else 0.0)
        if zone and zone != "Z":  # the 2024 release's "+00:00": times are made UTC
            digits = zone[1:].replace(":", "")
            oh, om = int(digits[:2]), int(digits[2:])
            if oh > 23 or om > 59:
                raise TraceError(name, line, f"TIMESTAMP {stamp!r}: UTC offset out of range")
            t -= (1 if zone[0] == "+" else -1) * (oh * 3600 + om * 60)
        out.append(
            TraceRequest(
                t,
                _count(ctx, "ContextTokens", name, line),
                _count(gen, "GeneratedTokens", name, line),
                line=line,
            )
        )
    return out


def _plain_rows(rows: _Reader, name: str, extra: Sequence[str]) -> list[_Row]:
    out: list[_Row] = []
    width = 3 + len(extra)
    for cells in rows:
        line = rows.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != width:
            raise TraceError(name, line, f"expected {width} fields, found {len(cells)}")
        stamp = _number(cells[0], "timestamp_s", name, line)
        values = dict(zip(extra, cells[3:], strict=True))
        deadline = reliability = None
        raw = values.get("deadline_s", "").strip()
        if raw:
            deadline = _number(raw, "deadline_s", name, line)
            if deadline <= 0:
                raise TraceError(name, line, f"deadline_s {raw!r} must be > 0")
        raw = values.get("reliability", "").strip()
        if raw:
            reliability = _number(raw, "reliability", name, line)
            if not 0 < reliability <= 1:
                raise TraceError(name, line, f"reliability {raw!r} must be in (0, 1]")
        prefix = values.get("prefix", "").strip() or None
        shared = 0
        if prefix is not None:
            shared = _count(values["prefix_tokens"], "prefix_tokens", name, line)
            if shared > _count(cells[1], "input_tokens", name, line):
                raise TraceError(
                    name,
                    line,
                    f"prefix_tokens {shared} is more than input_tokens {cells[1].strip()}",
                )
        out.append(
            TraceRequest(
                stamp,
                _count(cells[1], "input_tokens", name, line),
                _count(cells[2], "output_tokens", name, line),
                deadline,
                reliability,
                prefix,
                shared,
                line=line,
            )
        )
    return out


def _burst_ok(columns: Sequence[str]) -> bool:
    known = set(_BURST_COLUMNS) | set(_BURST_OTHERS)
    return (
        all(c in columns for c in _BURST_COLUMNS)
        and len(set(columns)) == len(columns)
        and all(c in known for c in columns)
    )


def _burst_rows(rows: _Reader, name: str, columns: Sequence[str]) -> list[_Row]:
    at, ask, got = (columns.index(c) for c in _BURST_COLUMNS)
    out: list[_Row] = []
    for cells in rows:
        line = rows.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(columns):
            raise TraceError(name, line, f"expected {len(columns)} fields, found {len(cells)}")
        stamp = _number(cells[at], "Timestamp", name, line)
        if stamp < 0:
            raise TraceError(name, line, f"Timestamp {cells[at]!r} must be >= 0")
        out.append(
            TraceRequest(
                stamp,
                _count(cells[ask], "Request tokens", name, line),
                _count(cells[got], "Response tokens", name, line),
                line=line,
            )
        )
    return out


def check_limits(trace: Trace, prices: ModelPrices, source: str | None = None) -> None:
    """`TraceError` naming the first request of ``trace`` that asks for more than ``prices``'
    model reads or writes (and its line, when read from a file; ``source`` names the file, else
    the trace's name): the provider refuses such a call, and a replay that sent it would size the
    provider's pools for it."""
    for r in trace:
        for tokens, output, what in (
            (r.input_tokens, False, "input tokens"),
            (r.output_tokens, True, "output tokens"),
        ):
            said = prices.beyond(tokens, output=output)
            if said is not None:
                where = source if source is not None else trace.name
                raise TraceError(where, r.line, f"{tokens:,} {what}: {said}")


def _count(raw: str, column: str, name: str, line: int) -> int:
    text = raw.strip()
    try:
        value = int(text)
    except ValueError:
        raise TraceError(name, line, f"{column} {raw!r} is not a whole number") from None
    if value < 0:
        raise TraceError(name, line, f"{column} {raw!r} must be >= 0")
    return value


def _number(raw: str, column: str, name: str, line: int) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise TraceError(name, line, f"{column} {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise TraceError(name, line, f"{column} {raw!r} is not a finite number")
    return value
