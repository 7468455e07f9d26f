"""A forwarder moves one sink's readings from the queue to the sink: ordering, retries, backoff, the cursors.

A sink receives one or more streams (see :mod:`gateway.stream`). Per stream, strictly sequential: the next reading
is sent only after the previous one was acknowledged (or moved to the dead letters). Streams are sent in parallel,
at most ``max_in_flight`` sends at once. A stream with an ``interval`` sends one aggregated reading per interval
(:mod:`gateway.aggregate`), and acknowledges all the readings it was made of at once. The two kinds of stream are
objects of their own (:mod:`.streams`), as is a plain stream's record of how far it may have sent (:mod:`.sentmark`);
the forwarder holds what they share: the sink, its slots, sending, outcomes, health, and the dead-letter retries.

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
from collections.abc import Callable, Sequence
from dataclasses import replace

import structlog

from gateway.config.common import SinkBase
from gateway.errors import QueueError
from gateway.forwarder.streams import IntervalStream, PlainStream
from gateway.logs import REDACTOR
from gateway.outcome import SKIP_LATE, Delivered, Outcome, Reject, Retry, Skip
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
        self.slots = asyncio.Semaphore(config.max_in_flight)
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        #: Streams and dead-letter retries: a failure is reported and the task started again from its cursor.
        self.supervisor = Supervisor(self.stopping)
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

    @property
    def failing_since_ms(self) -> int | None:
        """When (wall clock, ms) delivery started failing; None while it delivers."""
        if self._failing_since is None or self.last_error is None:
            return None
        return int((time.time() - (time.monotonic() - self._failing_since)) * 1000)

    async def start(self) -> None:
        """Start in the background: a sink that cannot start yet (a directory missing...) is retried with backoff."""
        self._tasks.append(asyncio.create_task(self._start_sink(), name=f"fwd:{self.name}:start"))

    async def _start_sink(self) -> None:
        attempt = 0
        while not self.stopping.is_set():
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
                    await asyncio.wait_for(self.stopping.wait(), delay)
        else:
            return
        if attempt:
            self.log.info("sink started", attempts=attempt + 1)
            self.last_error = None
        for stream in self.streams:
            kind = IntervalStream if stream.interval else PlainStream
            self.supervisor.spawn(f"fwd:{stream.cursor}:{stream.meter}", functools.partial(_run, kind, self, stream))
        self.supervisor.spawn(f"fwd:{self.name}:deadletters", self._dead_letter_retries)

    async def stop(self, grace: float) -> None:
        """Stop taking readings; let sends in flight finish for up to ``grace`` seconds, then cancel them."""
        self.stopping.set()
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

    # ------------------------------------------------------------ what the streams share

    async def retry_later(self, stream: Stream, retry: Retry, attempt: int,
                           log: structlog.typing.FilteringBoundLogger) -> int:
        """Count the failure, log it if it is news, and back off; returns the new attempt number."""
        attempt += 1
        self._failed(stream, retry)
        delay = backoff_delay(attempt, self.config.backoff_base, self.config.backoff_cap, retry.after, self.rng)
        log.debug("retrying", attempt=attempt, delay_s=round(delay, 2), reason=retry.reason)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), delay)
        return attempt

    def succeeded(self, stream: Stream, attempt: int) -> int:
        if attempt:
            self._recovered(stream)
        return 0

    async def send_in_slot(self, stream: Stream, batch: list[Reading], log: structlog.typing.FilteringBoundLogger
                            ) -> list[Outcome]:
        async with self.slots:
            return await self.send(stream, batch, log)

    async def send(self, stream: Stream, batch: list[Reading], log: structlog.typing.FilteringBoundLogger
                    ) -> list[Outcome]:
        """The sink's outcomes for ``batch``; a late period reading is skipped here for a sink that cannot add or
        replace a past period (it never sees one)."""
        if self.sink.late_periods or not any(r.end_ms is not None for r in batch):
            return await self._send(stream, batch, log)
        timely = [r for r in batch if r.end_ms is None]
        answered = iter(await self._send(stream, timely, log) if timely else [])
        return [next(answered) if r.end_ms is None else SKIP_LATE for r in batch]

    async def _send(self, stream: Stream, batch: list[Reading], log: structlog.typing.FilteringBoundLogger
                    ) -> list[Outcome]:
        try:
            async with asyncio.timeout(self.config.send_timeout):  # no task of its own, unlike wait_for
                outcomes = await self.sink.send(stream, batch)
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

    async def reject(self, stream: Stream, reading: Reading, outcome: Reject,
                      log: structlog.typing.FilteringBoundLogger, upto: int | None = None) -> None:
        await self.queue.dead_letter(stream.cursor, reading, outcome.reason, upto)
        # Logged on change: the first rejection of a stream at warning, the rest at debug until one is delivered
        # (a platform refusing every packet must not log a line per reading; the counter and status have them).
        key = stream.cursor + "\0" + stream.meter
        n = self._rejecting.get(key, 0)
        self._rejecting[key] = n + 1
        (log.warning if n == 0 else log.debug)("reading rejected: moved to dead letters", ts=iso_utc(reading.ts_ms),
                                               reason=outcome.reason)

    def sent(self, stream: Stream, reading: Reading, outcome: Outcome) -> None:
        if self._rejecting:
            rejected = self._rejecting.pop(stream.cursor + "\0" + stream.meter, 0)
            if rejected > 1:
                self.log.info("readings delivered again after rejections", stream=stream.label, rejected=rejected)
        self.last_sent[stream.cursor] = {
            "ts_ms": reading.ts_ms,
            "at_ms": int(self.clock() * 1000),
            "packet": outcome.sent if isinstance(outcome, Delivered) else None,
        }

    def skipped(self, stream: Stream, outcome: Skip, n: int) -> None:
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
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), DEADLETTER_POLL)
            if self.stopping.is_set():
                return
            # Lazy: a poll must not cost a commit of its own (it rides on the next one).
            letters = await self.queue.dead_letters(self.name, state="retry", limit=100, lazy=True)
            for dl in letters:
                stream = by_cursor.get((dl.sink, dl.reading.meter))
                if stream is None:
                    continue  # its stream is no longer configured; it stays marked until purged
                async with self.slots:
                    (outcome,) = await self.send(stream, [dl.reading], self.log)
                if isinstance(outcome, Retry):
                    break  # the sink is failing; the letter stays marked for retry
                delivered = isinstance(outcome, Delivered | Skip)
                reason = outcome.reason if isinstance(outcome, Reject) else ""
                await self.queue.resolve_dead_letter(dl, delivered, reason)
                self.log.info("dead letter retried", id=dl.id, delivered=delivered, reason=reason or None)


async def _run(kind: type[IntervalStream | PlainStream], fwd: Forwarder, stream: Stream) -> None:
    """A stream from its cursor: a new object at each (re)start."""
    await kind(fwd, stream).run()
