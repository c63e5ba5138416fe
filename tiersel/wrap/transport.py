"""`TierTransport` / `AsyncTierTransport`: tier selection for any client built on httpx or httpx2.

Mount one on the client an SDK already takes, and every generation call gets a tier chosen;
nothing at the call sites changes::

    client = openai.OpenAI(
        base_url="https://api.fireworks.ai/inference/v1",
        http_client=httpx2.Client(transport=tiersel.TierTransport(tiersel.Selector())),
    )

Each generation call (``POST .../chat/completions``, ``.../responses``, ``.../completions`` or
``.../messages``; `tiersel.dialects`) is decided by the
selector and sent through the core's one attempt flow (`tiersel.engine.call_flow`): escalation
after a shed, backoff, budget reservation and signals are the core's, not copied here. Every
other request (embeddings, model lists, ...) is passed through untouched, bar tiersel's hint
headers, which never go upstream.

The response carries the decision back in ``x-tiersel-*`` headers (tier, model, cost, attempts),
readable with the SDKs' raw-response APIs. When tiersel has given up on a call, the last error
response goes back with ``x-should-retry: false``, which both SDKs obey, so they do not multiply
the attempts with retries of their own. When no attempt got any response (connection errors,
timeouts), a ``502`` / ``504`` error response stands in for it, for the same reason.

Both transports drive one handler (`tiersel.wrap.handler.Handler`), a generator of the few steps
that differ between sync and async code; each carries them out with its own I/O.
"""

from __future__ import annotations

from typing import Any

from tiersel.engine.effects import Send
from tiersel.engine.results import Reply
from tiersel.http.flavours import (
    AsyncTransportBase,
    SyncTransportBase,
    TransportErrors,
    as_flavour,
    convert_request,
    convert_response,
)
from tiersel.http.reply import aread_body, read_body
from tiersel.http.response import is_stream
from tiersel.http.route import without_hints
from tiersel.selector import Selector
from tiersel.wrap.exchange import CallHook
from tiersel.wrap.handler import (
    Fetch,
    Handler,
    Hold,
    Read,
    Run,
    Step,
    Steps,
    advance,
    outcome,
)
from tiersel.wrap.pace import ahold, hold

__all__ = ["AsyncTierTransport", "TierTransport"]


class _Door:
    """How both transports are built: the `Handler` they drive, and what they show of it."""

    _sync = False

    def __init__(
        self,
        selector: Selector | None = None,
        transport: Any = None,
        *,
        on_call: CallHook | None = None,
        refusals: str = "auto",
    ) -> None:
        sync = self._sync
        self._handler = Handler(selector, transport, on_call=on_call, refusals=refusals, sync=sync)
        if sync:  # a sync transport cannot await its selector's stores
            self.selector.engine.check_sync(type(self).__name__)

    @property
    def selector(self) -> Selector:
        """The `Selector` that decides (the handler's: one per transport, never replaced)."""
        return self._handler.selector

    @property
    def on_call(self) -> CallHook | None:
        return self._handler.exchange.on_call

    def __repr__(self) -> str:
        return self._handler.describe(type(self).__name__)


