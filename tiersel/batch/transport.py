"""The job's transport: sends a request only once its reservation is on disk, and notes doubt.

`DurableTransport` wraps whatever transport the job sends through (an httpx async transport or
client, a plain async function, or a sync one run in worker threads). Before a request leaves it
waits for the journal to make the attempt's reservation durable, so a crash can never forget a
request that may have been billed. From the moment the request is handed on until its response
is read whole, the attempt is *in doubt*: if it ends without an answer (read timeout, connection
lost, cancelled), `JournaledLedger` charges it at its worst case rather than releasing it.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tiersel.batch.journal import JobWriter
from tiersel.batch.ledger import LineAccount
from tiersel.http.upstream import CALL_ID

__all__ = ["DurableTransport"]

# Failures that mean the request never reached the provider whole, so it cannot have been billed.
_NEVER_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.ProxyError,
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
)

AsyncSend = Callable[[httpx.Request], Awaitable[httpx.Response]]


class DurableTransport(httpx.AsyncBaseTransport):
    """Journal first, then send (see the module doc). ``inner`` is where requests really go."""

    def __init__(self, inner: Any, writer: JobWriter, *, threads: int = 64) -> None:
        self._writer = writer
        self._pool: ThreadPoolExecutor | None = None
        self._send: AsyncSend = self._adapt(inner, threads)
        self._inner = inner
        self.in_flight = 0
        self.peak_in_flight = 0
        self.accounts: Callable[[str], LineAccount | None] = lambda call_id: None
        """The open line of a call id (the job's ledger's): a request names its call in its
        ``tiersel.call_id`` extension."""

    def _adapt(self, inner: Any, threads: int) -> AsyncSend:
        if isinstance(inner, httpx.AsyncClient):
            return inner.send
        if isinstance(inner, httpx.AsyncBaseTransport):
            return inner.handle_async_request
        if isinstance(inner, (httpx.Client, httpx.BaseTransport)) or not _is_async(inner):
            handle = (
                inner.send
                if isinstance(inner, httpx.Client)
                else inner.handle_request
                if isinstance(inner, httpx.BaseTransport)
                else inner
            )
            self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tiersel-batch")
            pool = self._pool

            async def in_thread(request: httpx.Request) -> httpx.Response:
                ctx = contextvars.copy_context()
                loop = asyncio.get_running_loop()
                response: httpx.Response = await loop.run_in_executor(
                    pool, ctx.run, _read_sync, handle, request
                )
                return response

            return in_thread
        fn: AsyncSend = inner
        return fn

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call_id = request.extensions.get(CALL_ID)
        account = self.accounts(call_id) if isinstance(call_id, str) else None
        await self._writer.durable()
        if account is not None:
            account.in_doubt = True
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            response = await self._send(request)
            await response.aread()
        except _NEVER_SENT:
            if account is not None:
                account.in_doubt = False
            raise
        finally:
            self.in_flight -= 1
        if account is not None:
            account.in_doubt = False
        return response

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _is_async(fn: Any) -> bool:
    return asyncio.iscoroutinefunction(fn) or asyncio.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 (an object with an async __call__)
    )


def _read_sync(
    handle: Callable[[httpx.Request], httpx.Response], request: httpx.Request
) -> httpx.Response:
    # Read whole in the worker thread; ``aread()`` then returns the body without I/O.
    response = handle(request)
    response.read()
    return response
