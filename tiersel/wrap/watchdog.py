"""Renewals of open streams' reservations that do not wait for their readers.

A stream renews its call's reservation as its chunks pass (`tiersel.engine.lease`); a reader that
stops reading (an agent doing other work halfway through an answer) would let it lapse while the
provider goes on generating, and others could reserve the money the stream will be billed. So a
transport with streams open that renew keeps one daemon thread, the watchdog, which every
`TICK_S` seconds renews those that are due: a sync ledger's from the thread, an async one's on the
event loop its stream was opened on. The thread ends when no such stream is open (it starts again
with the next), and with the process: a dead worker's reservations still lapse.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from tiersel.engine.lease import Renewal

__all__ = ["TICK_S", "Watchdog"]

log = logging.getLogger("tiersel.engine")

TICK_S = 1.0
"""How often, in real seconds, the watchdog looks for renewals that are due."""


class Watchdog:
    """The open streams whose reservations renew, by key, and the thread that renews them."""

    __slots__ = ("_lock", "_open", "_thread")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, tuple[Renewal, asyncio.AbstractEventLoop | None]] = {}
        self._thread: threading.Thread | None = None

    def follow(self, key: int, renewal: Renewal, loop: asyncio.AbstractEventLoop | None) -> None:
        """Renew ``renewal`` while it is due, until `forget` (``loop``: an async stream's)."""
        with self._lock:
            self._open[key] = (renewal, loop)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tiersel-renewals", daemon=True
                )
                self._thread.start()

    def forget(self, key: int) -> None:
        """The stream of ``key`` ended: stop renewing it."""
        with self._lock:
            self._open.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(TICK_S)
            with self._lock:
                if not self._open:
                    self._thread = None
                    return
                due = [entry for entry in self._open.values() if entry[0].due()]
            for renewal, loop in due:
                if loop is None:
                    renewal.renew()  # (logs what fails; never raises)
                    continue
                try:
                    asyncio.run_coroutine_threadsafe(renewal.arenew(), loop)
                except RuntimeError:  # its loop has closed: the stream will not be read again
                    log.debug("tiersel: a stream's event loop closed before its end")
