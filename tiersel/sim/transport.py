"""In-process httpx transports that answer from the simulated provider: no sockets, no server.

``SimTransport`` (sync) and ``AsyncSimTransport`` plug into ``httpx.Client(transport=...)`` /
``httpx.AsyncClient(transport=...)``, an SDK's ``http_client``, or ``tiersel.Selector(transport=)``.
The httpx2 twins are in `tiersel.sim.transport_httpx2`.

Time. Each transport runs a `SimService` on an injected clock (a new `tiersel.clock.FakeClock` by
default). With ``wait=True`` (the default) it waits out the simulated latency *through that
clock*: the response returns once its due time has come (``clock.sleep``), and a stream's chunks
arrive at their due times as it is read. On a `FakeClock` sleeping advances the clock at once, so
nothing really waits, yet anything reading the same clock (a `Selector` given the same
`FakeClock`) measures the simulated latencies. With ``wait=False`` nothing waits at all and the
latencies are only reported, in the ``x-sim-ttft-s`` and ``x-sim-duration-s`` response headers.

Concurrent calls on a `FakeClock` overlap in virtual time as they would in real time when the
code runs on `tiersel.virtual_time.run_virtual` (``run_batch`` and ``tiersel batch --sim`` do);
on any other event loop each call's wait advances the shared clock in turn, so waits add up.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any

import httpx

from tiersel.clock import Clock, FakeClock
from tiersel.pricing import Pricing
from tiersel.sim.scenarios import Scenario
from tiersel.sim.service import SimService
from tiersel.sim.wire import Rendered

__all__ = ["AsyncChunks", "AsyncSimTransport", "SimShell", "SimTransport", "SyncChunks"]

STREAM_BROKEN = "peer closed connection without sending complete message body (simulated)"


class SimShell:
    """What the sync and async transports (httpx and httpx2) share: the service and its clock."""

    def __init__(
        self,
        service: SimService | None = None,
        *,
        scenario: Scenario | str | Path = "calm",
        seed: int = 0,
        clock: Clock | None = None,
        time_scale: float = 1.0,
        pricing: Pricing | None = None,
        wait: bool = True,
    ) -> None:
        if service is not None and not isinstance(service, SimService):
            raise TypeError(
                f"service must be a SimService, got {service!r}; for a scenario, pass"
                f" scenario={service!r}"
            )
        if service is None:
            service = SimService(
                scenario,
                seed=seed,
                clock=clock if clock is not None else FakeClock(),
                time_scale=time_scale,
                pricing=pricing,
            )
        elif clock is not None and clock is not service.clock:
            raise ValueError("pass the clock to the SimService, not also to the transport")
        self.service = service
        self.wait = wait

    @property
    def clock(self) -> Clock:
        return self.service.clock

    def stats(self) -> dict[str, Any]:
        """What ``GET /sim/stats`` returns: counts by tier, model and status, and red flags."""
        return self.service.stats()

    def reset(self, *, seed: int | None = None, time_s: float | None = None) -> None:
        """Forget every request; optionally reseed and move scenario time to ``time_s``."""
        self.service.reset(seed=seed, time_s=time_s)

    def _answer(self, method: str, path: str, headers: Any, body: bytes) -> tuple[Rendered, float]:
        start = self.service.clock.now()
        rendered = self.service.handle(method, path, {k: v for k, v in headers.items()}, body)
        return rendered, start

    def _delay(self, start: float, due_s: float) -> float:
        """Clock seconds until ``due_s`` scenario seconds after ``start`` (0 when not waiting)."""
        if not self.wait:
            return 0.0
        return max(0.0, start + due_s * self.service.time_scale - self.service.clock.now())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.service!r}, wait={self.wait})"

    # The transports of both libraries answer through these: ``lib`` is the ``httpx`` or
    # ``httpx2`` module, ``stream`` that library's byte stream over the chunks.

    def respond_sync(self, lib: Any, stream: Any, request: Any, body: bytes) -> Any:
        """Answer ``request`` (its ``body`` read), waiting on the clock until it is due."""
        rendered, start = self._answer(request.method, request.url.path, request.headers, body)
        limit = _read_timeout(request)
        delay = self._delay(start, rendered.at_s)
        self.clock.sleep(min(delay, limit))
        if delay > limit:
            raise self.gave_up(lib, request, rendered, start)
        if rendered.streamed:
            reading = _Reading(self, rendered, start)
            chunks = self._chunks(lib, request, reading, limit)
            return self._response(lib, request, rendered, stream(chunks, reading))
        return self._response(lib, request, rendered, None)

    async def respond_async(self, lib: Any, stream: Any, request: Any, body: bytes) -> Any:
        """The async twin of `respond_sync`."""
        rendered, start = self._answer(request.method, request.url.path, request.headers, body)
        limit = _read_timeout(request)
        delay = self._delay(start, rendered.at_s)
        await self.clock.asleep(min(delay, limit))
        if delay > limit:
            raise self.gave_up(lib, request, rendered, start)
        if rendered.streamed:
            reading = _Reading(self, rendered, start)
            chunks = self._achunks(lib, request, reading, limit)
            return self._response(lib, request, rendered, stream(chunks, reading))
        return self._response(lib, request, rendered, None)

    def gone(self, rendered: Rendered, start: float) -> None:
        """The client went away (closed the stream, or timed out): the provider stops generating
        and bills the prompt and the output so far, as the simulator's server does."""
        self.service.cancelled(rendered, (self.clock.now() - start) / self.service.time_scale)

    def gave_up(self, lib: Any, request: Any, rendered: Rendered, start: float) -> Exception:
        """The client's read timeout passed before the next bytes were due: its error, raised
        where an httpx transport raises it, the request billed as given up on (`gone`)."""
        self.gone(rendered, start)
        error: Exception = lib.ReadTimeout(
            "timed out (simulated: the client's read timeout)", request=request
        )
        return error

    @staticmethod
    def _response(lib: Any, request: Any, rendered: Rendered, stream: Any) -> Any:
        headers = list(rendered.headers)
        if stream is not None:
            return lib.Response(rendered.status, headers=headers, stream=stream, request=request)
        return lib.Response(
            rendered.status, headers=headers, content=rendered.body, request=request
        )

    def _chunks(
        self, lib: Any, request: Any, reading: _Reading, limit: float
    ) -> Generator[bytes, None, None]:
        """A streamed body's chunks, each at its due time; a broken stream ends in ``lib``'s
        protocol error, as a dropped connection does, and one whose next chunk is due after
        the client's read timeout (``limit``, clock seconds) in its timeout error. A stream
        closed before its end is billed what was generated until then."""
        with reading:
            for wait, data in self._steps(reading, limit):
                self.clock.sleep(wait)
                yield reading.arrived(lib, request, data)
            reading.end(lib)

    async def _achunks(
        self, lib: Any, request: Any, reading: _Reading, limit: float
    ) -> AsyncGenerator[bytes, None]:
        with reading:
            for wait, data in self._steps(reading, limit):
                await self.clock.asleep(wait)
                yield reading.arrived(lib, request, data)
            reading.end(lib)

    def _steps(self, reading: _Reading, limit: float) -> Iterator[tuple[float, bytes | None]]:
        """How long to wait for each chunk, and the chunk; None when the client's read timeout
        (``limit``) passes before it is due (the last step then). The last chunk's arrival ends
        the reading: all was generated."""
        chunks = reading.rendered.chunks
        for i, (due, data) in enumerate(chunks):
            delay = self._delay(reading.start, due)
            if delay > limit:
                yield limit, None
                return
            reading.ended = i == len(chunks) - 1
            yield delay, data


