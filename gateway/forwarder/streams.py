"""The two kinds of stream a forwarder runs, each an object holding its own position, buffer and attempt count.

:class:`PlainStream` sends every reading, in order, in batches of the sink's ``max_batch``; with a sink whose
``pipeline`` is above 1, the next batches are sent before the first is answered (the sink keeps them in order, as
an MQTT connection does). :class:`IntervalStream` sends one aggregated reading per interval
(:mod:`gateway.aggregate`) and acknowledges all the readings it was made of at once. Both send the next reading only
after the previous one was acknowledged (or moved to the dead letters); a restart of either (by the forwarder's
supervisor) starts again from the stream's cursor in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING

from gateway.aggregate import aggregate, bucket_end
from gateway.errors import QueueError
from gateway.forwarder.sentmark import SENT_MARK_AHEAD, SentMark
from gateway.outcome import SKIP_LATE, Outcome, Reject, Retry, Skip
from gateway.queue.counters import SinkCount, sink_key
from gateway.reading import Reading, iso_utc
from gateway.stream import Stream

if TYPE_CHECKING:
    from gateway.forwarder import Forwarder

#: Longest idle wait before a stream looks at the queue again even without a notification.
IDLE_POLL = 5.0
#: An interval is sent once a reading after it exists, or once it is over and its meter has been quiet this long.
AGGREGATE_GRACE = 30.0

_InFlight = deque[tuple[list[Reading], asyncio.Task[list[Outcome]]]]


class _Stream:
    def __init__(self, fwd: Forwarder, stream: Stream) -> None:
        self.fwd = fwd
        self.stream = stream
        self.queue = fwd.queue
        self.log = fwd.log.bind(stream=stream.label)
        self.cursor, self.meter = stream.cursor, stream.meter
        self.event = fwd.queue.event(stream.cursor, stream.meter)
        #: failed sends in a row (for the backoff)
        self.attempt = 0

    async def read(self, after: int, limit: int) -> list[Reading]:
        self.event.clear()
        return await self.queue.read(self.meter, after, limit)

    async def idle(self, at_most: float) -> None:
        """Wait for new readings of the meter, at most ``at_most`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most):  # no task of its own, unlike wait_for: this runs per stream often
                await self.event.wait()


class IntervalStream(_Stream):
    async def run(self) -> None:
        fwd, stream, cursor, meter = self.fwd, self.stream, self.cursor, self.meter
        position = await self.queue.cursor(cursor, meter)
        assert stream.interval is not None
        interval_ms = round(stream.interval * 1000)
        # The end of the last interval sent: a late reading inside it joins the next one, never repeats a stamp.
        last_end = bucket_end(position, interval_ms) if position >= 0 else -1
        buffer: deque[Reading] = deque()
        exhausted = False
        grew_at = time.monotonic()
        read_size = 256
        while not fwd.stopping.is_set():
            wait_until: float | None = None
            if buffer:
                end = max(bucket_end(buffer[0].ts_ms, interval_ms), last_end + interval_ms)
                n = next((i for i, r in enumerate(buffer) if r.ts_ms > end), len(buffer))
                closed = n < len(buffer) or buffer[n - 1].ts_ms == end
                if not closed and not exhausted:
                    more = await self.read(buffer[-1].ts_ms, read_size)
                    buffer.extend(more)
                    exhausted = len(more) < read_size
                    grew_at = time.monotonic() if more else grew_at
                    continue
                # Without a reading after the interval, it closes once it is over and the meter has been quiet for
                # a while: a meter still sending (a backlog, late answers) may yet add to it.
                wait = max(end / 1000 - fwd.clock(), grew_at + AGGREGATE_GRACE - time.monotonic())
                if not closed and wait > 0:
                    wait_until = time.monotonic() + wait
            if not buffer or wait_until is not None:
                more = await self.read(buffer[-1].ts_ms if buffer else position, read_size)
                if more:
                    buffer.extend(more)
                    exhausted = len(more) < read_size
                    grew_at = time.monotonic()
                    continue
                exhausted = True
                await self.idle(IDLE_POLL if wait_until is None
                                else min(IDLE_POLL, max(0.0, wait_until - time.monotonic())))
                continue

            # A late period reading (a corrected bill) belongs to no interval of the queue's time: never aggregated.
            parts = [buffer[i] for i in range(n) if buffer[i].end_ms is None]
            packet = aggregate(parts, end, stream.last) if parts else buffer[n - 1]
            if parts:
                async with fwd.slots:
                    if fwd.stopping.is_set():
                        break
                    (outcome,) = await fwd.send(stream, [packet], self.log)
            else:
                outcome = SKIP_LATE
            upto = buffer[n - 1].ts_ms
            if isinstance(outcome, Retry):
                self.attempt = await fwd.retry_later(stream, outcome, self.attempt, self.log)
                continue
            if isinstance(outcome, Reject):
                await fwd.reject(stream, packet, outcome, self.log, upto)
            elif isinstance(outcome, Skip):
                self.queue.ack(cursor, meter, upto, 0)
                fwd.skipped(stream, outcome, n)
            else:
                self.queue.ack(cursor, meter, upto, len(parts))
                fwd.sent(stream, packet, outcome)
                if len(parts) < n:
                    fwd.skipped(stream, SKIP_LATE, n - len(parts))
            for _ in range(n):
                buffer.popleft()
            position, last_end = upto, end
            # Refused for good is not "delivered again": the stream stays failing until a packet is delivered.
            if not isinstance(outcome, Reject):
                self.attempt = fwd.succeeded(stream, self.attempt)


class PlainStream(_Stream):
    async def run(self) -> None:
        fwd, stream, cursor, meter, log = self.fwd, self.stream, self.cursor, self.meter, self.log
        sink = fwd.sink
        position = await self.queue.cursor(cursor, meter)
        depth = max(1, sink.pipeline)
        mark = SentMark(self.queue, stream, fwd.clock)
        sent_before = await mark.load()
        resent = 0
        buffer: deque[Reading] = deque()
        ahead: _InFlight = deque()
        exhausted = False
        in_doubt = False
        read_size = max(2 * sink.max_batch * depth, 64)
        try:
            while not fwd.stopping.is_set():
                sent = sum(len(b) for b, _ in ahead)
                if (sent == len(buffer) and not exhausted) or not buffer:
                    more = await self.read(buffer[-1].ts_ms if buffer else position, read_size)
                    buffer.extend(more)
                    exhausted = len(more) < read_size
                    if not buffer:
                        await self.idle(IDLE_POLL)
                        exhausted = False
                        continue
                while len(ahead) < depth and sent < len(buffer):
                    batch = [buffer[i] for i in range(sent, min(sent + sink.max_batch, len(buffer)))]
                    # Live, the buffer holds all that is committed.
                    await mark.cover(batch[-1].ts_ms,
                                     buffer[min(len(buffer), sent + SENT_MARK_AHEAD * sink.max_batch) - 1].ts_ms,
                                     buffer[-1].ts_ms, live=exhausted)
                    if batch[0].ts_ms <= sent_before:
                        n = sum(1 for r in batch if r.ts_ms <= sent_before)
                        if not resent:
                            log.info("sending again what went out before the restart unacknowledged",
                                     up_to=iso_utc(sent_before))
                        resent += n
                        # On disk before sending (a few batches after a restart): an upper bound that a kill
                        # right after cannot make an undercount.
                        with contextlib.suppress(QueueError):
                            await self.queue.count_now(sink_key(fwd.name, SinkCount.RESENT), n)
                    ahead.append((batch, asyncio.create_task(fwd.send_in_slot(stream, batch, log))))
                    sent += len(batch)
                batch, task = ahead.popleft()
                outcomes = await task
                retry: Retry | None = None
                delivered = skipped = 0
                for reading, outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, Retry):
                        retry = outcome
                        break
                    if isinstance(outcome, Reject):
                        if delivered or skipped:
                            self.queue.ack(cursor, meter, position, delivered)
                            delivered = skipped = 0
                        await fwd.reject(stream, reading, outcome, log)
                    elif isinstance(outcome, Skip):
                        skipped += 1
                        fwd.skipped(stream, outcome, 1)
                    else:
                        delivered += 1
                        fwd.sent(stream, reading, outcome)
                    position = reading.ts_ms
                    buffer.popleft()
                if delivered or skipped:
                    self.queue.ack(cursor, meter, position, delivered)
                in_doubt = retry is not None  # a send without an answer may still have reached the platform
                if retry is None:
                    if delivered or skipped:  # a batch refused for good is no recovery
                        self.attempt = fwd.succeeded(stream, self.attempt)
                    continue
                # What was sent ahead is answered before trying again (an MQTT sink keeps it in flight and will
                # not publish it twice); its readings stay in the buffer and go again, in order.
                await _drain(ahead)
                self.attempt = await fwd.retry_later(stream, retry, self.attempt, log)
        finally:
            answered = not ahead and not in_doubt
            for _, task in ahead:
                task.cancel()
            await _drain(ahead)
            if answered and fwd.stopping.is_set():
                # Everything sent was acknowledged: the next start sends nothing "again" (nor says it does).
                mark.lower(position)


async def _drain(ahead: _InFlight) -> None:
    tasks = [t for _, t in ahead]
    ahead.clear()
    await asyncio.gather(*tasks, return_exceptions=True)
