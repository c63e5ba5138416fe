"""Server-sent events as the generation streams carry them: where one event ends, and what its
``data:`` lines hold. No I/O."""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["CHAT_TEXT", "DONE", "EVENT_END", "event_data"]

EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
"""The blank line that ends an event, in any of the line endings SSE allows."""
DONE = "[DONE]"
"""The data of the last event of a chat or text completion stream."""
CHAT_TEXT = ("content", "reasoning_content", "refusal")
"""The text fields of a chat completion chunk's ``delta`` (its tool calls aside)."""


def event_data(block: bytes) -> Any:
    """One event's data (without its blank line): its JSON parsed, `DONE`, or None when it has
    no data or the data is not JSON."""
    lines = [line[5:].strip() for line in block.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    raw = b"\n".join(lines)
    if raw == b"[DONE]":
        return DONE
    try:
        return json.loads(raw)
    except ValueError:
        return None
