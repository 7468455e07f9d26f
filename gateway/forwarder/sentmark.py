"""A stream's sent mark: how far it may have sent, recorded on disk *before* sending.

What is sent again after a restart up to the mark may have reached the platform before a crash without its
acknowledgement being recorded: it is counted as re-sent (``resent``, an upper bound of the duplicates a restart
can cause). The record runs ahead of what is sent so that it costs few commits: in a backlog a few batches ahead
(written and committed before sending on); live (everything committed is in the buffer) a minute ahead of the
clock, renewed lazily when half of that is used, so a stream sending readings as they come writes it twice a
minute and never with an fsync of its own, while the mark already on disk still covers what goes out meanwhile.
At a clean stop with nothing in flight, the mark comes back to the last acknowledged reading: the next start
sends nothing "again".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from gateway.errors import QueueError
from gateway.queue import DiskQueue
from gateway.stream import Stream

#: In a backlog, the record runs this many batches ahead of what is sent: one commit per so many batches, and at
#: most so many counted as re-sent after a crash that did not re-send them.
SENT_MARK_AHEAD = 8
#: ... and when sending live, this far ahead of the clock (an upper bound of what may have been sent stays one).
SENT_MARK_HORIZON_MS = 60_000


class SentMark:
    def __init__(self, queue: DiskQueue, stream: Stream, clock: Callable[[], float] = time.time) -> None:
        self.queue = queue
        self.stream = stream
        self.clock = clock
        #: what the record will cover once the renewal in flight is committed
        self.mark = -1
        #: what the record on disk covers
        self.on_disk = -1
        self._renewing: asyncio.Future[None] | None = None

    async def load(self) -> int:
        """Read the record; returns up to where this start may send again what went out before it (the mark may be
        ahead of the clock: only what was taken before this start can be re-sent)."""
        stored = await self.queue.sent_mark(self.stream.cursor, self.stream.meter)
        self.mark = self.on_disk = stored
        return min(stored, int(self.clock() * 1000))

    async def cover(self, last_ts: int, ahead_ts: int, newest_ts: int, live: bool) -> None:
        """Return once a batch ending at ``last_ts`` may go out: the record on disk covers it. ``ahead_ts``: the
        reading SENT_MARK_AHEAD batches on (the new mark in a backlog); ``newest_ts``: the newest in the buffer;
        ``live``: the buffer holds all that is committed."""
        if last_ts > (self.mark - SENT_MARK_HORIZON_MS // 2 if live else self.mark):
            if self._renewing is not None:
                self.on_disk = await self._settled(self._renewing, self.mark)
            mark = ahead_ts
            if live:
                mark = max(mark, newest_ts, int(self.clock() * 1000) + SENT_MARK_HORIZON_MS)
            self.mark = mark
            # Lazily only while the record on disk still covers the batch: one awaited waits no longer than the
            # commit it needs.
            self._renewing = self.queue.mark_sent(self.stream.cursor, self.stream.meter, mark,
                                                  lazy=live and last_ts <= self.on_disk)
        if self._renewing is not None and (last_ts > self.on_disk or self._renewing.done()):
            # Live, the renewal rides the next commit while the record on disk still covers what goes out; only a
            # batch beyond it (after a restart, or in a backlog) waits for the commit.
            self.on_disk, self._renewing = await self._settled(self._renewing, self.mark), None

    def lower(self, position: int) -> None:
        """A clean stop with nothing in flight: everything sent was acknowledged, up to ``position``."""
        with contextlib.suppress(QueueError):
            self.queue.mark_sent(self.stream.cursor, self.stream.meter, position)

    @staticmethod
    async def _settled(renewal: asyncio.Future[None], mark: int) -> int:
        """Wait for a renewal to be committed; what the record on disk then covers. Best effort: on a full disk,
        delivery (which frees space) goes on without the mark."""
        with contextlib.suppress(QueueError):
            await renewal
        return mark
