"""The effects a call's flow yields, and the two loops that drive a flow (`run`, `arun`).

Only `Send`, `Sleep` and `Race` leave the engine (a shell carries them out with its own I/O); the
others are the engine's (stores and clock, see `tiersel.engine.Engine.perform`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

from tiersel.decision import Step
from tiersel.dialects import Usage
from tiersel.engine.results import AttemptRecord, CallResult, Reply
from tiersel.prompts import Prompt
from tiersel.signals import (
    Observation,
    SignalKey,
)

# -- effects ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Now:
    pass


@dataclass(frozen=True, slots=True)
class ReadSignals:
    keys: tuple[SignalKey, ...]


@dataclass(frozen=True, slots=True)
class ClaimProbe:
    key: SignalKey


@dataclass(frozen=True, slots=True)
class ReadBudget:
    """The budget's state as the call ``call_id`` sees it (see `Engine.perform`)."""

    call_id: str


@dataclass(frozen=True, slots=True)
class Reserve:
    call_id: str
    amount_usd: float


@dataclass(frozen=True, slots=True)
class Settle:
    call_id: str
    amount_usd: float


@dataclass(frozen=True, slots=True)
class Release:
    call_id: str


@dataclass(frozen=True, slots=True)
class Watch:
    """How a shell watches an attempt's pace (`tiersel.watch`): ``at_s`` seconds after the send,
    it projects the attempt's end from its tokens so far (`tiersel.watch.projected_finish`, for
    ``tokens`` of output, at ``tps`` while it has fewer than two) and, when that is later than
    ``finish_by_s`` seconds after the send, cuts it: it closes the request and answers with a
    `Reply` whose ``cut`` is set, its payload the usage so far."""

    at_s: float
    finish_by_s: float
    tokens: int
    tps: float


@dataclass(frozen=True, slots=True)
class Send:
    """Send one attempt. ``given_up(s)``: what the provider bills for it if the call is
    interrupted ``s`` seconds after it left (its prompt and the output made until then, as
    estimated); the engine charges that to a budget then (`tiersel.engine.Engine.run`)."""

    step: Step
    body: dict[str, Any]
    headers: Mapping[str, str]
    timeout_s: float | None
    watch: Watch | None = None
    given_up: Callable[[float], float] | None = None

    def billed_after(self, elapsed_s: float) -> float:
        """``given_up(elapsed_s)``, or the step's worst case where the flow gave no estimate."""
        if self.given_up is None:
            return self.step.worst_cost_usd
        return self.given_up(elapsed_s)


@dataclass(frozen=True, slots=True)
class Race:
    """Send ``first``; if it has not answered ``after_s`` seconds later (or as soon as it fails
    with an error worth another attempt), send ``second`` too. The first success wins, the other
    is cancelled: a hedge (`tiersel.hedge`). ``second.timeout_s`` is the time left when the race
    starts: the shell sends it with what is left when it goes. Answered with a `Raced`."""

    first: Send
    second: Send
    after_s: float

    def billed_after(self, elapsed_s: float) -> float:
        """What both requests are billed if the call is interrupted ``elapsed_s`` seconds into
        the race: the second's counted from when it would have gone (it may have gone sooner,
        after a failure of the first, so this may fall short by that much)."""
        second = 0.0
        if elapsed_s > self.after_s:
            second = self.second.billed_after(elapsed_s - self.after_s)
        return self.first.billed_after(elapsed_s) + second


@dataclass(frozen=True, slots=True)
class Raced:
    """How a `Race` ended. ``winner`` (0: first, 1: second) sent ``reply``: the first success, or
    when both failed the later failure. ``other`` is the other's reply if it answered (a
    failure); ``other_sent`` whether the second was sent at all. The other, sent and not
    answered, was ``cancelled`` after ``other_elapsed_s`` (its bill stops there), or, where the
    shell cannot cancel a request in flight (a sync transport), left to finish unread."""

    winner: int
    reply: Reply
    other: Reply | None = None
    other_sent: bool = False
    other_elapsed_s: float = 0.0
    cancelled: bool = True


@dataclass(frozen=True, slots=True)
class Record:
    """An attempt's observation for the signals. ``prompt``, given for an attempt the provider
    served (so read its prompt), tells the engine its prefixes are cached now; ``usage``, the
    reply's usage when the provider reported it, how many of its tokens the cache served
    (`tiersel.prompts`). ``cut``: the attempt was cut for its pace,
    which the counters take as a success: the tier's health is read afresh at the next decision,
    not reused for `tiersel.signals.SignalConfig.refresh_s` as after a success."""

    key: SignalKey
    observation: Observation
    usage: Usage | None = None
    prompt: Prompt | None = None
    cut: bool = False


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Notify:
    record: AttemptRecord


Effect = (
    Now
    | ReadSignals
    | ClaimProbe
    | ReadBudget
    | Reserve
    | Settle
    | Release
    | Send
    | Race
    | Record
    | Sleep
    | Notify
)
Flow = Generator[Effect, Any, CallResult]


# -- shells -------------------------------------------------------------------------------------


def _advance(flow: Flow, value: Any) -> Effect | CallResult:
    """The flow's next effect after it is sent ``value``, or its result once it ends."""
    try:
        return flow.send(value)
    except StopIteration as stop:
        result: CallResult = stop.value
        return result


def run(flow: Flow, perform: Callable[[Effect], Any]) -> CallResult:
    """Drive a flow synchronously. An effect that raises closes the flow (its ``finally``
    blocks run), then the exception goes on."""
    step = _advance(flow, None)
    while not isinstance(step, CallResult):
        try:
            value = perform(step)
        except BaseException:
            flow.close()
            raise
        step = _advance(flow, value)
    return step


async def arun(flow: Flow, perform: Callable[[Effect], Any]) -> CallResult:
    """Drive a flow from async code; ``perform`` returns a value or an awaitable."""
    step = _advance(flow, None)
    while not isinstance(step, CallResult):
        try:
            value = perform(step)
            if hasattr(value, "__await__"):
                value = await value
        except BaseException:
            flow.close()
            raise
        step = _advance(flow, value)
    return step
