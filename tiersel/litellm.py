"""LiteLLM: a tier chosen for each ``fireworks_ai/...`` call LiteLLM makes (``tiersel[litellm]``).

LiteLLM sends Fireworks calls through its own HTTP handlers (``HTTPHandler`` and
``AsyncHTTPHandler``, ``litellm.llms.custom_httpx.http_handler``), not through the OpenAI SDK, so
``litellm.client_session`` does not reach them. `TierselLiteLLM` makes handlers that send through
a `TierTransport` (or `AsyncTierTransport`) on a selector, and offers two ways in::

    import litellm, tiersel
    from tiersel.litellm import TierselLiteLLM

    tl = TierselLiteLLM(tiersel.Selector()).install()  # every Fireworks call, from now on
    litellm.completion(
        model="fireworks_ai/accounts/fireworks/models/kimi-k3",
        messages=[{"role": "user", "content": "Hi"}],
        metadata={"tiersel": {"deadline_s": 10, "reliability": 0.99}},
    )
    # or, without install(), per call: client=tl.client (sync) / client=tl.aclient (async)

Both hold for ``litellm.completion`` and ``acompletion``, streamed or not, and for a ``Router``'s
calls (give it ``num_retries=0``: tiersel's schedule is the call's retry policy). The call's
attempts, tiers, budget and signals are the transport's. Besides:

- **Requirements** come from the call's ``metadata["tiersel"]`` (the fields of `Requirements`),
  merged over any `tiersel.requirements` block around the call. The handler reads them from
  the call LiteLLM hands it and sets them in a context variable for that request: they are
  never a request header, so nothing of tiersel's can reach the provider. Invalid ones fail
  the call as a 400 would (``litellm.BadRequestError``, naming the field), with nothing sent.
- **Cost**: the response carries tiersel's decision as headers, which LiteLLM keeps in
  ``response._hidden_params["additional_headers"]`` (``llm_provider-x-tiersel-tier``,
  ``-cost-usd``, ...). For a whole (not streamed) response the handler also sets
  ``x-litellm-response-cost`` to tiersel's cost, the header LiteLLM itself reads as the billed
  cost (``litellm.cost_calculator.get_response_cost_from_hidden_params``), so
  ``response._hidden_params["response_cost"]`` and the ``response_cost`` every LiteLLM callback
  sees are what tiersel charged (LiteLLM alone would price a priority call at the standard
  rate: the response does not say which tier served it). A stream's cost is known only when it
  ends: LiteLLM prices it from its usage, tiersel (its ledger, ``on_call``) from the usage and
  the tier that served it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import litellm as _litellm
from litellm.caching.llm_caching_handler import LLMClientCache
from litellm.integrations.custom_logger import CustomLogger
from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler, HTTPHandler
from pydantic import ValidationError

from tiersel.call import Requirements
from tiersel.errors import TierselError
from tiersel.http.context import requirements
from tiersel.selector import Selector
from tiersel.wrap.exchange import CallHook
from tiersel.wrap.transport import AsyncTierTransport, TierTransport

__all__ = [
    "FIREWORKS_HOSTS",
    "METADATA_KEY",
    "InvalidMetadata",
    "TierselLiteLLM",
    "metadata_requirements",
]

METADATA_KEY = "tiersel"
"""The key of a call's ``metadata`` that holds its requirements."""

_COST_HEADER = "x-litellm-response-cost"


class InvalidMetadata(TierselError, ValueError):
    """A call's ``metadata["tiersel"]`` is not a set of `Requirements` fields; names the field."""


FIREWORKS_HOSTS = ("api.fireworks.ai", "us.api.fireworks.ai")
"""The hosts whose calls an installed `TierselLiteLLM` routes (the US-only routers are served
from ``us.api.fireworks.ai``)."""

_TIMEOUT = httpx.Timeout(600.0, connect=5.0)  # LiteLLM's own handlers' default


