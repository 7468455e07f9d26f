"""A forwarder moves one sink's readings from the queue to the sink: ordering, retries, backoff, the cursors.

A sink receives one or more streams (see :mod:`gateway.stream`). Per stream, strictly sequential: the next reading
is sent only after the previous one was acknowledged (or moved to the dead letters). Streams are sent in parallel,
at most ``max_in_flight`` sends at once. A stream with an ``interval`` sends one aggregated reading per interval
(:mod:`gateway.aggregate`), and acknowledges all the readings it was made of at once.

Failed sends back off exponentially with full jitter (``backoff_base`` doubling up to ``backoff_cap``) and never
sooner than a server's Retry-After. The sink's health is logged on change only: once when delivery starts failing,
once when it recovers, with how long it was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace

import structlog

from gateway.aggregate import aggregate, bucket_end
from gateway.config.common import SinkBase
from gateway.errors import QueueError
from gateway.logs import REDACTOR
from gateway.outcome import Delivered, Outcome, Reject, Retry, Skip
from gateway.platforms.sink import Sink
from gateway.queue import DiskQueue
from gateway.queue.counters import SinkCount, sink_key
from gateway.reading import Reading, iso_utc
from gateway.stream import Stream
from gateway.supervisor import Supervisor

#: Longest wait a server's Retry-After can impose; beyond it the header is taken as a mistake.
MAX_RETRY_AFTER = 3600.0
#: How often a forwarder looks for dead letters an operator asked to retry.
DEADLETTER_POLL = 5.0
#: Longest idle wait before a stream looks at the queue again even without a notification.
IDLE_POLL = 5.0
#: The on-disk record of how far a stream may have sent runs this many batches ahead of what is sent: one commit
#: per so many batches, and at most so many counted as re-sent after a crash that did not re-send them.
SENT_MARK_AHEAD = 8
#: ... and when sending live, this far ahead of the clock (an upper bound of what may have been sent stays one).
SENT_MARK_HORIZON_MS = 60_000
#: An interval is sent once a reading after it exists, or once it is over and its meter has been quiet this long.
AGGREGATE_GRACE = 30.0


def backoff_delay(attempt: int, base: float, cap: float, after: float | None, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))], but never less than Retry-After."""
    ceiling = min(cap, base * 2 ** min(attempt - 1, 62))
    delay = rng.uniform(0, ceiling)
    if after is not None:
        delay = max(delay, min(after, MAX_RETRY_AFTER))
    return delay


