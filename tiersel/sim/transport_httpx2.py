"""The in-process simulator transports for httpx2 clients (the openai 3.x / anthropic 2.x SDKs'
own HTTP library). Same behaviour as `tiersel.sim.transport`; needs ``httpx2`` installed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx2

from tiersel.sim.transport import SimShell

__all__ = ["AsyncSimTransport2", "SimTransport2"]


class _SyncStream(httpx2.SyncByteStream):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks


class _AsyncStream(httpx2.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks


class SimTransport2(SimShell, httpx2.BaseTransport):
    """A sync httpx2 transport answering from the simulated provider (see `SimTransport`)."""

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response: httpx2.Response = self.respond_sync(httpx2, _SyncStream, request, request.read())
        return response


class AsyncSimTransport2(SimShell, httpx2.AsyncBaseTransport):
    """The async twin of `SimTransport2`."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        response: httpx2.Response = await self.respond_async(httpx2, _AsyncStream, request, body)
        return response
