"""A batch input file: its lines, streamed, and what each one asks for (or why it asks nothing).

A line is either an OpenAI batch line, ``{"custom_id": "a-1", "method": "POST", "url":
"/v1/chat/completions", "body": {...}}``, or a bare chat-completion body, whose id is then its
line number. Either may carry per-call requirements in a ``tiersel`` object (``deadline_s``,
``reliability``, ``tiers``, ``max_cost_usd``, ... : the fields of `tiersel.Requirements`), laid
over the job's own. Lines are numbered from 1; blank lines are not requests and get no row.

Nothing here reads the whole file at once: `scan_input` counts and fingerprints it in one pass
of fixed-size chunks, and `iter_lines` yields one line at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tiersel.call import Requirements
from tiersel.dialects import Dialect, check_token_count, dialect_for_path, max_output_tokens
from tiersel.errors import TierselError, UnpricedModel
from tiersel.pricing import ModelPrices, Pricing

__all__ = ["BatchRequest", "InputScan", "InvalidLine", "LineParser", "iter_lines", "scan_input"]

_CHUNK = 1 << 20
_BATCH_KEYS = frozenset({"custom_id", "method", "url", "body", "tiersel"})
_BARE_KEYS = frozenset({"custom_id", "method", "url"})
"""A batch line's keys that no request body has: a line with any of them is a batch line."""
_OUTPUT_CAPS = ("max_tokens", "max_completion_tokens")


@dataclass(frozen=True, slots=True)
class InputScan:
    """What one pass over the input found: its request lines (non-blank) and a fingerprint."""

    lines: int
    sha256: str
    size: int


def scan_input(path: str | os.PathLike[str]) -> InputScan:
    """Count the non-blank lines of ``path`` and hash its bytes, in chunks (constant memory)."""
    digest = hashlib.sha256()
    lines = 0
    size = 0
    pending_text = False  # the current (unfinished) line has a non-blank byte
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            parts = chunk.split(b"\n")
            for part in parts[:-1]:
                if pending_text or part.strip():
                    lines += 1
                pending_text = False
            if parts[-1].strip():
                pending_text = True
    if pending_text:
        lines += 1
    return InputScan(lines=lines, sha256=digest.hexdigest(), size=size)