class TierTransport(_Door, SyncTransportBase):
    """A sync transport that chooses a tier for each generation call; mount it on an
    ``httpx.Client`` or an ``httpx2.Client``.

    - ``selector``: the `Selector` that decides (default: ``Selector()``).
    - ``transport``: where requests go (default: the selector's own transport of this kind when
      it was given one, a simulator's or a mock's; else the real HTTP transport of the client's
      library).
    - ``on_call``: a function handed a frozen `CallRecord` as each routed call ends.
    - ``refusals``: how a call tiersel refuses before sending it (a bad hint, an unknown model,
      no feasible tier, an exhausted budget) comes back: ``"raise"`` its `TierselError`,
      ``"respond"`` with an HTTP error (400, 402 or 422, ``x-should-retry: false``, the message
      in the error body), or ``"auto"`` (the default): respond to the anthropic SDK, which would
      retry any exception a transport raises and report it as a connection error; raise otherwise.

    Per-call requirements come from ``tiersel.requirements(...)`` blocks around the call and
    ``x-tiersel-*`` request headers, over the selector's defaults.

    >>> import httpx2
    >>> from tiersel import Selector
    >>> from tiersel.wrap import TierTransport
    >>> client = httpx2.Client(transport=TierTransport(Selector(api_key="")))
    >>> client.close()
    """

    _sync = True

    def handle_request(self, request: Any) -> Any:
        if self._handler.exchange.abandoned:
            self._handler.exchange.abandoned.drain()
        return self._drive(self._handler.handle(request))

    def _drive(self, gen: Steps) -> Any:
        done, step = advance(gen, None, None)
        while not done:
            done, step = advance(gen, *outcome(self._do, step))
        return step

    def _do(self, step: Step) -> Any:
        if isinstance(step, Fetch):
            response = step.inner.handle_request(step.request)
            streamed = is_stream(step.stream, response)
            return response, None if streamed else read_body(response)
        if isinstance(step, Run):
            run = step

            def send(effect: Send) -> Reply:
                answer: Reply = self._drive(self._handler.attempt(run, effect))
                return answer

            return self.selector.engine.run(run.started, send)
        if isinstance(step, Read):
            return step.request.read()
        if isinstance(step, Hold):
            return hold(step.response, step.check, self.selector.engine.clock, step.whole)
        request = without_hints(step.request, step.flavour)
        sent = convert_request(request, step.inner_flavour, asynchronous=False)
        try:
            response = step.inner.handle_request(sent)
        except TransportErrors as exc:
            raise as_flavour(exc, step.flavour) from exc
        return convert_response(response, step.flavour, asynchronous=False)

    def close(self) -> None:
        self._handler.exchange.abandoned.end_open()
        self._handler.exchange.abandoned.drain()
        for t in self._handler.transports():
            t.close()


class AsyncTierTransport(_Door, AsyncTransportBase):
    """The async twin of `TierTransport`; mount it on an ``httpx.AsyncClient`` or an
    ``httpx2.AsyncClient``."""

    async def handle_async_request(self, request: Any) -> Any:
        if self._handler.exchange.abandoned:
            await self._handler.exchange.abandoned.adrain()
        return await self._drive(self._handler.handle(request))

    async def _drive(self, gen: Steps) -> Any:
        done, step = advance(gen, None, None)
        while not done:
            try:
                value, error = await self._do(step), None
            except Exception as exc:  # thrown back into the handler (see outcome)
                value, error = None, exc
            done, step = advance(gen, value, error)
        return step

    async def _do(self, step: Step) -> Any:
        if isinstance(step, Fetch):
            response = await step.inner.handle_async_request(step.request)
            if is_stream(step.stream, response):
                return response, None
            return response, await aread_body(response)
        if isinstance(step, Run):
            return await self.selector.engine.arun(step.started, lambda e: self._send(step, e))
        if isinstance(step, Read):
            return await step.request.aread()
        if isinstance(step, Hold):
            return await ahold(step.response, step.check, self.selector.engine.clock, step.whole)
        request = without_hints(step.request, step.flavour)
        try:
            response = await step.inner.handle_async_request(
                convert_request(request, step.inner_flavour, asynchronous=True)
            )
        except TransportErrors as exc:
            raise as_flavour(exc, step.flavour) from exc
        return convert_response(response, step.flavour, asynchronous=True)

    async def _send(self, run: Run, effect: Send) -> Reply:
        answer: Reply = await self._drive(self._handler.attempt(run, effect))
        return answer

    async def aclose(self) -> None:
        self._handler.exchange.abandoned.end_open()
        await self._handler.exchange.abandoned.adrain()
        for t in self._handler.transports():
            await t.aclose()
