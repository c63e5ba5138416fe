"""Where a replay's trace comes from: a CSV file, a trace shipped with tiersel, or a generated
one."""

from __future__ import annotations

from pathlib import Path

from tiersel.replay.synth import multiturn, rag
from tiersel.replay.traces import SHIPPED_TRACES, Trace, TraceError, parse_trace, shipped_trace

__all__ = ["GENERATED_TRACES", "load_trace"]

GENERATED_TRACES = ("synth-multiturn", "synth-rag")
"""Trace names `load_trace` generates (seed 0): `tiersel.replay.synth.multiturn` and `rag`."""


def load_trace(source: str | Path) -> Trace:
    """Read a trace from a CSV file, or a shipped trace by name (``azure-code``, ``azure-conv``),
    or generate one (``synth-multiturn``, ``synth-rag``)."""
    if isinstance(source, str) and source in SHIPPED_TRACES:
        return shipped_trace(source)
    if source == "synth-multiturn":
        return multiturn()
    if source == "synth-rag":
        return rag()
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TraceError(str(source), None, "no such file") from None
    except IsADirectoryError:
        raise TraceError(str(source), None, "is a directory, not a CSV file") from None
    except UnicodeDecodeError as exc:
        raise TraceError(str(source), None, f"not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise TraceError(str(source), None, exc.strerror or str(exc)) from None
    return parse_trace(text, name=path.stem, source=str(source))
