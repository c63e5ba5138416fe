"""A prompt's cacheable prefixes, and a memory of the prompts a provider has read.

Providers keep the prompts they read in a prefix cache for a while (Fireworks: on by default for
serverless models; a request that repeats a cached prefix skips its prefill and is billed the
cached rate, reported as ``usage.prompt_tokens_details.cached_tokens``). A request's cached part
is the longest prefix that an earlier request, served within the cache's lifetime, also had.
tiersel cannot see the provider's cache, but it sees the prompts it sent: a call whose prompt
begins with one a recent call had is expected to find that part cached, so its first token is
expected without that part's prefill (`tiersel.tiers.TierPriors.prefill_s`).

Prefixes are taken at message boundaries: the system prompt and tools, then each message added
in turn (a multi-turn conversation re-sends the last turn's prompt, then the answer and a new
message). Each is named by a hash of everything up to it, so a prompt's text is never stored.

>>> body = {"messages": [{"role": "system", "content": "s" * 3000},
...                      {"role": "user", "content": "hi"}]}
>>> [tokens for _, tokens in prompt_prefixes(body, Dialect.openai, 1010)]
[989, 1010]
>>> memory = PromptMemory(ttl_s=300.0)
>>> memory.remember("m", prompt_prefixes(body, Dialect.openai, 1010), now=0.0)
>>> longer = {"messages": [*body["messages"], {"role": "user", "content": "more"}]}
>>> memory.cached("m", prompt_prefixes(longer, Dialect.openai, 1012), now=60.0)  # the first
991
>>> memory.cached("m", prompt_prefixes(longer, Dialect.openai, 1012), now=400.0)
0
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tiersel.dialects import STORED_CONTEXT_FIELDS, Dialect, prompt_of, text_bytes

__all__ = [
    "CACHE_TTL_S",
    "MIN_CACHED_TOKENS",
    "Prefix",
    "Prompt",
    "PromptMemory",
    "prompt_prefixes",
]

Prefix = tuple[bytes, int]
"""One cacheable prefix of a prompt: its key (a hash of everything up to it) and its tokens."""

CACHE_TTL_S = 300.0
"""How long a prefix is expected to stay cached after a request read it: five minutes, the
bundled simulator's ``cache_ttl_s`` (providers do not publish theirs; OpenAI's documentation
says 5 to 10 minutes of inactivity)."""

MIN_CACHED_TOKENS = 1024
"""Prompts shorter than this are not looked up: their prefill is a tenth of a second or less,
and prefix caches commonly start at 1,024 tokens (OpenAI's documented minimum)."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """What the engine knows of a call's prompt for the provider's cache: its ``prefixes``
    (shortest first), the tokens of the longest of them the provider read lately, ``seen``,
    and of those the tokens it expects read from the cache, ``expected_cached``."""

    model: str
    prefixes: tuple[Prefix, ...]
    seen: int
    expected_cached: int


def prompt_prefixes(
    body: Mapping[str, Any], dialect: Dialect, input_tokens: int
) -> tuple[Prefix, ...]:
    """The cacheable prefixes of ``body``'s prompt, shortest first: the preamble (system prompt
    or instructions, and tools) when it has one, then each message (or input item) added in
    turn, the last being the whole prompt. Each prefix's tokens are ``input_tokens`` (the
    call's estimate) in proportion to its share of the prompt's text as the estimate counts it
    (`tiersel.dialects.text_bytes`: an image counts none).

    Raises `RequestNotUnderstood` for a body with no prompt (see `prompt_of`). A prompt whose
    values cannot be named (nested too deep), or a Responses API call that continues a
    conversation stored upstream, has none: nothing is expected cached.
    """
    items, preamble = prompt_of(body, dialect)
    if dialect is Dialect.responses and any(body.get(f) is not None for f in STORED_CONTEXT_FIELDS):
        return ()  # the prompt begins with a conversation stored upstream, which it cannot see
    digest = hashlib.sha1(usedforsecurity=False)  # a name, not a secret
    ends: list[tuple[bytes, int]] = []
    size = 0
    head: list[Any] = [preamble, body.get("tools")]
    try:
        if head != [None, None]:
            _feed(digest, head)
            size += text_bytes(head)
            ends.append((digest.copy().digest(), size))
        for item in items:
            _feed(digest, item)
            size += text_bytes(item)
            ends.append((digest.copy().digest(), size))
    except (RecursionError, ValueError, TypeError):
        return ()
    if size == 0:
        return ()
    return tuple((key, input_tokens * part // size) for key, part in ends)


def _feed(digest: Any, value: Any, depth: int = 0) -> None:
    """Feed ``value`` into ``digest`` in a canonical form (a tag, a length, then the data;
    mappings in key order): a prompt's text is read once, not rendered as JSON first (three
    times slower on long prompts: benchmarks/prompt_memory.py)."""
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        digest.update(b"s" + len(data).to_bytes(8, "little"))
        digest.update(data)
        return
    if depth < _DEEPEST:
        if isinstance(value, Mapping):
            digest.update(b"m" + len(value).to_bytes(8, "little"))
            for key in sorted(value, key=str):
                _feed(digest, str(key), depth + 1)
                _feed(digest, value[key], depth + 1)
            return
        if isinstance(value, (list, tuple)):
            digest.update(b"l" + len(value).to_bytes(8, "little"))
            for item in value:
                _feed(digest, item, depth + 1)
            return
    data = repr(value).encode("utf-8", "surrogatepass")  # numbers, None, what nests too deep
    digest.update(b"r" + len(data).to_bytes(8, "little"))
    digest.update(data)


_DEEPEST = 64


class PromptMemory:
    """The prefixes of the prompts a provider has read, per model, for ``ttl_s`` seconds after
    each was last read; at most ``maxsize`` of them, the least recently read going first (about
    200 bytes each: 4 MB at the default 20,000, the prompts of 5,000 calls; measured by
    ``benchmarks/prompt_memory.py``).

    Of each prompt it keeps four prefixes: the two shortest (a system prompt, or context, that
    other calls share) and the two longest (the whole prompt, which a conversation's next turn
    or a retry begins with)."""

    def __init__(self, ttl_s: float = CACHE_TTL_S, maxsize: int = 20_000) -> None:
        if not ttl_s >= 0:
            raise ValueError(f"PromptMemory: ttl_s must be >= 0, got {ttl_s!r}")
        if maxsize < 1:
            raise ValueError(f"PromptMemory: maxsize must be >= 1, got {maxsize!r}")
        self.ttl_s = ttl_s
        self.maxsize = maxsize
        # Keyed by the model's name and the prefix's key in one bytes object, least recently
        # read first.
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def __repr__(self) -> str:
        return f"PromptMemory(ttl_s={self.ttl_s:g}, prefixes={len(self._seen)})"

    def cached(self, model: str, prefixes: Sequence[Prefix], now: float) -> int:
        """The tokens of the longest of ``prefixes`` read within ``ttl_s`` before ``now``."""
        seen = self._seen
        name = model.encode()
        for key, tokens in reversed(prefixes):
            at = seen.get(name + key)
            if at is not None and now - at <= self.ttl_s:
                return tokens
        return 0

    def remember(self, model: str, prefixes: Sequence[Prefix], now: float) -> None:
        """Note that the provider read a prompt with ``prefixes`` at ``now``."""
        seen = self._seen
        name = model.encode()
        kept = prefixes if len(prefixes) <= 4 else (*prefixes[:2], *prefixes[-2:])
        for key, _ in kept:
            full = name + key
            seen[full] = now
            seen.move_to_end(full)
        while len(seen) > self.maxsize:
            seen.popitem(last=False)
