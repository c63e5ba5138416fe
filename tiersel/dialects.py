"""Request and response shapes of the API dialects tiersel routes.

The four generation endpoints Fireworks serves (docs.fireworks.ai/api-reference): OpenAI-compatible
chat completions (``/chat/completions``), the Responses API (``/responses``), text completions
(``/completions``), and Anthropic-compatible messages (``/messages``). Here: applying a decision to
a body, reading the output cap, the prompt, the token usage and the tier that served, and
classifying errors. Pure functions; no I/O.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from tiersel.decision import Step
from tiersel.errors import RequestNotUnderstood, shown
from tiersel.signals import Outcome

__all__ = [
    "HINT_PREFIX",
    "IMAGE_TOKENS_BOUND",
    "STORED_CONTEXT_FIELDS",
    "TEMPLATE_TOKENS_BOUND",
    "TOKEN_LIMIT",
    "Classified",
    "Dialect",
    "Usage",
    "apply_step",
    "check_reservable",
    "check_token_count",
    "classify",
    "dialect_for_path",
    "estimate_input_tokens",
    "input_token_bound",
    "input_tokens",
    "max_output_tokens",
    "prompt_of",
    "read_usage",
    "text_bytes",
]

HINT_PREFIX = "x-tiersel-"
"""Request headers with this prefix are tiersel's own hints: read, then never sent upstream."""

TOKEN_LIMIT = 2**53
"""The largest token count tiersel accepts: the largest integer a float holds exactly. Costs and
latencies are computed in floats, and far larger counts overflow them; no real call comes near."""

_SHED_STATUSES = frozenset({503, 529, 498})
_RETRYABLE_ERRORS = frozenset({500, 502, 504})


class Dialect(str, enum.Enum):
    """A generation endpoint's request and response shape."""

    openai = "openai"
    """OpenAI-compatible chat completions: ``messages`` in, ``choices`` out."""
    anthropic = "anthropic"
    """Anthropic-compatible messages: ``messages`` and ``system`` in, ``content`` out."""
    responses = "responses"
    """The OpenAI Responses API: ``input`` and ``instructions`` in, ``output`` items out; a
    stream of typed events ending in ``response.completed`` (or ``.incomplete`` when the output
    cap cut it, or ``.failed``), whose response carries the usage."""
    completions = "completions"
    """Text completions: ``prompt`` in, ``choices[].text`` out."""

    @property
    def chunked_usage(self) -> bool:
        """Whether a stream reports usage only when asked (``stream_options.include_usage``),
        in a chunk of its own with no choices: chat and text completions."""
        return self is Dialect.openai or self is Dialect.completions


_OUTPUT_FIELDS = {
    Dialect.openai: ("max_completion_tokens", "max_tokens"),
    Dialect.anthropic: ("max_tokens",),
    Dialect.responses: ("max_output_tokens",),
    Dialect.completions: ("max_tokens",),
}

_PROMPT_FIELDS = {
    Dialect.openai: ("messages", "system"),
    Dialect.anthropic: ("messages", "system"),
    Dialect.responses: ("input", "instructions"),
    Dialect.completions: ("prompt", None),
}

STORED_CONTEXT_FIELDS = ("previous_response_id", "conversation")
"""Responses API fields that add a conversation stored upstream to the prompt: tiersel cannot see
it, so such a call's prompt has no bound (`input_tokens` counts only what the body holds)."""


def dialect_for_path(path: str) -> Dialect | None:
    """The dialect of a generation endpoint, or None for any other path (passed through)."""
    p = path.rstrip("/")
    if p.endswith("/chat/completions"):
        return Dialect.openai
    if p.endswith("/messages"):
        return Dialect.anthropic
    if p.endswith("/responses"):
        return Dialect.responses
    if p.endswith("/completions"):
        return Dialect.completions
    return None


def generation_dialect(path: str) -> Dialect:
    """The dialect of a generation endpoint; `RequestNotUnderstood` for any other path."""
    dialect = dialect_for_path(path)
    if dialect is None:
        raise RequestNotUnderstood(
            f"{shown(path)} is not a generation path (chat completions, responses,"
            " completions or messages)"
        )
    return dialect


