"""The two httpx APIs a client may mount tiersel on: ``httpx`` and ``httpx2``.

The current openai and anthropic SDKs are built on httpx2 and accept a client of either library;
the two have the same transport API but distinct classes, and a client checks that the response
and its stream are its own library's. A `Flavour` holds one library's classes; the streams that
carry one library's body to the other's client subclass both libraries' stream classes.

httpx2 is optional (the ``demo`` and ``dev`` extras bring it): without it only httpx clients can
mount tiersel, and ``import tiersel`` never loads it (the wrapper loads on first use).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import httpx2
else:
    try:
        import httpx2
    except ImportError:  # a core install: httpx2 is an optional extra
        httpx2 = None

__all__ = [
    "HTTPX",
    "HTTPX2",
    "AsyncStreamBase",
    "Flavour",
    "SyncStreamBase",
    "TimeoutErrors",
    "TransportErrors",
    "as_flavour",
    "flavour_of_request",
    "flavour_of_transport",
]


class Flavour:
    """One httpx library: its request, response and default transport classes."""

    __slots__ = (
        "async_transport",
        "byte_stream",
        "headers",
        "module",
        "name",
        "request",
        "response",
        "sync_transport",
    )

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.name: str = module.__name__
        self.request: type[Any] = module.Request
        self.headers: type[Any] = module.Headers
        self.response: type[Any] = module.Response
        self.byte_stream: type[Any] = module.ByteStream
        """A body already in memory, as this library's stream (sync and async)."""
        self.sync_transport: type[Any] = module.HTTPTransport
        self.async_transport: type[Any] = module.AsyncHTTPTransport

    def __repr__(self) -> str:
        return f"Flavour({self.name})"


HTTPX = Flavour(httpx)
# With httpx2.alias_httpx(), `httpx` *is* httpx2: one flavour serves both names.
HTTPX2: Flavour | None = None
if httpx2 is not None:
    HTTPX2 = HTTPX if httpx2 is httpx else Flavour(httpx2)

# Foreign streams subclass both libraries' stream classes: each client checks for its own.
# Without httpx2 (a core install) the second pair of bases is two empty, distinct classes: one
# class named twice in a class's bases is a TypeError.
if TYPE_CHECKING or (httpx2 is not None and httpx2 is not httpx):
    SyncStreamBase = httpx2.SyncByteStream
    AsyncStreamBase = httpx2.AsyncByteStream
else:

    class SyncStreamBase:
        __slots__ = ()

    class AsyncStreamBase:
        __slots__ = ()


# Transports: at run time a subclass of httpx2's base transport only, because the anthropic SDK
# refuses anything with an httpx class in its MRO; httpx clients take any object with the
# transport methods (they never check the class). Type checkers see both bases, so mounting one
# on either library's client type-checks.
if TYPE_CHECKING:

    class SyncTransportBase(httpx.BaseTransport, httpx2.BaseTransport):
        """Either library's sync transport, to a type checker."""

        def handle_request(self, request: Any) -> Any: ...

    class AsyncTransportBase(httpx.AsyncBaseTransport, httpx2.AsyncBaseTransport):
        """Either library's async transport, to a type checker."""

        async def handle_async_request(self, request: Any) -> Any: ...

elif httpx2 is not None:
    SyncTransportBase = httpx2.BaseTransport
    AsyncTransportBase = httpx2.AsyncBaseTransport
else:
    SyncTransportBase = httpx.BaseTransport
    AsyncTransportBase = httpx.AsyncBaseTransport

TimeoutErrors: tuple[type[Exception], ...] = (httpx.TimeoutException,)
TransportErrors: tuple[type[Exception], ...] = (httpx.TransportError,)
if httpx2 is not None and httpx2 is not httpx:
    TimeoutErrors += (httpx2.TimeoutException,)
    TransportErrors += (httpx2.TransportError,)


def as_flavour(exc: Exception, to: Flavour) -> Exception:
    """``exc``, or when it is the other library's transport error, the same error of ``to``'s
    library (an SDK only recognises its own library's errors as connection failures)."""
    if not isinstance(exc, TransportErrors) or isinstance(exc, to.module.TransportError):
        return exc
    cls = getattr(to.module, type(exc).__name__, None)
    if not (isinstance(cls, type) and issubclass(cls, to.module.TransportError)):
        cls = to.module.TransportError
    translated: Exception = cls(str(exc))
    translated.__cause__ = exc
    return translated


def flavour_of_request(request: object) -> Flavour:
    """The library a request object belongs to."""
    if HTTPX2 is not None and isinstance(request, HTTPX2.request):
        return HTTPX2
    if isinstance(request, httpx.Request):
        return HTTPX
    raise TypeError(f"expected an httpx or httpx2 Request, got {type(request).__name__}")


def flavour_of_transport(transport: object) -> Flavour | None:
    """The library of a transport object, or None when it subclasses neither (duck-typed)."""
    if HTTPX2 is not None and isinstance(
        transport, (HTTPX2.module.BaseTransport, HTTPX2.module.AsyncBaseTransport)
    ):
        return HTTPX2
    if isinstance(transport, (httpx.BaseTransport, httpx.AsyncBaseTransport)):
        return HTTPX
    return None


class _ForeignSyncStream(httpx.SyncByteStream, SyncStreamBase):
    """Another library's sync stream, seen through library ``to``'s stream API."""

    __slots__ = ("_inner", "_to")

    def __init__(self, inner: Any, to: Flavour) -> None:
        self._inner = inner
        self._to = to

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._inner
        except TransportErrors as exc:
            raise as_flavour(exc, self._to) from exc

    def close(self) -> None:
        self._inner.close()


class _ForeignAsyncStream(httpx.AsyncByteStream, AsyncStreamBase):
    """Another library's async stream, seen through library ``to``'s stream API."""

    __slots__ = ("_inner", "_to")

    def __init__(self, inner: Any, to: Flavour) -> None:
        self._inner = inner
        self._to = to

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except TransportErrors as exc:
            raise as_flavour(exc, self._to) from exc

    async def aclose(self) -> None:
        await self._inner.aclose()


def convert_request(request: Any, to: Flavour, *, asynchronous: bool) -> Any:
    """``request`` as a request of library ``to`` (itself when it already is one)."""
    if isinstance(request, to.request):
        return request
    wrap = _ForeignAsyncStream if asynchronous else _ForeignSyncStream
    return to.request(
        request.method,
        str(request.url),
        headers=request.headers.raw,
        stream=wrap(request.stream, to),
        extensions=request.extensions,
    )


def convert_response(response: Any, to: Flavour, *, asynchronous: bool) -> Any:
    """A response of library ``to`` streaming ``response``'s body (itself when it is one)."""
    if isinstance(response, to.response):
        return response
    wrap = _ForeignAsyncStream if asynchronous else _ForeignSyncStream
    return to.response(
        response.status_code,
        headers=response.headers.raw,
        stream=wrap(response.stream, to),
        extensions=_response_extensions(response),
    )


def _response_extensions(response: Any) -> dict[str, Any]:
    ext = response.extensions
    return {k: ext[k] for k in ("http_version", "reason_phrase") if k in ext}