class TierselLiteLLM(CustomLogger):
    """LiteLLM handlers that choose a tier for each call.

    Two ways in: pass `client` (sync calls) or `aclient` (async calls; one per event loop, as an
    async client cannot cross loops) as ``client=`` to a call, or `install` once, after which
    every Fireworks call LiteLLM makes with no ``client=`` of its own goes through tiersel:
    calls to ``hosts`` only (Fireworks' by default), so another provider's traffic passes by.
    ``on_call`` receives each call's `tiersel.wrap.CallRecord`, as on a `TierTransport`.

    It is a LiteLLM ``CustomLogger`` (with no hooks of its own), so that a LiteLLM proxy can
    load an installed one from its config's ``callbacks`` (see ``docs/litellm-proxy``).
    """

    def __init__(
        self,
        selector: Selector | None = None,
        *,
        on_call: CallHook | None = None,
        hosts: Sequence[str] = FIREWORKS_HOSTS,
    ) -> None:
        super().__init__()
        self.selector = selector if selector is not None else Selector()
        self.on_call = on_call
        self.hosts = tuple(hosts)
        if not self.hosts or not all(isinstance(h, str) and h for h in self.hosts):
            raise ValueError(f"hosts must be non-empty host names, got {hosts!r}")
        # Refusals (no budget left, no tier that meets the requirements) come back as HTTP
        # answers (402, 422; x-should-retry: false), which LiteLLM raises as what they are,
        # not as an exception from the transport, which it would make a retryable 500.
        self._transport = TierTransport(self.selector, on_call=on_call, refusals="respond")
        self._known_tiers = tuple(str(t) for t in self.selector.pricing.tiers)
        self.client: HTTPHandler = self._sync_handler(
            httpx.Client(transport=self._transport, timeout=_TIMEOUT)
        )
        self._mounted: HTTPHandler | None = None
        self._async: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[AsyncTierTransport, dict[bool, AsyncHTTPHandler]]
        ] = weakref.WeakKeyDictionary()
        self._seam: _Seam | None = None
        self._previous: Any = None

    def __repr__(self) -> str:
        state = "installed" if self.installed else "not installed"
        return f"<TierselLiteLLM {state}, hosts {', '.join(self.hosts)}>"

    @property
    def aclient(self) -> AsyncHTTPHandler:
        """The async handler for the running event loop (made on first use in each loop)."""
        return self._async_handler(mounted=False)

    @property
    def installed(self) -> bool:
        """Whether LiteLLM's own handler lookups answer with tiersel's (see `install`)."""
        return self._seam is not None and _litellm.in_memory_llm_clients_cache is self._seam

    def install(self) -> TierselLiteLLM:
        """Make tiersel's handlers LiteLLM's own for calls to ``hosts``; returns self.

        LiteLLM looks its HTTP handlers up in ``litellm.in_memory_llm_clients_cache`` (litellm
        1.110: ``get_httpx_client`` and ``get_async_httpx_client`` in
        ``litellm/llms/custom_httpx/http_handler.py``): this replaces that cache with one that
        answers the lookups for Fireworks calls with tiersel's handlers. `uninstall` puts the
        previous cache back.
        """
        if not self.installed:
            self._previous = _litellm.in_memory_llm_clients_cache
            self._seam = _Seam(self)
            _litellm.in_memory_llm_clients_cache = self._seam
        return self

    def uninstall(self) -> None:
        """Undo `install` (if LiteLLM's cache is still the one it put there)."""
        if self.installed:
            _litellm.in_memory_llm_clients_cache = self._previous
        self._seam = self._previous = None

    def __enter__(self) -> TierselLiteLLM:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def close(self) -> None:
        """Close the sync handlers' clients (async ones close with their loop)."""
        self.uninstall()
        self.client.close()
        if self._mounted is not None:
            self._mounted.close()

    def mounted_client(self) -> HTTPHandler:
        """The sync handler `install` gives LiteLLM: tiersel for ``hosts``, plain for others."""
        if self._mounted is None:
            mounts: dict[str, httpx.BaseTransport] = {
                f"all://{host}": self._transport for host in self.hosts
            }
            self._mounted = self._sync_handler(httpx.Client(mounts=mounts, timeout=_TIMEOUT))
        return self._mounted

    def _sync_handler(self, client: httpx.Client) -> HTTPHandler:
        handler = _SyncHandler(client=client)
        handler.known_tiers = self._known_tiers
        return handler

    def mounted_aclient(self) -> AsyncHTTPHandler:
        """The async handler `install` gives LiteLLM in the running loop."""
        return self._async_handler(mounted=True)

    def _async_handler(self, *, mounted: bool) -> AsyncHTTPHandler:
        loop = asyncio.get_running_loop()
        entry = self._async.get(loop)
        if entry is None:
            transport = AsyncTierTransport(self.selector, on_call=self.on_call, refusals="respond")
            entry = (transport, {})
            self._async[loop] = entry
        transport, handlers = entry
        handler = handlers.get(mounted)
        if handler is None:
            handler = _AsyncHandler(timeout=_TIMEOUT)
            handler.known_tiers = self._known_tiers
            if mounted:
                mounts: dict[str, httpx.AsyncBaseTransport] = {
                    f"all://{host}": transport for host in self.hosts
                }
                handler.client = httpx.AsyncClient(mounts=mounts, timeout=_TIMEOUT)
            else:
                handler.client = httpx.AsyncClient(transport=transport, timeout=_TIMEOUT)
            handlers[mounted] = handler
        return handler


