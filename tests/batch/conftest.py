"""Helpers for the batch tests: input files, fake providers, a ledger that checks the cap."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

from tiersel.batch.input import scan_input
from tiersel.batch.journal import OpenJob, open_job
from tiersel.budget import MemoryLedger
from tiersel.call import BudgetState


def body(
    i: int, *, max_tokens: int | None = 50, text: str = "hello there", **extra: Any
) -> dict[str, Any]:
    """A chat-completion body for line ``i``."""
    doc: dict[str, Any] = {
        "model": "kimi-k3",
        "messages": [{"role": "user", "content": f"{text} #{i}"}],
    }
    if max_tokens is not None:
        doc["max_tokens"] = max_tokens
    doc.update(extra)
    return doc


def batch_line(custom_id: str, doc: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """An OpenAI batch line around ``doc``."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": doc,
        **extra,
    }


def open_new_job(src: Path, out: Path, budget_usd: float = 1.0) -> OpenJob:
    """Open OUT for a new job over ``src``, as `run_batch` would (to hold it, or to see it fail)."""
    return open_job(
        out,
        input_path=src,
        scan=scan_input(src),
        budget_usd=budget_usd,
        resume=False,
        visit_row=lambda r: None,
    )


def write_jsonl(path: Path, lines: Iterable[Any]) -> Path:
    """Write ``lines`` (objects are JSON-encoded, str and bytes written as they are)."""
    with open(path, "wb") as f:
        for line in lines:
            if isinstance(line, bytes):
                f.write(line.rstrip(b"\n") + b"\n")
            elif isinstance(line, str):
                f.write(line.rstrip("\n").encode() + b"\n")
            else:
                f.write(json.dumps(line).encode() + b"\n")
    return path


def read_rows(path: Path) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        return [json.loads(line) for line in f]


def ok_response(request: httpx.Request, *, prompt_tokens: int = 20, **usage: Any) -> httpx.Response:
    """A served chat completion billing ``max_tokens`` output tokens (as the simulator does)."""
    sent = json.loads(request.content)
    doc = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": sent["model"],
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": sent["max_tokens"], **usage},
    }
    return httpx.Response(200, json=doc)


def always_ok(request: httpx.Request) -> httpx.Response:
    return ok_response(request)


class CappedLedger(MemoryLedger):
    """A `MemoryLedger` that checks the cap after every operation (``violations`` lists breaches).

    Breaches are collected rather than raised, so a runner that turns exceptions into rows
    cannot hide one.
    """

    def __init__(self, limit_usd: float, **kwargs: Any) -> None:
        super().__init__(limit_usd, **kwargs)
        self.ops = 0
        self.peak_committed = 0.0
        self.violations: list[BudgetState] = []

    def _check(self, state: BudgetState | None) -> BudgetState | None:
        self.ops += 1
        s = MemoryLedger.state(self, 0.0)
        committed = s.spent_usd + s.reserved_usd
        self.peak_committed = max(self.peak_committed, committed)
        if committed > self.limit_usd * (1 + 1e-9) + 1e-12:
            self.violations.append(s)
        return state

    def reserve(
        self, call_id: str, amount_usd: float, now: float, ttl_s: float | None = None
    ) -> BudgetState | None:
        return self._check(super().reserve(call_id, amount_usd, now, ttl_s))

    def settle(self, call_id: str, actual_usd: float, now: float) -> BudgetState:
        state = self._check(super().settle(call_id, actual_usd, now))
        assert state is not None
        return state

    def release(self, call_id: str, now: float) -> BudgetState:
        state = self._check(super().release(call_id, now))
        assert state is not None
        return state
