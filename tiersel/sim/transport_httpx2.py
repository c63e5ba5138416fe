"""The in-process simulator transports for httpx2 clients (the openai 3.x / anthropic 2.x SDKs'
own HTTP library). Same behaviour as `tiersel.sim.transport`; needs ``httpx2`` installed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx2

from tiersel.sim.transport import STREAM_BROKEN, SimShell
from tiersel.sim.wire import Rendered

__all__ = ["AsyncSimTransport2", "SimTransport2"]


class _SyncStream(httpx2.SyncByteStream):
    def __init__(self, shell: SimShell, rendered: Rendered, start: float) -> None:
        self._shell, self._rendered, self._start = shell, rendered, start

    def __iter__(self) -> Iterator[bytes]:
        for due, data in self._rendered.chunks:
            self._shell.clock.sleep(self._shell._delay(self._start, due))
            yield data
        if self._rendered.broken:
            raise httpx2.RemoteProtocolError(STREAM_BROKEN)


class _AsyncStream(httpx2.AsyncByteStream):
    def __init__(self, shell: SimShell, rendered: Rendered, start: float) -> None:
        self._shell, self._rendered, self._start = shell, rendered, start

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for due, data in self._rendered.chunks:
            await self._shell.clock.asleep(self._shell._delay(self._start, due))
            yield data
        if self._rendered.broken:
            raise httpx2.RemoteProtocolError(STREAM_BROKEN)


class SimTransport2(SimShell, httpx2.BaseTransport):
    """A sync httpx2 transport answering from the simulated provider (see `SimTransport`)."""

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        rendered, start = self._answer(
            request.method, request.url.path, request.headers, request.read()
        )
        self.clock.sleep(self._delay(start, rendered.at_s))
        if rendered.streamed:
            return httpx2.Response(
                rendered.status,
                headers=list(rendered.headers),
                stream=_SyncStream(self, rendered, start),
                request=request,
            )
        return httpx2.Response(
            rendered.status, headers=list(rendered.headers), content=rendered.body, request=request
        )


class AsyncSimTransport2(SimShell, httpx2.AsyncBaseTransport):
    """The async twin of `SimTransport2`."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        rendered, start = self._answer(
            request.method, request.url.path, request.headers, await request.aread()
        )
        await self.clock.asleep(self._delay(start, rendered.at_s))
        if rendered.streamed:
            return httpx2.Response(
                rendered.status,
                headers=list(rendered.headers),
                stream=_AsyncStream(self, rendered, start),
                request=request,
            )
        return httpx2.Response(
            rendered.status, headers=list(rendered.headers), content=rendered.body, request=request
        )