class _Seam(LLMClientCache):
    """LiteLLM's client cache, answering its handler lookups with an owner's handlers: the sync
    one (one key for every provider: ``httpx_client...``; hosts not the owner's pass by) and
    Fireworks' async one (``async_httpx_client...fireworks_ai``)."""

    def __init__(self, owner: TierselLiteLLM) -> None:
        super().__init__()
        self._owner = owner

    def get_cache(self, key: str, loop_bound: bool = True, **kwargs: Any) -> Any:
        if isinstance(key, str):
            if key.startswith("httpx_client"):
                return self._owner.mounted_client()
            if key.startswith("async_httpx_client") and key.endswith("fireworks_ai"):
                return self._owner.mounted_aclient()
        return super().get_cache(key, loop_bound=loop_bound, **kwargs)


class _SyncHandler(HTTPHandler):
    known_tiers: tuple[str, ...] = ()

    def post(self, url: str, *args: Any, **kwargs: Any) -> httpx.Response:
        with _call_requirements(url, kwargs.get("logging_obj"), self.known_tiers):
            response: httpx.Response = super().post(url, *args, **kwargs)
        return _with_cost(response)


class _AsyncHandler(AsyncHTTPHandler):
    known_tiers: tuple[str, ...] = ()

    async def post(self, url: str, *args: Any, **kwargs: Any) -> httpx.Response:
        with _call_requirements(url, kwargs.get("logging_obj"), self.known_tiers):
            response: httpx.Response = await super().post(url, *args, **kwargs)
        return _with_cost(response)


def metadata_requirements(metadata: Any, known_tiers: Sequence[str] = ()) -> dict[str, Any]:
    """The `Requirements` fields a call's ``metadata`` sets under ``"tiersel"`` (none: empty).

    Raises `InvalidMetadata` naming the field when they are not valid requirements, or name a
    tier not in ``known_tiers`` (when given), as an ``x-tiersel-tiers`` header would.
    """
    if not isinstance(metadata, Mapping):
        return {}
    given = metadata.get(METADATA_KEY)
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise InvalidMetadata(
            f'metadata["{METADATA_KEY}"] must be a mapping of requirements,'
            f" got {type(given).__name__}"
        )
    fields = dict(given)
    try:
        req = Requirements(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise InvalidMetadata(f'metadata["{METADATA_KEY}"].{where}: {err["msg"]}') from None
    except TypeError as exc:  # a key that is not a string
        raise InvalidMetadata(f'metadata["{METADATA_KEY}"]: {exc}') from None
    unknown = [str(t) for t in req.tiers or () if known_tiers and str(t) not in known_tiers]
    if unknown:
        raise InvalidMetadata(
            f'metadata["{METADATA_KEY}"].tiers: unknown tier(s) {", ".join(unknown)}'
            f" (known: {', '.join(known_tiers)})"
        )
    return fields


@contextmanager
def _call_requirements(url: str, logging_obj: Any, known_tiers: Sequence[str]) -> Iterator[None]:
    """The requirements of the call LiteLLM is sending, in force for its request.

    Invalid ones fail the call as an HTTP 400 would (LiteLLM raises ``BadRequestError``, which
    no retry repeats), with nothing sent.
    """
    details = getattr(logging_obj, "model_call_details", None)
    params = details.get("litellm_params") if isinstance(details, Mapping) else None
    metadata = params.get("metadata") if isinstance(params, Mapping) else None
    try:
        fields = metadata_requirements(metadata, known_tiers)
    except InvalidMetadata as exc:
        request = httpx.Request("POST", url)
        error = {"type": "invalid_request_error", "code": "invalid_metadata", "message": str(exc)}
        refusal = httpx.Response(400, json={"error": error}, request=request)
        raise httpx.HTTPStatusError(str(exc), request=request, response=refusal) from exc
    if not fields:
        yield
        return
    with requirements(**fields):
        yield


def _with_cost(response: httpx.Response) -> httpx.Response:
    """``response``, with tiersel's cost as LiteLLM's billed cost where tiersel knows it: a
    whole response's, its usage priced (``actual``), plus the estimated bills of attempts given
    up on before it (``estimate``: a timeout, a race's loser), which the call cost too. A
    stream's headers leave before its usage: LiteLLM prices it itself."""
    headers = response.headers
    basis = headers.get("x-tiersel-cost-basis")
    streamed = headers.get("content-type", "").startswith("text/event-stream")
    whole = basis == "actual" or (basis == "estimate" and not streamed)
    if whole and "x-tiersel-cost-usd" in headers:
        headers[_COST_HEADER] = headers["x-tiersel-cost-usd"]
    return response
