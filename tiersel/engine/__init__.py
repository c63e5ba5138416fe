"""One call's attempts, written once and with no I/O: the public contract every door drives.

- `Engine` owns what a call needs (prices, policy, signal and budget stores, clock, call ids,
  caches): `Engine.start` begins a call, `Engine.run` / `Engine.arun` carry it out with a door's
  own send, `Engine.finish_stream` completes one whose reply was a stream.
- The flow (`call_flow`) is a generator of effects (`tiersel.engine.effects`); only `Send`,
  `Sleep` and `Race` leave the engine, for the door to carry out.
- `CallResult`, `AttemptRecord`, `Reply` and `StreamEnd` are what the attempts produce.
"""

from __future__ import annotations

from tiersel.engine.billing import classify_reply
from tiersel.engine.core import Engine, EngineSettings, Started, new_call_id, pinned
from tiersel.engine.effects import (
    ClaimProbe,
    Effect,
    Flow,
    Notify,
    Now,
    Race,
    Raced,
    ReadBudget,
    ReadSignals,
    Record,
    Release,
    Reserve,
    Send,
    Settle,
    Sleep,
    arun,
    run,
)
from tiersel.engine.flow import call_flow
from tiersel.engine.results import AttemptRecord, CallResult, Reply, StreamEnd
from tiersel.engine.stream import stream_flow

__all__ = [
    "AttemptRecord",
    "CallResult",
    "ClaimProbe",
    "Effect",
    "Engine",
    "EngineSettings",
    "Flow",
    "Notify",
    "Now",
    "Race",
    "Raced",
    "ReadBudget",
    "ReadSignals",
    "Record",
    "Release",
    "Reply",
    "Reserve",
    "Send",
    "Settle",
    "Sleep",
    "Started",
    "StreamEnd",
    "arun",
    "call_flow",
    "classify_reply",
    "new_call_id",
    "pinned",
    "run",
    "stream_flow",
]
