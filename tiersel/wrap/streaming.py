"""Streamed (SSE) replies: passed on as they arrive, measured on the way.

`StreamMeter` reads the events of a generation stream as they pass, with no I/O: when the first
output token came (time to first token), how fast the rest came (output tokens per second), the
usage the stream reports (a chat or text completion's final chunk's ``usage``, the response in a
Responses API ``response.completed`` event, or Anthropic's ``message_start`` / ``message_delta``),
and whether the stream reached its final event (``data: [DONE]``, ``response.completed`` /
``.incomplete`` / ``.failed``, ``message_stop``). `MeteredStream` and `AsyncMeteredStream` are
the thin sync and async shells: they hand each chunk on at once and report a `StreamEnd` exactly
once, when the stream is exhausted, breaks, or is closed.

A stream the caller drops without closing it is reported too, but not from the garbage
collector (which may run while this very thread holds the ledger's or the signals' lock): its
end is put on an `Abandoned` queue, which the transport settles at its next call or on close.
An SDK's stream dropped in a reference cycle is collected with the body under it, and so
reported the same way (the body's own watch runs before the SDK's generator closes it).

When tiersel itself asked for usage (``stream_options.include_usage``, which the caller had not
set), the usage-only chunk the provider then adds is dropped, so the caller gets the chunks it
asked for and no ``choices: []`` chunk it did not expect. That needs whole events: in that mode
bytes are handed on event by event (an event is never held longer than it takes to arrive).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

import httpx

from tiersel.clock import Clock
from tiersel.dialects import Dialect, Usage, read_usage
from tiersel.engine.lease import Renewal
from tiersel.engine.results import StreamEnd
from tiersel.http.flavours import AsyncStreamBase, SyncStreamBase, TimeoutErrors
from tiersel.http.sse import EVENT_END
from tiersel.signals import Outcome
from tiersel.wrap.watchdog import Watchdog

__all__ = ["Abandoned", "AsyncMeteredStream", "MeteredStream", "StreamMeter"]

log = logging.getLogger("tiersel.wrap")

_R = TypeVar("_R")

_OUTPUT_FIELDS = ("content", "reasoning_content", "tool_calls", "refusal", "function_call")
OUTPUT_BYTES_PER_TOKEN = 4.0
"""Bytes of streamed text taken as one output token when a stream's usage must be estimated: "one
token generally corresponds to ~4 characters of text for common English text" (OpenAI, "What are
tokens and how to count them"). Never fewer tokens than content events are counted."""

_TEXT = re.compile(
    rb'"(?:content|text|partial_json|thinking|delta|arguments|reasoning_content)"\s*:\s*"'
    rb'((?:[^"\\]|\\.)*)"'
)
"""The string values of a content event that carry generated text (chat's ``content``, a
completion's ``text``, Anthropic's ``text`` / ``partial_json`` / ``thinking``, the Responses
API's ``delta``, a tool call's ``arguments``), found without parsing the event."""

_RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_ANTHROPIC_USAGE = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
)


