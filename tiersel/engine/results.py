"""What a call's attempts produce: each reply as a shell saw it, each attempt's record, the
call's result, and how a stream ended."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tiersel.decision import Decision, Step
from tiersel.dialects import (
    Usage,
)
from tiersel.prompts import Prompt
from tiersel.signals import (
    Outcome,
)


@dataclass(frozen=True, slots=True)
class Reply:
    """What one attempt got back, as the shell saw it.

    ``payload`` is the parsed JSON body (None for a stream or a non-JSON body); ``error`` names a
    transport failure (no response); ``raw`` is the shell's own response object.
    """

    status: int
    headers: Mapping[str, str]
    payload: Any
    elapsed_s: float
    streaming: bool = False
    timed_out: bool = False
    error: str | None = None
    raw: Any = None
    wall_s: float | None = None
    """When an error reply arrived, in Unix seconds (the shell reads the wall clock): dates a
    Retry-After given as an HTTP date when the response has no Date header. None: not known."""
    content: bytes | None = None
    """The body as read, when the shell read it whole (a door hands these bytes back)."""
    cut: bool = False
    """A watched attempt cut for its pace (`tiersel.engine.effects.Watch`), ``elapsed_s`` after
    its send: ``payload`` holds the usage billed until then, where the shell knows it, else
    ``tokens`` the output tokens it saw (the prompt is then taken as estimated)."""
    tokens: int = 0
    ttft_s: float | None = None
    """When the first token came, in seconds after the send, where the shell saw it."""


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt, for logs and metrics (handed to ``Selector(on_attempt=...)``)."""

    call_id: str
    attempt: int
    model: str
    tier: str
    decision: Decision
    outcome: Outcome
    status: int
    latency_s: float
    cost_usd: float
    detail: str


@dataclass(frozen=True, slots=True)
class CallResult:
    """How a call ended: the last reply, each attempt's decision and step, what it cost.

    ``decisions[i]`` is the decision attempt *i* followed (the same one for the attempts of one
    schedule), ``steps[i]`` the step of its plan that attempt sent. Of a hedge's two attempts
    that raced, the loser comes first: the last step is always the one that answered.
    """

    ok: bool
    reply: Reply | None
    decisions: tuple[Decision, ...]
    attempts: int
    cost_usd: float
    usage: Usage | None
    tier: str | None
    call_id: str
    detail: str = ""
    pending_stream: bool = False
    started_at: float = 0.0
    max_tokens_set: int | None = None
    """The output cap tiersel put in a body that stated none (under a budget), else None."""
    budget_stopped: bool = False
    """The budget could not cover a retry, so the call stopped after a failed attempt."""
    steps: tuple[Step, ...] = ()
    sunk_usd: float = 0.0
    """What attempts before the one that ended the call were billed and charged already:
    attempts cut for their pace (`tiersel.watch`), each under its own ledger id, and a hedge's
    loser when the race ended in a failure. Part of ``cost_usd``."""
    output_cap: int = 0
    """The most output tokens its last attempt could be billed for (0: not known)."""
    uncached_input_tokens: int = 0
    """The call's prompt tokens not read from a cache, as estimated before it was sent (for the
    prefill in a stream's TTFT, when its usage does not say)."""
    prompt: Prompt | None = None
    """The prefixes of the call's prompt and the tokens expected cached (`tiersel.prompts`),
    which the usage of its reply teaches the engine (for a stream, once it ends)."""

    @property
    def decision(self) -> Decision | None:
        return self.decisions[-1] if self.decisions else None

    @property
    def step(self) -> Step | None:
        """The step the last attempt sent."""
        return self.steps[-1] if self.steps else None

    @property
    def tried(self) -> tuple[str, ...]:
        """The tier of each attempt, in order."""
        return tuple(str(s.tier) for s in self.steps)

    @property
    def response(self) -> Any:
        """The last attempt's response object: an ``httpx.Response`` from `Selector.send`, the
        inner transport's own from `TierTransport`."""
        return self.reply.raw if self.reply is not None else None


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """How a streamed reply ended, as the stream's wrapper measured it.

    ``outcome`` is ``ok`` when the stream reached its final event (or the caller closed it early),
    a failure when it broke. ``usage`` is what the stream reported (None if none arrived), or an
    estimate of what was billed when ``usage_estimated``; times are seconds since the attempt
    was sent.
    """

    outcome: Outcome
    usage: Usage | None
    elapsed_s: float
    ttft_s: float | None = None
    output_tps: float | None = None
    detail: str = "ok"
    usage_estimated: bool = False
