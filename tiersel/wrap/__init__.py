"""Tier selection for the clients people already use.

Mount a `TierTransport` (sync) or `AsyncTierTransport` on the httpx or httpx2 client an SDK
takes, and every generation call (chat completions, the Responses API, text completions,
Anthropic messages) gets a tier chosen by the `Selector`::

    import httpx2, openai, tiersel

    client = openai.OpenAI(
        base_url="https://api.fireworks.ai/inference/v1",
        http_client=httpx2.Client(transport=tiersel.TierTransport(tiersel.Selector())),
    )
    with tiersel.requirements(deadline_s=10, reliability=0.99):
        reply = client.chat.completions.create(model="kimi-k3", messages=[...])

- Requirements per call, from (each overriding the one before, field by field) the selector's
  defaults, the innermost ``tiersel.requirements(...)`` block (a context variable: per thread,
  per asyncio task), and ``x-tiersel-*`` request headers (`HINT_HEADERS`; bad values raise
  `InvalidHint`). Hint headers are never sent upstream.
- Streams (SSE) pass through unbuffered; time to first token, output tokens/s and usage are read
  from them; the call is recorded and charged when the stream ends, breaks or is closed.
- The decision comes back in response headers: ``x-tiersel-tier``, ``-model``, ``-attempts``,
  ``-tried``, ``-cost-usd`` (for a stream: its expected cost, the real one being known only at
  its end; ``-cost-basis`` says which), ``-call-id``; and in a frozen `CallRecord` handed to
  the ``on_call`` hook when the call ends.
- When tiersel gives up, the SDK gets the last error with ``x-should-retry: false`` and does not
  retry on its own. Other requests (embeddings, model lists, ...) pass through untouched.
- The API key is the client's: tiersel forwards the request's own credentials and never logs,
  stores or shows them.
"""

from tiersel.http.context import current_requirements, requirements
from tiersel.http.hints import HINT_HEADERS, InvalidHint
from tiersel.wrap.exchange import CallHook
from tiersel.wrap.record import CallRecord, CostBasis
from tiersel.wrap.transport import AsyncTierTransport, TierTransport

__all__ = [
    "HINT_HEADERS",
    "AsyncTierTransport",
    "CallHook",
    "CallRecord",
    "CostBasis",
    "InvalidHint",
    "TierTransport",
    "current_requirements",
    "requirements",
]
