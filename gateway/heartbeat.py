"""The daemon's heartbeat: its own view (sinks failing, meters' read health, the clock, background tasks), written
into the queue file so that ``status`` run beside it shows the same as ``/health``.

Written every HEARTBEAT_INTERVAL and at once on a change (a meter starts or stops failing, the clock's state) with
the next commit, never with an fsync of its own. What each stream delivered last, the largest record the daemon
keeps, is written every LAST_SENT_INTERVAL, at a stop, and at once when ``verify`` asks for it (SIGUSR1).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from gateway.queue import DiskQueue
from gateway.status import NOT_ERRORS, SHOWN_APART

#: A heartbeat older than gateway.status.STALE_HEARTBEAT_MS means the daemon is not running.
HEARTBEAT_INTERVAL = 10.0
#: What each stream delivered last (for ``verify`` and the next start) is written this often, and at a stop: it is
#: the largest thing the daemon keeps (a packet per stream), and rewriting it with every heartbeat cost a page or more
#: of SD-card writes each time.
LAST_SENT_INTERVAL = 300.0


class Heartbeat:
    def __init__(self, queue: DiskQueue, view: Callable[[bool], dict[str, Any]],
                 last_sent: Callable[[], dict[str, Any] | None]) -> None:
        """``view(running)``: the daemon's view as of now; ``last_sent()``: what each stream delivered last, per
        sink."""
        self.queue = queue
        self.view = view
        self.last_sent = last_sent
        #: Set to beat at once (a change worth showing).
        self.now = asyncio.Event()
        self._sent_asked = False
        self._sent_written = time.monotonic()

    def ask_sent(self) -> None:
        """``verify`` asked what each stream delivered last, as of now: written with the next beat, at once."""
        self._sent_asked = True
        self.now.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.now.clear()
            await self.write(running=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.now.wait(), HEARTBEAT_INTERVAL)

    async def write(self, running: bool) -> None:
        kept = persisted(self.view(running))
        asked, self._sent_asked = self._sent_asked, False
        sent: dict[str, Any] | None = None
        if asked or not running or time.monotonic() - self._sent_written >= LAST_SENT_INTERVAL:
            self._sent_written = time.monotonic()
            sent = self.last_sent()
        records: dict[str, dict[str, object]] = {"daemon": kept}
        if sent is not None:
            records.update(last_sent=sent, last_sent_at={"ms": int(time.time() * 1000)})
        # With the next commit; a stop's, and an answer to 'verify', at once.
        await self.queue.write_records(records, lazy=running and not asked)


def persisted(view: dict[str, Any]) -> dict[str, Any]:
    """The heartbeat as written to the queue file: without what ``status`` does not show of a meter (its poll and
    reading counts, which change at every poll) and, of a meter that has nothing to report, only its answer times,
    so that the record stays one or two pages."""
    meters = {}
    for name, h in (view.get("meters") or {}).items():
        counts = {k: v for k, v in (h.get("counts") or {}).items() if k not in NOT_ERRORS or k in SHOWN_APART}
        if h.get("failing") or h.get("last_problem") or h.get("left_out") or counts or h.get("skipped_at_ms"):
            meters[name] = {**h, "counts": counts}
        elif h.get("answer_ms") or h.get("device"):  # how fast it answers, what it is: status shows them
            meters[name] = {k: h[k] for k in ("answer_ms", "device") if h.get(k)}
    return {**view, "meters": meters}
