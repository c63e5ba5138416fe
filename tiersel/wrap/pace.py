"""A watched attempt's stream, held until its pace says whether to keep it (`tiersel.watch`).

`PaceCheck` reads the first events of a streamed answer as they arrive, with no I/O: when its
first and latest output tokens came and how many tokens it has generated, and, at the watch's
check, whether its end, projected from that pace, falls before the time it must end by. The
shells (`hold`, `ahold`) read the upstream stream into it until it decides; the events read are
held, not handed on, so a cut attempt's tokens never reach the caller, and a kept one is handed on
whole (`Replayed`: the held bytes, then the rest as it comes).

Tokens are counted from the text of each event's output (content, reasoning, a tool call's
arguments): an event counts as many tokens as it has words, and at least one. Providers stream
about a token an event, and the simulator a few words an event, a word a token; for English text,
where a token is about three quarters of a word, a multi-token event is undercounted, so the pace
reads slow and the attempt is cut a little early, on the side of the deadline.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from tiersel.clock import Clock
from tiersel.dialects import Dialect
from tiersel.engine.effects import Watch
from tiersel.http.flavours import AsyncStreamBase, SyncStreamBase
from tiersel.http.reply import aread_body, read_body
from tiersel.http.sse import CHAT_TEXT, EVENT_END, event_data
from tiersel.watch import projected_finish

__all__ = ["AsyncReplayed", "PaceCheck", "Replayed", "ahold", "hold"]


class PaceCheck:
    """One watched attempt's stream, read up to its check (times in seconds after its send)."""

    __slots__ = ("_buf", "dialect", "first", "held", "kept", "last", "sent_at", "tokens", "watch")

    def __init__(self, watch: Watch, dialect: Dialect, sent_at: float) -> None:
        self.watch = watch
        self.dialect = dialect
        self.sent_at = sent_at
        self.held: list[bytes] = []
        self.tokens = 0
        self.first: float | None = None
        self.last: float | None = None
        self.kept: bool | None = None  # the verdict, once its check has come
        self._buf = b""

    def feed(self, chunk: bytes, now: float) -> bool | None:
        """Hold ``chunk``, which arrived at ``now`` on the shell's clock: True to keep the
        attempt, False to cut it, None while its check has not come."""
        self.held.append(chunk)
        t = now - self.sent_at
        buf = self._buf + chunk
        pos = 0
        match = EVENT_END.search(buf)
        while match is not None:
            n = _tokens(buf[pos : match.start()], self.dialect)
            if n:
                if self.first is None:
                    self.first = t
                self.tokens += n
                self.last = t
            pos = match.end()
            match = EVENT_END.search(buf, pos)
        self._buf = buf[pos:]
        return self.verdict(now)

    def keep(self, response: Any, stream: Any) -> bool:
        """Whether the attempt is kept, once read up to its check or its end (a stream that
        ended first is kept); kept, ``response`` reads ``stream`` (the held bytes, the rest)."""
        kept = self.kept is not False
        if kept:
            response.stream = stream
        return kept

    def verdict(self, now: float) -> bool | None:
        """At ``now``: None before the check (`tiersel.watch.check_at`: the watch's time, or the
        second token's when that comes later, at the latest the time it must end by); then
        whether its projected end is in time."""
        t = now - self.sent_at
        w = self.watch
        if t < w.finish_by_s and (t < w.at_s or self.tokens < 2):
            return None
        ends = projected_finish(t, self.first, self.last, self.tokens, w.tokens, w.tps)
        self.kept = ends <= w.finish_by_s
        return self.kept


def _tokens(block: bytes, dialect: Dialect) -> int:
    """The output tokens one SSE event carries (0: none, or not an output event)."""
    event = event_data(block)
    if not isinstance(event, dict):
        return 0
    texts = _texts(event, dialect)
    if not texts:
        return 0
    return max(1, sum(len(t.split()) for t in texts))


def _texts(event: dict[str, Any], dialect: Dialect) -> list[str]:
    """The output text of one event, by dialect."""
    out: list[str] = []
    if dialect is Dialect.anthropic:
        delta = event.get("delta") if event.get("type") == "content_block_delta" else None
        if isinstance(delta, dict):
            out += [v for k, v in delta.items() if k != "type" and isinstance(v, str)]
        return out
    if dialect is Dialect.responses:
        kind, delta = event.get("type"), event.get("delta")
        if isinstance(kind, str) and kind.endswith(".delta") and isinstance(delta, str):
            out.append(delta)
        return out
    choices = event.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        text = choice.get("text")  # a text completion
        if isinstance(text, str):
            out.append(text)
        delta = choice.get("delta")
        if isinstance(delta, dict):
            out += [delta[k] for k in CHAT_TEXT if isinstance(delta.get(k), str)]
            for call in delta.get("tool_calls") or ():
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    out.append(fn["arguments"])
    return [t for t in out if t]


def hold(response: Any, check: PaceCheck, clock: Clock, whole: bool) -> bool | bytes:
    """Read ``response``'s stream into ``check`` until it decides (or the stream ends: kept).
    Kept, the response's stream becomes the held bytes then the rest, and, ``whole``, is read
    to its end: its bytes are the answer; cut, it is closed: False."""
    chunks = iter(response.stream)
    for chunk in chunks:
        if check.feed(chunk, clock.now()) is not None:
            break
    kept = check.keep(response, Replayed(check.held, chunks, response.stream))
    return read_body(response) if kept and whole else kept or _closed(response)


async def ahold(response: Any, check: PaceCheck, clock: Clock, whole: bool) -> bool | bytes:
    """The async twin of `hold`."""
    chunks = response.stream.__aiter__()
    async for chunk in chunks:
        if check.feed(chunk, clock.now()) is not None:
            break
    kept = check.keep(response, AsyncReplayed(check.held, chunks, response.stream))
    return await aread_body(response) if kept and whole else kept or await _aclosed(response)


def _closed(response: Any) -> bool:
    response.close()
    return False


async def _aclosed(response: Any) -> bool:
    await response.aclose()
    return False


class Replayed(httpx.SyncByteStream, SyncStreamBase):
    """A held stream handed on: the bytes read for the check, then the rest as it comes."""

    def __init__(self, held: list[bytes], rest: Iterator[bytes], upstream: Any) -> None:
        self._held = held
        self._rest = rest
        self._upstream = upstream

    def __iter__(self) -> Iterator[bytes]:
        held, self._held = self._held, []
        yield from held
        yield from self._rest

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._upstream.close()


class AsyncReplayed(httpx.AsyncByteStream, AsyncStreamBase):
    """The async twin of `Replayed`."""

    def __init__(self, held: list[bytes], rest: AsyncIterator[bytes], upstream: Any) -> None:
        self._held = held
        self._rest = rest
        self._upstream = upstream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        held, self._held = self._held, []
        for chunk in held:
            yield chunk
        async for chunk in self._rest:
            yield chunk

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._upstream.aclose()