class _Reading:
    """One simulated stream as its client reads it: unless it was read to its ``ended``, its
    request is billed as given up on when the reading stops (`SimShell.gone`), whether its
    chunks' generator was closed while it ran or its body was closed before it began. A
    transport that does not wait (``wait=False``) moves no clock: nothing can be given up on."""

    def __init__(self, shell: SimShell, rendered: Rendered, start: float) -> None:
        self.shell, self.rendered, self.start = shell, rendered, start
        self.ended = False
        self.closed = False  # its client closed it

    def close(self) -> None:
        """Its client closed it: billed now (`stop`); a reader waiting in it gets an error."""
        self.closed = True
        self.stop()

    def __enter__(self) -> _Reading:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """The reading stopped (once: a later stop bills nothing more)."""
        if not self.ended:
            self.ended = True
            if self.shell.wait:
                self.shell.gone(self.rendered, self.start)

    def end(self, lib: Any) -> None:
        """Every chunk was read: a broken stream ends in ``lib``'s protocol error, as a dropped
        connection does (billed whole: it was all generated)."""
        self.ended = True
        if self.rendered.broken:
            raise lib.RemoteProtocolError(STREAM_BROKEN)

    def arrived(self, lib: Any, request: Any, data: bytes | None) -> bytes:
        """``data``, or the client's timeout error when none came in time (`SimShell.gave_up`),
        or ``lib.ReadError`` when the stream was closed (by another thread or task) while its
        reader waited for it."""
        if self.closed:
            raise lib.ReadError("the stream was closed while it was read", request=request)
        if data is None:
            self.ended = True  # (billed by gave_up)
            raise self.shell.gave_up(lib, request, self.rendered, self.start)
        return data


