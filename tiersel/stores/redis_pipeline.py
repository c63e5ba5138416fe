"""Scripts that concurrent asyncio tasks run, sent together: one pipeline per round trip.

With many calls in flight, each waiting on its own EVALSHA, most of the time goes to per-command
client overhead and round trips, not to the scripts. `AsyncScripts` queues the scripts that
tasks ask for while a round trip is under way and sends them all in the next one (a pipeline,
not a transaction: each script is atomic by itself, and nothing needs more). A lone call still
goes at once, in a pipeline of one.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio
import redis.exceptions

from tiersel.stores.redis_connection import TIMEOUTS, UNREACHABLE
from tiersel.virtual_time import real_io

__all__ = ["AsyncScripts"]

_Pending = tuple[str, Sequence[bytes], Sequence[str | int | float], "asyncio.Future[Any]"]


class AsyncScripts:
    """Runs named Lua scripts on an asyncio client, pipelining concurrent calls.

    ``sources`` maps a name to the script's text. A script the server does not know yet
    (a new or restarted server) is loaded and run again in the same `run`. A batch whose
    connection fails is sent again up to ``retries`` times (only for idempotent scripts).
    """

    def __init__(
        self, client: redis.asyncio.Redis, sources: Mapping[str, str], *, retries: int
    ) -> None:
        self.client = client
        self._retries = retries
        self._sources = dict(sources)
        self._shas = {
            name: hashlib.sha1(text.encode()).hexdigest().encode() for name, text in sources.items()
        }
        self._queue: list[_Pending] = []
        self._sender: asyncio.Task[None] | None = None

    async def run(self, name: str, keys: Sequence[bytes], args: Sequence[str | int | float]) -> Any:
        """Run script ``name`` with ``keys`` and ``args``; its reply, or the error it raised."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((name, keys, args, future))
        if self._sender is None:
            # Sent once the tasks already runnable have queued theirs: they share the trip.
            self._sender = asyncio.get_running_loop().create_task(self._send_all())
        return await future

    async def _send_all(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send(batch)
        finally:
            self._sender = None
            # Cancelled (the loop is closing): nothing waits forever on a trip never made.
            for *_, future in self._queue:
                if not future.done():
                    future.cancel()

    async def _send(self, batch: list[_Pending]) -> None:
        with real_io():  # on a virtual clock, the trip takes real time (`tiersel.virtual_time`)
            await self._trip(batch)

    async def _trip(self, batch: list[_Pending]) -> None:
        try:
            replies = await self._pipeline(batch)
            unknown = [
                i for i, r in enumerate(replies) if isinstance(r, redis.exceptions.NoScriptError)
            ]
            if unknown:
                for name in {batch[i][0] for i in unknown}:
                    await self.client.script_load(self._sources[name])
                again = await self._pipeline([batch[i] for i in unknown])
                for i, reply in zip(unknown, again, strict=True):
                    replies[i] = reply
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for *_, future in batch:
                future.cancel()
            raise
        for (*_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipeline(self, batch: Sequence[_Pending]) -> list[Any]:
        """Send ``batch`` in one write on one pooled connection; read its replies in order.

        Packed here rather than by a redis-py pipeline: with many small scripts a batch, redis-py's
        general packing and bookkeeping took most of the client's time.
        """
        data = b"".join(
            _pack((b"EVALSHA", self._shas[name], b"%d" % len(keys), *keys, *map(_arg, args)))
            for name, keys, args, _ in batch
        )
        pool = self.client.connection_pool
        for attempt in range(self._retries + 1):
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                await conn.send_packed_command(data, check_health=False)
                replies: list[Any] = []
                for _ in batch:
                    try:
                        replies.append(await conn.read_response())
                    except redis.exceptions.ResponseError as exc:  # this script's own error
                        replies.append(exc)
                return replies
            except UNREACHABLE as exc:
                await conn.disconnect()  # half-read: this connection cannot be trusted again
                if attempt == self._retries or isinstance(exc, TIMEOUTS):
                    raise  # (a server that hangs is not waited on again: see TIMEOUTS)
                await asyncio.sleep(0.02 * 2**attempt)
            except BaseException:
                await conn.disconnect()
                raise
            finally:
                await pool.release(conn)
        raise AssertionError("unreachable")  # the loop returns or raises


def _arg(value: str | int | float) -> bytes:
    if isinstance(value, str):
        return value.encode()
    return repr(value).encode()


def _pack(args: Sequence[bytes]) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)