class StreamMeter:
    """Reads one SSE stream's events as they pass; pure bookkeeping, no I/O.

    ``sent_at`` is when the attempt was sent, on ``clock``; ``input_tokens`` estimates the
    prompt, for charging a stream that ended before it reported usage.
    """

    __slots__ = (
        "_buf",
        "_clock",
        "_drop_usage_only",
        "_input_tokens",
        "_text_bytes",
        "_usage",
        "content_events",
        "dialect",
        "error",
        "finished",
        "first_token_at",
        "last_token_at",
        "sent_at",
    )

    def __init__(
        self,
        dialect: Dialect,
        clock: Clock,
        sent_at: float,
        *,
        drop_usage_only: bool = False,
        input_tokens: Callable[[], int] | None = None,
    ) -> None:
        self.dialect = dialect
        self._clock = clock
        self.sent_at = sent_at
        self._drop_usage_only = drop_usage_only
        self._input_tokens = input_tokens
        self._buf = b""
        self._usage: dict[str, Any] | None = None
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.content_events = 0
        self._text_bytes = 0  # the bytes of text the content events carried
        self.finished = False
        self.error: tuple[Outcome, str] | None = None

    def feed(self, chunk: bytes) -> bytes:
        """Take bytes from upstream; return the bytes to hand on now."""
        buf = self._buf + chunk if self._buf else chunk
        pos = 0
        kept: list[bytes] = []
        match = EVENT_END.search(buf, pos)
        while match is not None:
            end = match.end()
            keep = self._event(buf[pos : match.start()])
            if self._drop_usage_only and keep:
                kept.append(buf[pos:end])
            pos = end
            match = EVENT_END.search(buf, pos)
        self._buf = buf[pos:]
        if not self._drop_usage_only:
            return chunk
        return b"".join(kept)

    def flush(self) -> bytes:
        """What is left at the end of the stream (a last event without its blank line)."""
        tail, self._buf = self._buf, b""
        if not tail:
            return b""
        keep = self._event(tail)
        return tail if self._drop_usage_only and keep else b""

    def _event(self, block: bytes) -> bool:
        """Read one event; False when it is a usage-only chunk to drop."""
        name: bytes | None = None
        data: list[bytes] = []
        for line in block.splitlines():
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
            elif line.startswith(b"event:"):
                name = line[6:].strip()
        if not data:
            return True
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        dialect = self.dialect
        if dialect is Dialect.openai or dialect is Dialect.completions:
            return self._openai(payload)
        if dialect is Dialect.responses:
            self._responses(name, payload)
        else:
            self._anthropic(name, payload)
        return True

    def _token(self, data: bytes) -> None:
        now = self._clock.now()
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now
        self.content_events += 1
        self._text_bytes += sum(map(len, _TEXT.findall(data)))

    def output_tokens(self) -> int:
        """The output tokens the content events read so far carry, estimated: at least one an
        event, or their text at `OUTPUT_BYTES_PER_TOKEN` (a provider may send several tokens in
        one event: Anthropic's text deltas often do)."""
        return max(self.content_events, round(self._text_bytes / OUTPUT_BYTES_PER_TOKEN))

    def _openai(self, data: bytes) -> bool:
        if data == b"[DONE]":
            self.finished = True
            return True
        if self.first_token_at is not None and b'"error"' not in data and _no_usage(data):
            self._token(data)  # the common case: a content chunk, counted unparsed
            return True
        chunk = _json(data)
        if chunk is None:
            return True
        error = chunk.get("error")
        if error:
            self.error = _stream_error(error)
            return True
        choices = chunk.get("choices")
        if _has_output(choices):
            self._token(data)
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk
            if self._drop_usage_only and not choices:
                return False
        return True

    def _anthropic(self, name: bytes | None, data: bytes) -> None:
        if name == b"content_block_delta":
            self._token(data)
            return
        event = _json(data)
        if event is None:
            return
        kind = event.get("type")
        if kind == "content_block_delta":
            self._token(data)
        elif kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self._anthropic_usage(message.get("usage"))
        elif kind == "message_delta":
            self._anthropic_usage(event.get("usage"))
        elif kind == "message_stop":
            self.finished = True
        elif kind == "error":
            self.error = _stream_error(event.get("error"))

    def _responses(self, name: bytes | None, data: bytes) -> None:
        if name is not None and name.endswith(b".delta"):
            self._token(data)  # output text, a refusal, reasoning or a tool call's arguments
            return
        event = _json(data)
        if event is None:
            return
        kind = event.get("type")
        if not isinstance(kind, str):
            return
        if kind.endswith(".delta"):
            self._token(data)
        elif kind in _RESPONSES_FINAL:
            self.finished = True
            response = event.get("response")
            if isinstance(response, dict):
                if isinstance(response.get("usage"), dict):
                    self._usage = response
                if kind == "response.failed":
                    self.error = _stream_error(response.get("error"))
        elif kind == "error":  # its code and message sit beside its type
            self.error = _stream_error({"code": event.get("code")})

    def _anthropic_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        merged = self._usage if self._usage is not None else {}
        for key, value in usage.items():
            if value is not None and (key in _ANTHROPIC_USAGE or key == "service_tier"):
                merged[key] = value
        self._usage = merged

    def usage(self) -> Usage | None:
        """The usage the stream has reported so far (None if none)."""
        if self._usage is None:
            return None
        if self.dialect is Dialect.anthropic:
            return read_usage({"usage": self._usage}, Dialect.anthropic)
        return read_usage(self._usage, self.dialect)

    def end(
        self,
        *,
        broke: BaseException | None = None,
        exhausted: bool = False,
        abandoned: bool = False,
        transport_closed: bool = False,
    ) -> StreamEnd:
        """How the stream ended: it ``broke`` with an exception, was ``exhausted`` (upstream
        sent everything), or neither (the caller closed it, or dropped it: ``abandoned``, or
        closed the transport it came through while it was open: ``transport_closed``, which
        closes its connection as a close of the stream would)."""
        now = self._clock.now()
        usage = self.usage()
        detail = "ok"
        if self.error is not None:
            outcome, detail = self.error
        elif self.finished:
            outcome = Outcome.ok  # whatever happens after the final event (draining) is no failure
        elif broke is not None:
            outcome = Outcome.timeout if isinstance(broke, TimeoutErrors) else Outcome.error
            detail = f"the stream broke: {type(broke).__name__}"
        elif exhausted:
            outcome, detail = Outcome.error, "the stream ended before its final event"
        elif abandoned:
            outcome, detail = Outcome.ok, "dropped by the caller, unclosed, before the end"
        elif transport_closed:
            outcome, detail = Outcome.ok, "its transport was closed before the end of the stream"
        else:
            outcome, detail = Outcome.ok, "closed by the caller before the end of the stream"
        complete = usage is not None and (self.finished or self.dialect.chunked_usage)
        if abandoned and not complete and self.error is None:
            # Nobody closed the connection, so the provider went on generating and bills the
            # whole answer, which tiersel never sees: no usage, so the call is charged its
            # worst case (all of its output cap), never less than what was billed.
            return StreamEnd(
                outcome=outcome,
                usage=None,
                elapsed_s=max(0.0, now - self.sent_at),
                ttft_s=self._ttft(),
                output_tps=None,
                detail=detail + "; charged its worst case (the provider bills what it generated)",
            )
        estimated = not complete and (self.content_events > 0 or outcome is Outcome.ok)
        if estimated:
            # Whatever was generated is billed: take what the stream reported, estimate the rest
            # (the prompt from the request, the output from the chunks counted).
            missing = "reported none" if usage is None else "ended before reporting all of it"
            usage = self._estimated(usage)
            detail += f"; usage estimated (the stream {missing})"
        return StreamEnd(
            outcome=outcome,
            usage=usage,
            elapsed_s=max(0.0, now - self.sent_at),
            ttft_s=self._ttft(),
            output_tps=self._tps(usage),
            detail=detail,
            usage_estimated=estimated,
        )

    def _ttft(self) -> float | None:
        first = self.first_token_at
        return first - self.sent_at if first is not None else None

    def _estimated(self, usage: Usage | None) -> Usage:
        prompt = usage.prompt_tokens if usage is not None and usage.prompt_tokens else 0
        if not prompt and self._input_tokens is not None:
            prompt = self._input_tokens()
        reported = usage.completion_tokens if usage is not None else 0
        return Usage(
            prompt_tokens=prompt,
            cached_tokens=usage.cached_tokens if usage is not None else 0,
            completion_tokens=max(reported, self.output_tokens()),
            served_tier=usage.served_tier if usage is not None else None,
        )

    def _tps(self, usage: Usage | None) -> float | None:
        first, last = self.first_token_at, self.last_token_at
        if first is None or last is None or last <= first:
            return None
        tokens = usage.completion_tokens if usage is not None else self.content_events
        # Tokens after the first, over the time after the first: the generation rate.
        return (tokens - 1) / (last - first) if tokens > 1 else None