def _read_timeout(request: Any) -> float:
    """The most clock seconds the client waits for the next bytes (``inf``: no limit): the read
    timeout httpx and httpx2 carry in the request's ``timeout`` extension."""
    timeout = request.extensions.get("timeout") or {}
    read = timeout.get("read") if isinstance(timeout, dict) else None
    return float(read) if read is not None else math.inf


class SyncChunks:
    """A simulated body over its chunks' generator, which a close ends (the generator then bills
    what was generated, as the server does when its client goes away). Mixed into each HTTP
    library's own byte stream class."""

    def __init__(self, chunks: Generator[bytes, None, None], reading: _Reading) -> None:
        self._chunks, self._reading = chunks, reading

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        self._reading.close()  # (a generator closed before it began runs none of its body)
        if inspect.getgeneratorstate(self._chunks) != inspect.GEN_RUNNING:
            # (else its reader, in another thread, ends it at its next chunk)
            self._chunks.close()


class AsyncChunks:
    """The async twin of `SyncChunks`."""

    def __init__(self, chunks: AsyncGenerator[bytes, None], reading: _Reading) -> None:
        self._chunks, self._reading = chunks, reading

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def aclose(self) -> None:
        self._reading.close()
        if not getattr(self._chunks, "ag_running", False):
            # (else its reader, in another task, ends it at its next chunk)
            await self._chunks.aclose()


class _SyncStream(SyncChunks, httpx.SyncByteStream):
    pass


class _AsyncStream(AsyncChunks, httpx.AsyncByteStream):
    pass


class SimTransport(SimShell, httpx.BaseTransport):
    """A sync httpx transport answering from the simulated provider.

    >>> from tiersel.clock import FakeClock
    >>> clock = FakeClock()
    >>> client = httpx.Client(transport=SimTransport(scenario="calm", clock=clock),
    ...                       base_url="http://sim/inference/v1")
    >>> r = client.post("/chat/completions", json={"model": "accounts/fireworks/models/kimi-k3",
    ...     "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20})
    >>> r.status_code, r.json()["usage"]["completion_tokens"], clock.now() > 0
    (200, 20, True)
    """

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response: httpx.Response = self.respond_sync(httpx, _SyncStream, request, request.read())
        return response


class AsyncSimTransport(SimShell, httpx.AsyncBaseTransport):
    """The async twin of `SimTransport` (waits with ``await clock.asleep``)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        response: httpx.Response = await self.respond_async(httpx, _AsyncStream, request, body)
        return response
