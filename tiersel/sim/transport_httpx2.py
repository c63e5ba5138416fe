"""The in-process simulator transports for httpx2 clients (the openai 3.x / anthropic 2.x SDKs'
own HTTP library). Same behaviour as `tiersel.sim.transport`; needs ``httpx2`` installed.
"""

from __future__ import annotations

import httpx2

from tiersel.sim.transport import AsyncChunks, SimShell, SyncChunks

__all__ = ["AsyncSimTransport2", "SimTransport2"]


class _SyncStream(SyncChunks, httpx2.SyncByteStream):
    pass


class _AsyncStream(AsyncChunks, httpx2.AsyncByteStream):
    pass


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