def _no_usage(data: bytes) -> bool:
    # OpenAI-style streams with usage on put "usage": null on every chunk but the last.
    return b'"usage"' not in data or b'"usage": null' in data or b'"usage":null' in data


def _json(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _has_output(choices: Any) -> bool:
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(delta.get(f) for f in _OUTPUT_FIELDS):
            return True
        if choice.get("text"):
            return True
    return False


def _stream_error(error: Any) -> tuple[Outcome, str]:
    kind = ""
    if isinstance(error, dict):
        kind = str(error.get("type") or error.get("code") or "")
    shed = "overload" in kind.lower() or "capacity" in kind.lower()
    return (Outcome.shed if shed else Outcome.error), f"error event in the stream: {kind}".strip()


def _same(exc: Exception) -> Exception:
    return exc


class Abandoned:
    """The streams a transport handed out that have not reported their end, and the ends of
    those dropped unclosed, waiting for a safe point to be reported.

    The collector only appends (a deque's append takes no lock of ours); `drain` and `adrain`
    report each end, through the stream's own ``on_end``, at the transport's next call or close.
    At its close, `end_open` first ends the streams still open: the close shuts their
    connections, and no later call would report them.
    """

    __slots__ = ("_open", "_queue", "watchdog")

    def __init__(self) -> None:
        # Each end to report, with how to make it once reported (the meter's end then).
        self._queue: deque[tuple[Callable[[StreamEnd], Any], Callable[[], StreamEnd]]] = deque()
        # The open streams' claims on their ``on_end`` (see `_Metered`), by the claim's id.
        self._open: dict[int, tuple[list[Callable[[StreamEnd], Any]], StreamMeter, Any]] = {}
        self.watchdog = Watchdog()
        """Renews the open streams' reservations while their readers pause."""

    def __len__(self) -> int:
        return len(self._queue)

    def watch(
        self, stream: object, meter: StreamMeter, pending: list[Callable[[StreamEnd], Any]]
    ) -> None:
        """Follow ``stream`` until it reports its end (`settled`): queue ``meter``'s end if it is
        collected first, or end it at `end_open`, while its ``on_end`` is still ``pending`` (a
        one-item list the stream empties when it reports its end itself)."""
        key = id(pending)  # the list lives while its entry does: the id is not reused meanwhile
        self._open[key] = (pending, meter, weakref.finalize(stream, self._dropped, key))

    def settled(self, pending: list[Callable[[StreamEnd], Any]]) -> None:
        """The stream holding ``pending`` has reported its end: stop following it."""
        self.watchdog.forget(id(pending))
        entry = self._open.pop(id(pending), None)
        if entry is not None:
            entry[2].detach()

    def _dropped(self, key: int) -> None:
        self.watchdog.forget(key)
        entry = self._open.pop(key, None)
        if entry is not None:
            self._claim(entry[0], functools.partial(entry[1].end, abandoned=True))

    def _claim(
        self, pending: list[Callable[[StreamEnd], Any]], end: Callable[[], StreamEnd]
    ) -> None:
        try:
            on_end = pending.pop()
        except IndexError:  # the stream reported its end itself meanwhile
            return
        self._queue.append((on_end, end))

    def end_open(self) -> None:
        """End every stream still open, as its transport closes (their ends are then drained)."""
        for key in list(self._open):
            self.watchdog.forget(key)
            entry = self._open.pop(key, None)
            if entry is not None:
                pending, meter, finalizer = entry
                finalizer.detach()
                self._claim(pending, functools.partial(meter.end, transport_closed=True))

    def _ends(self) -> Iterator[tuple[Callable[[StreamEnd], Any], StreamEnd]]:
        queue = self._queue
        while queue:
            on_end, end = queue.popleft()
            yield on_end, end()

    def drain(self) -> None:
        for on_end, end in self._ends():
            try:
                on_end(end)
            except Exception:  # not the current call's failure: say so and go on
                log.warning("tiersel: could not settle a dropped stream", exc_info=True)

    async def adrain(self) -> None:
        for on_end, end in self._ends():
            try:
                await on_end(end)
            except Exception:
                log.warning("tiersel: could not settle a dropped stream", exc_info=True)


class _Metered(Generic[_R]):
    """What both stream shells hold: the upstream body, the meter, and the one claim on
    ``on_end`` that they share with the `Abandoned` watch (whoever takes it reports the end)."""

    def __init__(
        self,
        upstream: Any,
        meter: StreamMeter,
        on_end: Callable[[StreamEnd], _R],
        errors: Callable[[Exception], Exception] = _same,
        *,
        decode: bool = True,
        abandoned: Abandoned | None = None,
        renewal: Renewal | None = None,
    ) -> None:
        self._upstream = upstream
        self._decode = decode
        self._meter = meter
        # The call's reservation, made again while the stream runs (`tiersel.engine.lease`): as
        # its chunks pass, and by the watchdog while its reader pauses.
        self._renewal = renewal
        self._pending: list[Callable[[StreamEnd], _R]] = [on_end]
        self._errors = errors
        self._abandoned = abandoned
        if abandoned is not None:
            abandoned.watch(self, meter, self._pending)
            if renewal is not None:
                abandoned.watchdog.follow(id(self._pending), renewal, self._loop())

    @staticmethod
    def _loop() -> asyncio.AbstractEventLoop | None:
        """The event loop an async stream is opened on (None for a sync stream)."""
        return None

    def _renewal_due(self, renewal: Renewal) -> bool:
        """Whether to renew now: due, and the end not yet reported (a transport closed under a
        stream still read has settled its call)."""
        return bool(self._pending) and renewal.due()

    def _claim(
        self, broke: BaseException | None, exhausted: bool
    ) -> tuple[Callable[[StreamEnd], _R], StreamEnd] | None:
        """``on_end`` and the end to give it, or None when the end was reported already."""
        try:
            on_end = self._pending.pop()
        except IndexError:
            return None
        if self._abandoned is not None:
            self._abandoned.settled(self._pending)
        return on_end, self._meter.end(broke=broke, exhausted=exhausted)


class MeteredStream(_Metered[None], httpx.SyncByteStream, SyncStreamBase):
    """A streamed reply's body, handed on chunk by chunk while ``meter`` reads it.

    ``upstream`` is the upstream response (httpx or httpx2); ``on_end`` gets the `StreamEnd`
    once: when the body is exhausted, when reading it fails, or when it is closed (or, through
    ``abandoned``, after it is dropped unclosed). ``errors`` maps an exception from upstream to
    the one to raise (another library's, say). With ``decode=False`` (a body with no
    content-encoding) the raw stream is read directly. ``renewal`` renews the call's reservation
    before a chunk is handed on, when one is due and the end is not yet reported.
    """

    _chunks: Iterator[bytes] | None = None

    def _end(self, *, broke: BaseException | None = None, exhausted: bool = False) -> None:
        claimed = self._claim(broke, exhausted)
        if claimed is not None:
            on_end, end = claimed
            on_end(end)

    def __iter__(self) -> Iterator[bytes]:
        meter = self._meter
        if self._chunks is None:
            up = self._upstream
            self._chunks = up.iter_bytes() if self._decode else iter(up.stream)
        renewal = self._renewal
        try:
            # Iterating again (an SDK draining the body after the last event) reads on.
            for chunk in self._chunks:
                if renewal is not None and self._renewal_due(renewal):
                    renewal.renew()
                out = meter.feed(chunk)
                if out:
                    yield out
            tail = meter.flush()
        except Exception as exc:
            self._end(broke=exc)
            mapped = self._errors(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        if tail:
            yield tail
        self._end(exhausted=True)

    def close(self) -> None:
        try:
            self._upstream.close()
        finally:
            self._end()


class AsyncMeteredStream(_Metered[Awaitable[None]], httpx.AsyncByteStream, AsyncStreamBase):
    """The async twin of `MeteredStream`; ``on_end`` is awaited."""

    @staticmethod
    def _loop() -> asyncio.AbstractEventLoop | None:
        return asyncio.get_running_loop()

    _chunks: AsyncIterator[bytes] | None = None

    async def _end(self, *, broke: BaseException | None = None, exhausted: bool = False) -> None:
        claimed = self._claim(broke, exhausted)
        if claimed is not None:
            on_end, end = claimed
            await on_end(end)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        meter = self._meter
        if self._chunks is None:
            up = self._upstream
            self._chunks = up.aiter_bytes() if self._decode else aiter(up.stream)
        renewal = self._renewal
        try:
            async for chunk in self._chunks:
                if renewal is not None and self._renewal_due(renewal):
                    await renewal.arenew()
                out = meter.feed(chunk)
                if out:
                    yield out
            tail = meter.flush()
        except Exception as exc:
            await self._end(broke=exc)
            mapped = self._errors(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        if tail:
            yield tail
        await self._end(exhausted=True)

    async def aclose(self) -> None:
        try:
            await self._upstream.aclose()
        finally:
            await self._end()