def iter_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes]]:
    """``(line number, bytes)`` for each non-blank line, numbered from 1, read one at a time."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                yield number, raw


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """One valid line: the body to send (with its output cap), where to send it, and its needs."""

    line: int
    custom_id: str
    body: dict[str, Any]
    path: str
    requirements: Requirements


@dataclass(frozen=True, slots=True)
class InvalidLine:
    """A line that is not a request tiersel can send, and why (``reason`` names the field)."""

    line: int
    custom_id: str
    reason: str


class LineParser:
    """Turns one input line into a `BatchRequest` or an `InvalidLine`; never raises for bad input.

    A line is judged by what the selector reads from it when it is sent (`Selector.call_for`):
    a model the price table knows, a ``messages`` array, a positive integer output cap.

    - ``defaults``: the job's requirements, which a line's ``tiersel`` object overrides field by
      field. Tiers it names that the price table does not declare raise `ValueError`.
    - ``default_max_tokens``: the output cap written into a body that states none; None rejects
      such a line, since a hard budget never sends a call unbounded.

    >>> from tiersel import Requirements
    >>> from tiersel.pricing import load_pricing
    >>> parser = LineParser(load_pricing(), Requirements(), default_max_tokens=None)
    >>> parser.parse(3, b'{"model": "kimi-k3", "messages": [{"role": "user", "content": "hi"}]}')
    ... # doctest: +NORMALIZE_WHITESPACE
    InvalidLine(line=3, custom_id='3', reason='no max_tokens: a hard budget never sends a call
    unbounded; set max_tokens in the body or give the job a default (--default-max-tokens N)')
    >>> parser.parse(4, b'{"model": "kimi-k3", "max_tokens": 9, "messages": [{"role": "user",'
    ...              b' "content": "hi"}], "tiersel": {"deadline_s": 5}}').requirements.deadline_s
    5.0
    """

    def __init__(
        self, pricing: Pricing, defaults: Requirements, default_max_tokens: int | None
    ) -> None:
        if default_max_tokens is not None:
            if default_max_tokens < 1:
                raise ValueError(f"default_max_tokens must be >= 1, got {default_max_tokens}")
            check_token_count("default_max_tokens", default_max_tokens)
        if defaults.tiers is not None:
            # A job-wide tier no table declares would fail, or be silently dropped from, every line.
            try:
                pricing.check_tiers(defaults.tiers)
            except ValueError as exc:
                raise ValueError(f"tiers: {exc}") from None
        self._pricing = pricing
        self._job = defaults
        self._defaults = defaults.model_dump(exclude_defaults=True)
        self._default_max_tokens = default_max_tokens

    def parse(self, line: int, raw: bytes) -> BatchRequest | InvalidLine:
        try:
            text = raw.decode("utf-8")
            doc = json.loads(text, parse_constant=_not_json)
        except UnicodeDecodeError:
            return InvalidLine(line, str(line), "not UTF-8 text")
        except _NotJSON as exc:
            return InvalidLine(line, str(line), f"invalid JSON: {exc}")
        except json.JSONDecodeError as exc:
            return InvalidLine(line, str(line), _json_problem(exc, text))
        except RecursionError:
            return InvalidLine(line, str(line), "invalid JSON: nested too deeply to read")
        except ValueError:
            # The only other refusal of json.loads: an integer longer than Python converts.
            limit = sys.get_int_max_str_digits()
            return InvalidLine(
                line, str(line), f"invalid JSON: a number with more than {limit} digits"
            )
        if not isinstance(doc, dict):
            return InvalidLine(line, str(line), f"expected a JSON object, got {_kind(doc)}")
        try:
            return self._request(line, doc)
        except _Bad as bad:
            return InvalidLine(line, bad.custom_id, bad.reason)

    def _request(self, line: int, doc: dict[str, Any]) -> BatchRequest:
        custom_id = str(line)
        path = "/chat/completions"
        if "body" not in doc and not _BARE_KEYS.isdisjoint(doc):
            # A batch line (a bare body has none of these keys) that lost its body, or misspelt it.
            cid = doc.get("custom_id")
            if isinstance(cid, str) and cid:
                custom_id = cid
            unknown = sorted(set(doc) - _BATCH_KEYS)
            also = f" (unknown field {unknown[0]!r})" if unknown else ""
            raise _Bad(custom_id, f"a batch line needs 'body', the request's JSON object{also}")
        if "body" in doc:
            unknown = sorted(set(doc) - _BATCH_KEYS)
            cid = doc.get("custom_id")
            if isinstance(cid, str) and cid:
                custom_id = cid
            if unknown:
                raise _Bad(custom_id, f"unknown field {unknown[0]!r} in a batch line")
            if not isinstance(cid, str) or not cid:
                raise _Bad(custom_id, f"custom_id must be a non-empty string, got {_kind(cid)}")
            method = doc.get("method", "POST")
            if method != "POST":
                raise _Bad(custom_id, f"method must be POST, got {method!r}")
            path = _path(custom_id, doc.get("url", path))
            body = doc["body"]
            if not isinstance(body, dict):
                raise _Bad(custom_id, f"body must be a JSON object, got {_kind(body)}")
            body = dict(body)
            hints = doc.get("tiersel")
            if "tiersel" in body:
                raise _Bad(custom_id, "put 'tiersel' beside 'body' in a batch line, not inside it")
        else:
            body = dict(doc)
            hints = body.pop("tiersel", None)
        dialect = dialect_for_path(path)
        assert dialect is not None  # _path admits only generation paths
        prices = self._check_model(custom_id, body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _Bad(custom_id, f"messages must be a non-empty array, got {_kind(messages)}")
        requirements = self._requirements(custom_id, hints)
        self._cap_output(custom_id, body, dialect)
        if body.get("stream"):
            raise _Bad(custom_id, "stream: a batch collects whole responses; remove 'stream'")
        n = body.get("n", 1)
        if n != 1:
            raise _Bad(custom_id, f"n: only one choice per line is supported, got {n!r}")
        try:
            cap = max_output_tokens(body, dialect)
        except TierselError as exc:
            raise _Bad(custom_id, str(exc)) from None
        allowed = prices.beyond(cap, output=True)
        if allowed is not None:
            # The provider refuses it; reserved at that cap, it read as a budget too small.
            raise _Bad(custom_id, f"max_tokens {cap:,} is above the model's limit: {allowed}")
        return BatchRequest(line, custom_id, body, path, requirements)

    def _check_model(self, custom_id: str, body: dict[str, Any]) -> ModelPrices:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _Bad(custom_id, f"model must be a non-empty string, got {_kind(model)}")
        try:
            prices, _ = self._pricing.resolve(model)
        except TierselError as exc:
            raise _Bad(custom_id, str(exc)) from None
        if not prices.priced:
            # A job is budgeted: a line it cannot reserve for is not sent.
            raise _Bad(custom_id, str(UnpricedModel(model, self._pricing.origin, known=True)))
        return prices

    def _requirements(self, custom_id: str, hints: Any) -> Requirements:
        if hints is None or hints == {}:
            return self._job
        if not isinstance(hints, dict):
            raise _Bad(custom_id, f"tiersel must be a JSON object, got {_kind(hints)}")
        try:
            req = Requirements.model_validate({**self._defaults, **hints})
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise _Bad(custom_id, f"tiersel.{where}: {err['msg']}") from None
        if req.tiers is not None:
            try:
                self._pricing.check_tiers(req.tiers)
            except ValueError as exc:
                raise _Bad(custom_id, f"tiersel.tiers: {exc}") from None
        return req

    def _cap_output(self, custom_id: str, body: dict[str, Any], dialect: Dialect) -> None:
        if dialect is Dialect.anthropic and body.get("max_completion_tokens") is not None:
            # The messages API reads max_tokens alone: this cap would bind nothing upstream.
            raise _Bad(
                custom_id,
                "max_completion_tokens is not a /v1/messages field: set max_tokens instead",
            )
        caps = [body[k] for k in _OUTPUT_CAPS if body.get(k) is not None]
        if len(caps) > 1 and caps[0] != caps[1]:
            raise _Bad(custom_id, "max_tokens and max_completion_tokens disagree; set one")
        if caps:
            return  # its type and sign are checked where the selector reads it
        if self._default_max_tokens is None:
            raise _Bad(
                custom_id,
                "no max_tokens: a hard budget never sends a call unbounded; set max_tokens"
                " in the body or give the job a default (--default-max-tokens N)",
            )
        body["max_tokens"] = self._default_max_tokens


class _NotJSON(Exception):
    pass


def _not_json(name: str) -> Any:
    """Python's json reads NaN and Infinity, which JSON has not: the request could not be sent."""
    raise _NotJSON(f"{name} is not a JSON value (JSON numbers are finite)")


class _Bad(Exception):
    def __init__(self, custom_id: str, reason: str) -> None:
        super().__init__(reason)
        self.custom_id = custom_id
        self.reason = reason


def _path(custom_id: str, url: Any) -> str:
    if not isinstance(url, str):
        raise _Bad(custom_id, f"url must be a string, got {_kind(url)}")
    dialect = dialect_for_path(url)
    if dialect is not Dialect.openai and dialect is not Dialect.anthropic:
        raise _Bad(
            custom_id,
            f"url {url!r} is not a generation endpoint a batch runs"
            " (/v1/chat/completions, /v1/messages)",
        )
    return "/chat/completions" if dialect is Dialect.openai else "/messages"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array" if value else "an empty array"
    return "an object"


def _json_problem(exc: json.JSONDecodeError, text: str) -> str:
    """What is wrong with a line's JSON, at the column of the line where it goes wrong (the
    decoder counts lines, and sees the line's own newline as a second one)."""
    if exc.pos >= len(text.rstrip()):
        return (
            f"invalid JSON: the line ends at column {len(text.rstrip())} before its JSON value"
            " does (cut off?)"
        )
    return f"invalid JSON: {exc.msg} (column {exc.pos + 1})"