def max_output_tokens(body: Mapping[str, Any], dialect: Dialect) -> int | None:
    """The call's output cap, as the body states it (None when it states none).

    Raises `RequestNotUnderstood` naming the field when the cap is not a positive integer of at
    most `TOKEN_LIMIT`.
    """
    for name in _OUTPUT_FIELDS[dialect]:
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise RequestNotUnderstood(f"{name} must be a positive integer, got {shown(value)}")
            return check_token_count(name, value)
    return None


def check_token_count(name: str, value: int) -> int:
    """``value``, if it is at most `TOKEN_LIMIT`; else `RequestNotUnderstood` naming ``name``.

    >>> check_token_count("max_tokens", 10**400)
    Traceback (most recent call last):
    ...
    tiersel.errors.RequestNotUnderstood: max_tokens must be at most ... got a 401-digit number
    """
    if value > TOKEN_LIMIT:
        raise RequestNotUnderstood(
            f"{name} must be at most {TOKEN_LIMIT} (2**53), got {_describe_int(value)}"
        )
    return value


def _describe_int(value: int) -> str:
    """An integer as an error message shows it: its digits, or how many there are when many."""
    if value.bit_length() > 14_000:  # str() refuses past 4300 digits; this is about 4200
        return "a number of more than 4000 digits"
    text = str(abs(value))
    return str(value) if len(text) <= 30 else f"a {len(text)}-digit number"


IMAGE_TOKENS_BOUND = 16_384
"""Prompt tokens one image may cost at most, for the input bound: Qwen2-VL-style encoders spend a
token per 28x28-pixel patch, up to 12,845,056 pixels (16,384 patches) by default. An image part's
own bytes (a URL or base64 data) are not counted against the bound; this is, per image."""

TEMPLATE_TOKENS_BOUND = 128
"""Prompt tokens in no message: what a chat template adds (role markers, a default system prompt,
tool-use instructions), on top of the message's own bytes."""

_IMAGE_TYPES = frozenset({"image_url", "image", "input_image"})
_UNCOUNTED_KEYS = ("role", "type")


def _utf8_len(text: str) -> int:
    # An ASCII string's length is its size in bytes: no need to encode it. A lone surrogate
    # ("\ud800", which JSON allows) counts as the 3 bytes it would take.
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


_CYCLE_CHECK_AT = 100_000
"""Objects a walk of a prompt has entered when it checks, once, that the prompt holds no
reference cycle (only a body built in Python can, and the walk would never end): a JSON body
of that size is rare, and the check costs one more walk."""