class Forwarder:
    def __init__(
        self,
        sink: Sink,
        config: SinkBase,
        queue: DiskQueue,
        streams: Sequence[Stream],
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sink = sink
        self.config = config
        self.queue = queue
        self.streams = list(streams)
        self.rng = rng or random.Random()
        self.clock = clock
        self.log = structlog.get_logger("gateway.forwarder").bind(sink=sink.name)
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        #: Streams and dead-letter retries: a failure is reported and the task started again from its cursor.
        self.supervisor = Supervisor(self._stopping)
        self._failing: set[str] = set()
        self._skipping: set[str] = set()
        #: Readings rejected in a row per stream (for logging on change).
        self._rejecting: dict[str, int] = {}
        self._failing_since: float | None = None
        self.last_error: str | None = None
        #: per stream cursor: what was last delivered (for status and the technicians' check)
        self.last_sent: dict[str, dict[str, object]] = {}

    @property
    def name(self) -> str:
        return self.sink.name

    async def start(self) -> None:
        """Start in the background: a sink that cannot start yet (a directory missing...) is retried with backoff."""
        self._tasks.append(asyncio.create_task(self._start_sink(), name=f"fwd:{self.name}:start"))

    async def _start_sink(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                await self.sink.start()
                break
            except Exception as e:
                attempt += 1
                if attempt == 1:
                    self.log.error("sink cannot start; retrying", error=str(e) or type(e).__name__)
                self.last_error = REDACTOR.scrub(f"cannot start: {e}")
                delay = backoff_delay(attempt, self.config.backoff_base, self.config.backoff_cap, None, self.rng)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        else:
            return
        if attempt:
            self.log.info("sink started", attempts=attempt + 1)
            self.last_error = None
        for stream in self.streams:
            run = self._stream_intervals if stream.interval else self._stream_plain
            self.supervisor.spawn(f"fwd:{stream.cursor}:{stream.meter}", functools.partial(run, stream))
        self.supervisor.spawn(f"fwd:{self.name}:deadletters", self._dead_letter_retries)

    async def stop(self, grace: float) -> None:
        """Stop taking readings; let sends in flight finish for up to ``grace`` seconds, then cancel them."""
        self._stopping.set()
        for stream in self.streams:
            self.queue.event(stream.cursor, stream.meter).set()
        with contextlib.suppress(QueueError):  # what a stream awaits lazily (a sent mark, a poll) goes at once
            self.queue.commit_now()
        deadline = time.monotonic() + grace  # one grace for the whole stop, not one per step
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace)  # the start task may still add streams
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.supervisor.wait(max(0.0, deadline - time.monotonic()))
        self._tasks.clear()
        await self.sink.close()

    # ------------------------------------------------------------ one stream

    async def _stream_intervals(self, stream: Stream) -> None:
        """One aggregated reading per interval (:mod:`gateway.aggregate`); its acknowledgement moves the cursor
        past every reading it was made of."""
        log = self.log.bind(stream=stream.label)
        cursor, meter = stream.cursor, stream.meter
        event = self.queue.event(cursor, meter)
        position = await self.queue.cursor(cursor, meter)
        assert stream.interval is not None
        interval_ms = round(stream.interval * 1000)
        # The end of the last interval sent: a late reading inside it joins the next one, never repeats a stamp.
        last_end = bucket_end(position, interval_ms) if position >= 0 else -1
        buffer: deque[Reading] = deque()
        exhausted = False
        grew_at = time.monotonic()
        attempt = 0
        read_size = 256
        while not self._stopping.is_set():
            wait_until: float | None = None
            if buffer:
                end = max(bucket_end(buffer[0].ts_ms, interval_ms), last_end + interval_ms)
                n = next((i for i, r in enumerate(buffer) if r.ts_ms > end), len(buffer))
                closed = n < len(buffer) or buffer[n - 1].ts_ms == end
                if not closed and not exhausted:
                    more = await self._read(meter, buffer[-1].ts_ms, read_size, event)
                    buffer.extend(more)
                    exhausted = len(more) < read_size
                    grew_at = time.monotonic() if more else grew_at
                    continue
                # Without a reading after the interval, it closes once it is over and the meter has been quiet for
                # a while: a meter still sending (a backlog, late answers) may yet add to it.
                wait = max(end / 1000 - self.clock(), grew_at + AGGREGATE_GRACE - time.monotonic())
                if not closed and wait > 0:
                    wait_until = time.monotonic() + wait
            if not buffer or wait_until is not None:
                after = buffer[-1].ts_ms if buffer else position
                more = await self._read(meter, after, read_size, event)
                if more:
                    buffer.extend(more)
                    exhausted = len(more) < read_size
                    grew_at = time.monotonic()
                    continue
                exhausted = True
                timeout = IDLE_POLL if wait_until is None else min(IDLE_POLL, max(0.0, wait_until - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout)
                continue

            packet = aggregate([buffer[i] for i in range(n)], end, stream.last)
            async with self._slots:
                if self._stopping.is_set():
                    break
                (outcome,) = await self._send(stream, [packet], log)
            upto = buffer[n - 1].ts_ms
            if isinstance(outcome, Retry):
                attempt = await self._retry_later(stream, outcome, attempt, log)
                continue
            if isinstance(outcome, Reject):
                await self._reject(stream, packet, outcome, log, upto)
            elif isinstance(outcome, Skip):
                self.queue.ack(cursor, meter, upto, 0)
                self._skipped(stream, outcome, n)
            else:
                self.queue.ack(cursor, meter, upto, n)
                self._sent(stream, packet, outcome)
            for _ in range(n):
                buffer.popleft()
            position, last_end = upto, end
            # Refused for good is not "delivered again": the stream stays failing until a packet is delivered.
            attempt = attempt if isinstance(outcome, Reject) else self._succeeded(stream, attempt)

    async def _retry_later(self, stream: Stream, retry: Retry, attempt: int,
                           log: structlog.typing.FilteringBoundLogger) -> int:
        """Count the failure, log it if it is news, and back off; returns the new attempt number."""
        attempt += 1
        self._failed(stream, retry)
        delay = backoff_delay(attempt, self.config.backoff_base, self.config.backoff_cap, retry.after, self.rng)
        log.debug("retrying", attempt=attempt, delay_s=round(delay, 2), reason=retry.reason)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        return attempt

    def _succeeded(self, stream: Stream, attempt: int) -> int:
        if attempt:
            self._recovered(stream)
        return 0

    async def _stream_plain(self, stream: Stream) -> None:
        """Every reading, in order, in batches of ``max_batch``; with a sink whose ``pipeline`` is above 1, the next
        batches are sent before the first is answered (the sink keeps them in order, as an MQTT connection does)."""
        log = self.log.bind(stream=stream.label)
        cursor, meter = stream.cursor, stream.meter
        event = self.queue.event(cursor, meter)
        position = await self.queue.cursor(cursor, meter)
        depth = max(1, self.sink.pipeline)
        # How far this stream may have sent before: recorded on disk ahead of sending, a chunk at a time. What is
        # sent again up to there may have reached the platform before a crash without its acknowledgement being
        # recorded: it is counted as re-sent (an upper bound of the duplicates a restart can cause).
        # The mark may be ahead of the clock (see below): only what was taken before this start can be re-sent.
        stored = await self.queue.sent_mark(cursor, meter)
        sent_before = min(stored, int(self.clock() * 1000))
        # What the record on disk covers (``on_disk``), what it will cover once the renewal in ``renewing`` is
        # committed (``mark``): a batch goes out only once the record on disk covers it.
        mark = on_disk = stored
        renewing: asyncio.Future[None] | None = None
        resent = 0
        buffer: deque[Reading] = deque()
        ahead: deque[tuple[list[Reading], asyncio.Task[list[Outcome]]]] = deque()
        exhausted = False
        attempt = 0
        in_doubt = False
        read_size = max(2 * self.sink.max_batch * depth, 64)
        try:
            while not self._stopping.is_set():
                sent = sum(len(b) for b, _ in ahead)
                if (sent == len(buffer) and not exhausted) or not buffer:
                    more = await self._read(meter, buffer[-1].ts_ms if buffer else position, read_size, event)
                    buffer.extend(more)
                    exhausted = len(more) < read_size
                    if not buffer:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(event.wait(), IDLE_POLL)
                        exhausted = False
                        continue
                while len(ahead) < depth and sent < len(buffer):
                    batch = [buffer[i] for i in range(sent, min(sent + self.sink.max_batch, len(buffer)))]
                    # Live (the buffer holds all that is committed), the mark runs a minute ahead of the clock and
                    # is renewed, lazily, when half of that is used: a stream sending readings as they come writes
                    # it twice a minute and never with an fsync of its own, while the mark already on disk still
                    # covers what goes out meanwhile. In a backlog it stays a few batches ahead, written (and
                    # committed) before sending on.
                    live = exhausted
                    if batch[-1].ts_ms > (mark - SENT_MARK_HORIZON_MS // 2 if live else mark):
                        if renewing is not None:
                            on_disk = await self._settled(renewing, mark)
                        mark = buffer[min(len(buffer), sent + SENT_MARK_AHEAD * self.sink.max_batch) - 1].ts_ms
                        if live:
                            mark = max(mark, buffer[-1].ts_ms, int(self.clock() * 1000) + SENT_MARK_HORIZON_MS)
                        # Lazily only while the record on disk still covers the batch: one awaited waits no longer
                        # than the commit it needs.
                        renewing = self.queue.mark_sent(cursor, meter, mark, lazy=live and batch[-1].ts_ms <= on_disk)
                    if renewing is not None and (batch[-1].ts_ms > on_disk or renewing.done()):
                        # Live, the renewal rides the next commit while the record on disk still covers what goes
                        # out; only a batch beyond it (after a restart, or in a backlog) waits for the commit.
                        on_disk, renewing = await self._settled(renewing, mark), None
                    if batch[0].ts_ms <= sent_before:
                        n = sum(1 for r in batch if r.ts_ms <= sent_before)
                        if not resent:
                            log.info("sending again what went out before the restart unacknowledged",
                                     up_to=iso_utc(sent_before))
                        resent += n
                        # On disk before sending (a few batches after a restart): an upper bound that a kill
                        # right after cannot make an undercount.
                        with contextlib.suppress(QueueError):
                            await self.queue.count_now(sink_key(self.name, SinkCount.RESENT), n)
                    ahead.append((batch, asyncio.create_task(self._send_in_slot(stream, batch, log))))
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
                        await self._reject(stream, reading, outcome, log)
                    elif isinstance(outcome, Skip):
                        skipped += 1
                        self._skipped(stream, outcome, 1)
                    else:
                        delivered += 1
                        self._sent(stream, reading, outcome)
                    position = reading.ts_ms
                    buffer.popleft()
                if delivered or skipped:
                    self.queue.ack(cursor, meter, position, delivered)
                in_doubt = retry is not None  # a send without an answer may still have reached the platform
                if retry is None:
                    if delivered or skipped:  # a batch refused for good is no recovery
                        attempt = self._succeeded(stream, attempt)
                    continue
                # What was sent ahead is answered before trying again (an MQTT sink keeps it in flight and will
                # not publish it twice); its readings stay in the buffer and go again, in order.
                await self._drain(ahead)
                attempt = await self._retry_later(stream, retry, attempt, log)
        finally:
            answered = not ahead and not in_doubt
            for _, task in ahead:
                task.cancel()
            await self._drain(ahead)
            if answered and self._stopping.is_set():
                # A clean stop with nothing in flight: everything sent was acknowledged, so the mark comes back to
                # the last acknowledged reading, and the next start sends nothing "again" (nor says it does).
                with contextlib.suppress(QueueError):
                    self.queue.mark_sent(cursor, meter, position)

    @staticmethod
    async def _settled(renewal: asyncio.Future[None], mark: int) -> int:
        """Wait for a renewal of a stream's sent mark to be committed; what the record on disk then covers. Best
        effort: on a full disk, delivery (which frees space) goes on without the mark."""
        with contextlib.suppress(QueueError):
            await renewal
        return mark

    async def _send_in_slot(self, stream: Stream, batch: list[Reading], log: structlog.typing.FilteringBoundLogger
                            ) -> list[Outcome]:
        async with self._slots:
            return await self._send(stream, batch, log)

    @staticmethod
    async def _drain(ahead: deque[tuple[list[Reading], asyncio.Task[list[Outcome]]]]) -> None:
        tasks = [t for _, t in ahead]
        ahead.clear()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, meter: str, after: int, limit: int, event: asyncio.Event) -> list[Reading]:
        event.clear()
        return await self.queue.read(meter, after, limit)

    async def _send(self, stream: Stream, batch: list[Reading], log: structlog.typing.FilteringBoundLogger
                    ) -> list[Outcome]:
        try:
            outcomes = await asyncio.wait_for(self.sink.send(stream, batch), self.config.send_timeout)
        except TimeoutError:
            return [Retry(f"no answer within {self.config.send_timeout:g}s")] * len(batch)
        except Exception as e:  # a sink bug must cost a retry, never a reading
            log.exception("sink raised instead of returning an outcome")
            return [Retry(f"sink error: {type(e).__name__}")] * len(batch)
        if len(outcomes) != len(batch):
            log.error("sink returned the wrong number of outcomes", sent=len(batch), got=len(outcomes))
            return [Retry("sink returned the wrong number of outcomes")] * len(batch)
        # A reason may quote the platform's answer, which may quote the request (credentials included): what is
        # logged, shown by status and stored with a dead letter is scrubbed here, for every sink.
        return [o if isinstance(o, Delivered) else replace(o, reason=REDACTOR.scrub(o.reason)) for o in outcomes]

    async def _reject(self, stream: Stream, reading: Reading, outcome: Reject,
                      log: structlog.typing.FilteringBoundLogger, upto: int | None = None) -> None:
        await self.queue.dead_letter(stream.cursor, reading, outcome.reason, upto)
        # Logged on change: the first rejection of a stream at warning, the rest at debug until one is delivered
        # (a platform refusing every packet must not log a line per reading; the counter and status have them).
        key = stream.cursor + "\0" + stream.meter
        n = self._rejecting.get(key, 0)
        self._rejecting[key] = n + 1
        (log.warning if n == 0 else log.debug)("reading rejected: moved to dead letters", ts=iso_utc(reading.ts_ms),
                                               reason=outcome.reason)

    def _sent(self, stream: Stream, reading: Reading, outcome: Outcome) -> None:
        if self._rejecting:
            rejected = self._rejecting.pop(stream.cursor + "\0" + stream.meter, 0)
            if rejected > 1:
                self.log.info("readings delivered again after rejections", stream=stream.label, rejected=rejected)
        self.last_sent[stream.cursor] = {
            "ts_ms": reading.ts_ms,
            "at_ms": int(self.clock() * 1000),
            "packet": outcome.sent if isinstance(outcome, Delivered) else None,
        }

    def _skipped(self, stream: Stream, outcome: Skip, n: int) -> None:
        self.queue.count(sink_key(self.name, SinkCount.SKIPPED), n)
        if stream.cursor not in self._skipping:
            self._skipping.add(stream.cursor)
            self.log.info("readings not sent on purpose (counted as skipped)", stream=stream.label,
                          reason=outcome.reason)

    # ------------------------------------------------------------ health, logged on change

    def _failed(self, stream: Stream, retry: Retry) -> None:
        self.last_error = retry.reason
        self.queue.count(sink_key(self.name, SinkCount.RETRIED))
        if not self._failing:
            self._failing_since = time.monotonic()
            self.log.warning("delivery failing: readings are kept and retried", reason=retry.reason,
                             stream=stream.label)
        self._failing.add(stream.cursor + "\0" + stream.meter)

    def _recovered(self, stream: Stream) -> None:
        self._failing.discard(stream.cursor + "\0" + stream.meter)
        if not self._failing and self._failing_since is not None:
            self.log.info("delivery recovered", down_s=round(time.monotonic() - self._failing_since, 1))
            self._failing_since = None
            self.last_error = None

    # ------------------------------------------------------------ dead letters an operator asked to retry

    async def _dead_letter_retries(self) -> None:
        by_cursor = {(s.cursor, s.meter): s for s in self.streams}
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), DEADLETTER_POLL)
            if self._stopping.is_set():
                return
            # Lazy: a poll must not cost a commit of its own (it rides on the next one).
            letters = await self.queue.dead_letters(self.name, state="retry", limit=100, lazy=True)
            for dl in letters:
                stream = by_cursor.get((dl.sink, dl.reading.meter))
                if stream is None:
                    continue  # its stream is no longer configured; it stays marked until purged
                async with self._slots:
                    (outcome,) = await self._send(stream, [dl.reading], self.log)
                if isinstance(outcome, Retry):
                    break  # the sink is failing; the letter stays marked for retry
                delivered = isinstance(outcome, Delivered | Skip)
                reason = outcome.reason if isinstance(outcome, Reject) else ""
                await self.queue.resolve_dead_letter(dl, delivered, reason)
                self.log.info("dead letter retried", id=dl.id, delivered=delivered, reason=reason or None)
