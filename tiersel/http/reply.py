"""What one attempt got back, read into the engine's `Reply`: the body read whole (or left
streaming), its headers, or the transport error that stood in for an answer."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from tiersel.dialects import (
    parse_json,
)
from tiersel.engine.results import Reply
from tiersel.http.flavours import TimeoutErrors


def already_read(response: Any) -> bool:
    """Whether ``response``'s body was read before tiersel saw it (its stream is spent)."""
    return getattr(response, "is_stream_consumed", False) is True


def encoded(response: Any) -> bool:
    """Whether ``response``'s body is content-encoded on the wire (reading it decodes it)."""
    return any(
        k.lower() == b"content-encoding" and v.strip().lower() != b"identity"
        for k, v in response.headers.raw
    )


def _fast(response: Any, keep: bool) -> bool:
    """Whether ``response``'s body may be read straight from its stream: unencoded, unread, and
    not to be kept on the response (``Response.read()`` keeps it, for ``.json()``, but its
    decoding machinery costs tens of microseconds a call). A response an inner transport has
    read already (a logging wrapper does) is taken as it is: reading a spent stream again
    would wait on a finished connection."""
    return not (keep or encoded(response) or already_read(response))


def read_body(response: Any, *, keep: bool = False) -> bytes:
    """``response``'s whole body, decoded; ``keep`` leaves it on the response too."""
    if not _fast(response, keep):
        body: bytes = response.read()
        return body
    try:
        return b"".join(response.stream)
    finally:
        response.close()


async def aread_body(response: Any, *, keep: bool = False) -> bytes:
    """The async twin of `read_body`."""
    if not _fast(response, keep):
        body: bytes = await response.aread()
        return body
    try:
        return b"".join([chunk async for chunk in response.stream])
    finally:
        await response.aclose()


def reply(response: Any, content: bytes | None, elapsed_s: float) -> Reply:
    """What one attempt got back, for the attempt flow: ``content`` is the body read whole, or
    None for a stream left to be read by the caller."""
    headers = ReplyHeaders(response)
    status = response.status_code
    if content is None:
        return Reply(status, headers, None, elapsed_s, True, raw=response)
    # An error's arrival on the wall clock dates a Retry-After given as an HTTP date.
    wall = time.time() if status >= 400 else None
    return Reply(
        status,
        headers,
        parse_json(content),
        elapsed_s,
        raw=response,
        wall_s=wall,
        content=content,
    )


class ReplyHeaders(Mapping[str, str]):
    """A response's headers for the attempt flow (`tiersel.dialects.classify` reads several on
    an error), lower-cased in a plain dict, far cheaper to look up than an httpx ``Headers``.
    The dict is built when first read: a successful reply's headers usually never are."""

    __slots__ = ("_lowered", "_response")

    def __init__(self, response: Any) -> None:
        self._response = response
        self._lowered: dict[str, str] | None = None

    def _dict(self) -> dict[str, str]:
        lowered = self._lowered
        if lowered is None:
            lowered = self._lowered = {
                k.lower().decode("latin-1"): v.decode("latin-1")
                for k, v in self._response.headers.raw
            }
        return lowered

    def __getitem__(self, key: str) -> str:
        return self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return f"ReplyHeaders({self._dict()!r})"


def no_reply(exc: BaseException, started: float, now: float) -> Reply:
    """An attempt that got no response: a timeout or another transport error."""
    if isinstance(exc, TimeoutErrors):
        return Reply(0, {}, None, now - started, timed_out=True, error="timed out")
    return Reply(0, {}, None, now - started, error=failure(exc))


def failure(exc: BaseException) -> str:
    """What went wrong with an attempt that got no response, for its record: the error's class,
    its message, and the server it was trying (scheme, host and port only: a path or query may
    hold a key), e.g. ``ConnectError: [Errno 111] Connection refused (http://127.0.0.1:1)``."""
    said = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    try:
        url = exc.request.url  # type: ignore[attr-defined]  # httpx's and httpx2's errors
    except (AttributeError, RuntimeError):  # (RuntimeError: an error raised with no request)
        return said
    port = f":{url.port}" if url.port is not None else ""
    return f"{said} ({url.scheme}://{url.host}{port})"