def refuse_cycles(root: Any) -> None:
    """Raise `RequestNotUnderstood` naming where ``root`` (a prompt built in Python) holds itself
    (a dict or list that contains itself, at any depth); nothing for one that does not."""
    path: list[str] = []
    on_path: set[int] = set()
    # Each frame: a container and an iterator over its (label, child) pairs.
    frames: list[tuple[Any, Any]] = []

    def enter(value: Any) -> None:
        items: Any
        if isinstance(value, Mapping):
            items = ((f"[{k!r}]", v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            items = ((f"[{i}]", v) for i, v in enumerate(value))
        else:
            return
        on_path.add(id(value))
        frames.append((value, iter(items)))

    enter(root)
    while frames:
        value, items = frames[-1]
        step = next(items, None)
        if step is None:
            frames.pop()
            on_path.discard(id(value))
            if path:
                path.pop()
            continue
        label, child = step
        if id(child) in on_path:
            where = "".join([*path, label])
            raise RequestNotUnderstood(
                f"the prompt holds a reference cycle: the value at {where} contains itself"
                " (a body built in Python; it cannot be sent as JSON)"
            )
        if isinstance(child, (Mapping, list, tuple)):
            path.append(label)
            enter(child)


def _measure(root: Any) -> tuple[int, int, int]:
    """``(text, bound, images)`` of a request's messages (or system prompt, or tools):

    - ``text``: UTF-8 bytes of its string values, but roles and part types (the estimate's basis);
    - ``bound``: UTF-8 bytes of everything a chat template could render from it (keys, values,
      numbers, punctuation), image data left out: at least one byte per token for BPE tokenizers;
    - ``images``: how many image parts it holds.

    Walks with a stack of its own, so nesting of any depth is no `RecursionError`.
    """
    text = bound = images = 0
    stack = [root]
    pop, push = stack.pop, stack.append
    walked = 0
    while stack:
        value = pop()
        if isinstance(value, str):
            n = _utf8_len(value)
            text += n
            bound += n + 2
        elif isinstance(value, (dict, Mapping)):
            kind = value.get("type")  # (a type that is no string, from Python, is no image)
            if isinstance(kind, str) and kind in _IMAGE_TYPES:
                images += 1
                continue
            walked += 1
            if walked == _CYCLE_CHECK_AT:
                refuse_cycles(root)
            bound += 2
            for k, v in value.items():
                bound += (_utf8_len(k) if isinstance(k, str) else len(str(k))) + 4
                if k in _UNCOUNTED_KEYS:  # a role or a part's type: rendered, but not text
                    bound += _utf8_len(v) + 2 if isinstance(v, str) else _json_bytes(v)
                else:
                    push(v)
        elif isinstance(value, (list, tuple)):
            walked += 1
            if walked == _CYCLE_CHECK_AT:
                refuse_cycles(root)
            bound += 2 + len(value)
            stack.extend(value)
        elif isinstance(value, bool) or value is None:
            bound += 5
        elif isinstance(value, int):
            bound += len(_describe_int(value)) if value.bit_length() > 14_000 else len(str(value))
        elif isinstance(value, float):
            bound += len(repr(value))
        else:
            bound += len(str(value))
    return text, bound, images


def text_bytes(value: Any) -> int:
    """UTF-8 bytes of the text in ``value`` (a message, a system prompt, tools) as
    `estimate_input_tokens` counts it: string values but roles and part types; images none."""
    return _measure(value)[0]


def _json_bytes(value: Any) -> int:
    """UTF-8 bytes of ``value`` as compact JSON (escapes included: tool schemas are rendered as
    JSON); for what ``json`` cannot write (nesting too deep, odd types), every byte of it counted
    as a 6-byte escape."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (RecursionError, ValueError, TypeError):
        refuse_cycles(value)  # json's "Circular reference": `_measure` would go round it too
        return 6 * _measure(value)[1]
    return _utf8_len(text)


def _text_bytes(root: Any) -> int:
    """UTF-8 bytes of the string values in ``root``, but roles and part types (`_measure`'s
    ``text`` alone, for the estimate: a lighter walk, as deep as it likes)."""
    size = walked = 0
    stack = [root]
    pop, extend = stack.pop, stack.extend
    while stack:
        value = pop()
        if isinstance(value, str):
            size += _utf8_len(value)
        elif isinstance(value, dict):
            kind = value.get("type")  # (a type that is no string, from Python, is no image)
            if isinstance(kind, str) and kind in _IMAGE_TYPES:
                continue
            walked += 1
            if walked == _CYCLE_CHECK_AT:
                refuse_cycles(root)
            extend(v for k, v in value.items() if k not in _UNCOUNTED_KEYS)
        elif isinstance(value, (list, Mapping, tuple)):
            walked += 1
            if walked == _CYCLE_CHECK_AT:
                refuse_cycles(root)
            extend(value.values() if isinstance(value, Mapping) else value)
    return size


def estimate_input_tokens(
    body: Mapping[str, Any], *, bytes_per_token: float = 3.0, dialect: Dialect = Dialect.openai
) -> int:
    """Estimate a body's prompt tokens from the size of its text, without a tokenizer.

    ``bytes_per_token=3`` is an estimate for English text (BPE tokenizers average about 4 bytes a
    token); ``bytes_per_token=1`` counts a token a byte. Each message (or input item, or prompt)
    adds a few tokens of framing. Tool definitions count whole, as their JSON: a chat template
    renders their schemas' keys and type names into the prompt, not only their text. For a bound
    the provider cannot bill past, see `input_token_bound`.
    """
    if not bytes_per_token > 0:
        raise ValueError(f"bytes_per_token must be > 0, got {bytes_per_token!r}")
    items, preamble = prompt_of(body, dialect)
    size = _text_bytes(items) + _text_bytes(preamble)
    tools = body.get("tools")
    if tools:
        size += _json_bytes(tools)
    return math.ceil(size / bytes_per_token) + 8 * (len(items) + 1)


def prompt_of(body: Mapping[str, Any], dialect: Dialect) -> tuple[list[Any], Any]:
    """``(items, preamble)`` of a body's prompt: its messages (or input items, or prompts) as a
    list, and the system prompt or instructions (None when it has none).

    Raises `RequestNotUnderstood` naming the field when the prompt is missing or of a wrong type.

    >>> prompt_of({"input": "Hi", "instructions": "Be brief"}, Dialect.responses)
    (['Hi'], 'Be brief')
    """
    name, preamble = _PROMPT_FIELDS[dialect]
    items = body.get(name)
    if isinstance(items, list):
        return items, body.get(preamble) if preamble else None
    if isinstance(items, str) and dialect in (Dialect.responses, Dialect.completions):
        return [items], body.get(preamble) if preamble else None
    if dialect is Dialect.responses:
        raise RequestNotUnderstood("the body has no 'input' string or list of input items")
    if dialect is Dialect.completions:
        raise RequestNotUnderstood("the body has no 'prompt' string or list")
    raise RequestNotUnderstood("the body has no 'messages' list")


def input_token_bound(body: Mapping[str, Any], *, dialect: Dialect = Dialect.openai) -> int:
    """Prompt tokens the provider can bill at most for ``body``: one a byte of everything in its
    messages, system prompt and tools (no BPE token is shorter than a byte), `IMAGE_TOKENS_BOUND`
    an image part, and `TEMPLATE_TOKENS_BOUND` for the chat template's own text.

    >>> input_token_bound({"messages": [{"role": "user", "content": "1 2 3"}]})
    181
    """
    return input_tokens(body, dialect=dialect)[1]


def input_tokens(
    body: Mapping[str, Any], *, bytes_per_token: float = 3.0, dialect: Dialect = Dialect.openai
) -> tuple[int, int]:
    """``(estimate, bound)`` of a body's prompt tokens, in one walk (see `estimate_input_tokens`
    and `input_token_bound`). Raises `RequestNotUnderstood` without a prompt (see `prompt_of`).

    A Responses API body that continues a stored conversation (`STORED_CONTEXT_FIELDS`) is
    counted by what it holds: the stored part is not in it.
    """
    if not bytes_per_token > 0:
        raise ValueError(f"bytes_per_token must be > 0, got {bytes_per_token!r}")
    items, preamble = prompt_of(body, dialect)
    text, bound, images = _measure(items)
    if preamble is not None:
        t, b, i = _measure(preamble)
        text, bound, images = text + t, bound + b, images + i
    tools = body.get("tools")
    if tools:
        b = _json_bytes(tools)
        text += b  # rendered whole, as JSON
        bound += b
    framing = 8 * (len(items) + 1)
    estimate = math.ceil(text / bytes_per_token) + framing
    ceiling = bound + framing + images * IMAGE_TOKENS_BOUND + TEMPLATE_TOKENS_BOUND
    return estimate, max(estimate, ceiling)


def check_reservable(body: Mapping[str, Any], dialect: Dialect) -> None:
    """Raise `RequestNotUnderstood` naming the field for a call whose worst case cannot be
    reserved, which a budget refuses:

    - a Responses API call that continues a stored conversation: its prompt holds tokens
      tiersel cannot see;
    - more than one choice (``n``, or a text completion's ``best_of``): each is billed, and
      the reservation covers one.
    """
    if dialect is Dialect.responses:
        for name in STORED_CONTEXT_FIELDS:
            if body.get(name) is not None:
                raise RequestNotUnderstood(
                    f"{name}: the prompt continues a conversation stored upstream, whose tokens"
                    " tiersel cannot count, so a budget cannot reserve its cost; send the whole"
                    " conversation as 'input' instead"
                )
    for name in ("n", "best_of"):
        value = body.get(name)
        if value is not None and value != 1:
            raise RequestNotUnderstood(
                f"{name}: under a budget tiersel reserves for one choice, and every choice is"
                f" billed; got {shown(value)}: send one call per choice"
            )


def apply_step(body: Mapping[str, Any], step: Step) -> dict[str, Any]:
    """A copy of ``body`` that asks for ``step``'s tier: its model id and ``service_tier``.

    tiersel owns these two fields: a caller's own ``service_tier`` is replaced, so a fast router
    model is never sent with a priority tier. The price table allows a router tier to set
    ``service_tier`` only where the provider sells both together (Fireworks' US-only ``-us``
    routers); this check stands behind it, whatever the table says.
    """
    out = dict(body)
    out["model"] = step.model
    out.pop("service_tier", None)
    for key, value in step.body.items():
        # A nested value is copied: the body sent (which hooks may edit) must not share it
        # with the price table's tier.
        out[key] = value if isinstance(value, str) else copy.deepcopy(value)
    if "service_tier" in out:
        model = str(out["model"])
        if "/routers/" in model and not model.endswith("-us"):
            raise RequestNotUnderstood(
                f"refusing to send router model {shown(model)} with a service_tier"
            )
    return out


@dataclass(frozen=True, slots=True)
class Usage:
    """Billed tokens of a served call, and the tier the response says served it (if it says)."""

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    served_tier: str | None = None

    @property
    def uncached_tokens(self) -> int:
        """The prompt tokens not read from a cache."""
        return self.prompt_tokens - self.cached_tokens


def _int(value: Any) -> int:
    if type(value) is int:  # JSON's ints, and never a bool: the common case, tested cheaply
        return value if value > 0 else 0
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _served_tier(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    v = value.lower()
    if v in ("priority", "fast"):
        return "priority"
    if v in ("default", "standard", "standard_only", "on_demand", "auto"):
        return "standard"
    return None


_USAGE_FIELDS = {
    Dialect.openai: ("prompt_tokens", "prompt_tokens_details", "completion_tokens"),
    Dialect.completions: ("prompt_tokens", "prompt_tokens_details", "completion_tokens"),
    Dialect.responses: ("input_tokens", "input_tokens_details", "output_tokens"),
}
"""Per dialect with OpenAI-style usage: the prompt's field, its breakdown (which holds
``cached_tokens``), and the output's field. Anthropic's usage is read apart."""


def read_usage(payload: Any, dialect: Dialect) -> Usage | None:
    """Usage from a response body (or a stream's final chunk, message_delta, or the response a
    ``response.completed`` event carries), None if absent."""
    # Parsed JSON gives dicts: test for dict first, which is far cheaper than the Mapping ABC.
    if not isinstance(payload, (dict, Mapping)):
        return None
    usage = payload.get("usage")
    if not isinstance(usage, (dict, Mapping)):
        return None
    fields = _USAGE_FIELDS.get(dialect)
    if fields is not None:
        prompt, breakdown, output = fields
        details = usage.get(breakdown)
        cached = _int(details.get("cached_tokens")) if isinstance(details, (dict, Mapping)) else 0
        return Usage(
            prompt_tokens=_int(usage.get(prompt)),
            cached_tokens=cached,
            completion_tokens=_int(usage.get(output)),
            served_tier=_served_tier(payload.get("service_tier")),
        )
    cache_read = _int(usage.get("cache_read_input_tokens"))
    return Usage(
        prompt_tokens=_int(usage.get("input_tokens"))
        + cache_read
        + _int(usage.get("cache_creation_input_tokens")),
        cached_tokens=cache_read,
        completion_tokens=_int(usage.get("output_tokens")),
        served_tier=_served_tier(usage.get("service_tier")),
    )


@dataclass(frozen=True, slots=True)
class Classified:
    """An attempt's outcome for the signals, and whether to try again."""

    outcome: Outcome
    retryable: bool
    retry_after_s: float | None
    billed: bool
    detail: str


_OK = Classified(Outcome.ok, False, None, True, "ok")


def classify(
    status: int, headers: Mapping[str, str], payload: Any, *, wall_now: float | None = None
) -> Classified:
    """Classify a response. ``headers`` keys must be lower case.

    503/529/498 are sheds (not billed, retryable); 429 is a rate limit (retryable, unless it is a
    spend-limit refusal); 500/502/504 are retryable errors; other 4xx are final.
    """
    if 200 <= status < 300:
        return _OK
    retry_after = retry_after_s(headers, wall_now=wall_now)
    code = _error_code(payload)
    if status in _SHED_STATUSES:
        return Classified(Outcome.shed, True, retry_after, False, f"HTTP {status} {code}".strip())
    if status == 429:
        if code == "enforced_spend_limit_reached":
            return Classified(Outcome.error, False, None, False, "HTTP 429 spend limit reached")
        if code == "resource_unavailable":
            return Classified(
                Outcome.shed, True, retry_after, False, "HTTP 429 resource_unavailable"
            )
        return Classified(
            Outcome.rate_limited, True, retry_after, False, f"HTTP 429 {code}".strip()
        )
    if status in _RETRYABLE_ERRORS:
        return Classified(Outcome.error, True, retry_after, False, f"HTTP {status} {code}".strip())
    return Classified(Outcome.error, False, None, False, f"HTTP {status} {code}".strip())


def _error_code(payload: Any) -> str:
    if not isinstance(payload, Mapping):
        return ""
    err = payload.get("error")
    if not isinstance(err, Mapping):
        return ""
    details = err.get("details")
    if isinstance(details, Mapping) and isinstance(details.get("error_code"), str):
        return str(details["error_code"])
    for key in ("code", "type"):
        if isinstance(err.get(key), str) and err[key]:
            return str(err[key])
    return ""


def retry_after_s(headers: Mapping[str, str], *, wall_now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return _exhausted_until(headers, wall_now)
    try:
        value = float(raw)
    except ValueError:
        return _seconds_until(raw, headers.get("date"), wall_now)
    return value if math.isfinite(value) and value >= 0 else None


_LIMIT_FAMILIES = (
    "anthropic-ratelimit-requests",
    "anthropic-ratelimit-input-tokens",
    "anthropic-ratelimit-output-tokens",
    "anthropic-ratelimit-tokens",
    "anthropic-priority-input-tokens",
    "anthropic-priority-output-tokens",
)


def _exhausted_until(headers: Mapping[str, str], wall_now: float | None) -> float | None:
    """With no Retry-After: the wait until an exhausted rate limit resets, from its headers.

    Anthropic sends ``anthropic-ratelimit-<kind>-remaining`` and ``-reset`` (an RFC 3339 time);
    a limit with nothing remaining cools the tier down until its reset.
    """
    waits = []
    for family in _LIMIT_FAMILIES:
        if headers.get(f"{family}-remaining") == "0":
            reset = headers.get(f"{family}-reset")
            if reset is not None:
                wait = _seconds_until_iso(reset, headers.get("date"), wall_now)
                if wait is not None:
                    waits.append(wait)
    return max(waits) if waits else None


def _seconds_until_iso(when: str, date: str | None, wall_now: float | None) -> float | None:
    try:
        target = datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return _until(target, date, wall_now)


def _seconds_until(when: str, date: str | None, wall_now: float | None) -> float | None:
    try:
        target = parsedate_to_datetime(when).timestamp()
    except (TypeError, ValueError):
        return None
    return _until(target, date, wall_now)


def _until(target: float, date: str | None, wall_now: float | None) -> float | None:
    # Prefer the server's own Date header as "now", so clocks need not agree.
    reference = wall_now
    if date is not None:
        with contextlib.suppress(TypeError, ValueError):
            reference = parsedate_to_datetime(date).timestamp()
    if reference is None:
        return None
    return max(0.0, target - reference)


def parse_json(content: bytes) -> Any:
    """A response body as JSON, or None when it is not JSON."""
    if not content:
        return None
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        return None
