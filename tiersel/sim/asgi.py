"""The simulator as an ASGI application (written against the ASGI spec; no web framework).

Each request goes to `SimService.handle`; this shell only waits until each part is due, on the
service's clock scaled by its ``time_scale`` (and, while the service holds its gate, until it is
released), and sends it. Streams really stream: every chunk
is sent at its own time, and a simulated broken stream ends with the connection dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tiersel.sim.service import SimService

__all__ = ["SimApp", "SimulatedStreamBreak"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class SimulatedStreamBreak(Exception):
    """Raised mid-response so the server drops the connection: a simulated broken stream."""


class SimApp:
    """ASGI app serving a `SimService` (``uvicorn.run(SimApp(SimService("peak")))``)."""

    def __init__(self, service: SimService) -> None:
        self.service = service

    def __repr__(self) -> str:
        return f"SimApp({self.service!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        clock, scale = self.service.clock, self.service.time_scale
        start = clock.now()
        rendered = self.service.handle(scope["method"], scope["path"], headers, bytes(body))
        released = asyncio.Event()
        loop = asyncio.get_running_loop()
        if self.service.park(scope["path"], lambda: loop.call_soon_threadsafe(released.set)):
            await released.wait()
            start = clock.now()  # its simulated latency runs from the release

        async def until(due_s: float) -> None:
            await clock.asleep(start + due_s * scale - clock.now())

        def gone() -> None:  # the client went away first: nothing more is generated
            self.service.cancelled(rendered, (clock.now() - start) / scale)

        if not await _unless_gone(until(rendered.at_s), receive):
            gone()
            return
        await send(
            {
                "type": "http.response.start",
                "status": rendered.status,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in rendered.headers
                ],
            }
        )
        if not rendered.streamed:
            await send({"type": "http.response.body", "body": rendered.body})
            return
        try:
            for due, data in rendered.chunks:
                if not await _unless_gone(until(due), receive):
                    gone()  # a stream closed early: billed what was generated until then
                    return
                await send({"type": "http.response.body", "body": data, "more_body": True})
        except OSError:
            gone()  # the client went away mid-stream
            return
        if rendered.broken:
            raise SimulatedStreamBreak("simulated broken stream: dropping the connection")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _unless_gone(due: Awaitable[None], receive: Receive) -> bool:
    """Wait for ``due``; False if the client disconnects first (its request is cancelled)."""
    waiting = asyncio.ensure_future(due)
    gone = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not waiting.done():
            waiting.cancel()
    return waiting.done() and not waiting.cancelled()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
