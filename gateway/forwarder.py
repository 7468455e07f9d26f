"""A forwarder moves one sink's readings from the queue to the sink: ordering, retries, backoff and the cursor.

Per meter, strictly sequential: the next reading of a meter is sent only after the previous one was acknowledged
(or moved to the dead letters). Meters are sent in parallel, at most ``max_in_flight`` sends at once.
Failed sends back off exponentially with full jitter (``backoff_base`` doubling up to ``backoff_cap``) and never
sooner than a server's Retry-After. The sink's health is logged on change only: once when delivery starts
failing, once when it recovers, with how long it was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Sequence

import structlog

from gateway.config.models import SinkBase
from gateway.outcome import Delivered, Outcome, Reject, Retry
from gateway.queue import DiskQueue, QueueStore
from gateway.reading import Reading, iso_utc
from gateway.sinks import Sink

#: Longest wait a server's Retry-After can impose; beyond it the header is taken as a mistake.
MAX_RETRY_AFTER = 3600.0
#: How often a forwarder looks for dead letters an operator asked to retry.
DEADLETTER_POLL = 5.0
#: Longest idle wait before a stream looks at the queue again even without a notification.
IDLE_POLL = 5.0


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
        meters: Sequence[str],
        rng: random.Random | None = None,
    ) -> None:
        self.sink = sink
        self.config = config
        self.queue = queue
        self.meters = list(meters)
        self.rng = rng or random.Random()
        self.log = structlog.get_logger("gateway.forwarder").bind(sink=sink.name)
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._failing: set[str] = set()
        self._failing_since: float | None = None
        self.last_error: str | None = None

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
                self.last_error = f"cannot start: {e}"
                delay = backoff_delay(attempt, self.config.backoff_base, self.config.backoff_cap, None, self.rng)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        else:
            return
        if attempt:
            self.log.info("sink started", attempts=attempt + 1)
            self.last_error = None
        for meter in self.meters:
            self._tasks.append(asyncio.create_task(self._supervise(meter), name=f"fwd:{self.name}:{meter}"))
        self._tasks.append(asyncio.create_task(self._dead_letter_retries(), name=f"fwd:{self.name}:deadletters"))

    async def _supervise(self, meter: str) -> None:
        # A bug in a stream must not silently stall a meter: log it and start the stream again from its cursor.
        while not self._stopping.is_set():
            try:
                await self._stream(meter)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("forwarder stream failed; restarting it in 5 s", meter=meter)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 5.0)

    async def stop(self, grace: float) -> None:
        """Stop taking readings; let sends in flight finish for up to ``grace`` seconds, then cancel them."""
        self._stopping.set()
        for meter in self.meters:
            self.queue.event(self.name, meter).set()
        if self._tasks:
            await asyncio.wait(self._tasks[:1], timeout=grace)  # the start task may still add streams
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for t in self._tasks:
                if not t.cancelled() and t.exception() is not None:
                    self.log.error("forwarder task failed", error=repr(t.exception()))
        self._tasks.clear()
        await self.sink.close()

    # ------------------------------------------------------------ one meter

    async def _stream(self, meter: str) -> None:
        log = self.log.bind(meter=meter)
        event = self.queue.event(self.name, meter)
        position = await self.queue.run(lambda st: st.cursor(self.name, meter))
        buffer: deque[Reading] = deque()
        attempt = 0
        read_size = max(2 * self.sink.max_batch, 64)
        while not self._stopping.is_set():
            if not buffer:
                event.clear()
                buffer.extend(await self.queue.read(meter, position, read_size))
                if not buffer:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(event.wait(), IDLE_POLL)
                    continue
            batch = [buffer[i] for i in range(min(self.sink.max_batch, len(buffer)))]
            async with self._slots:
                if self._stopping.is_set():
                    break
                outcomes = await self._send(batch, log)
            delivered = 0
            retry: Retry | None = None
            for reading, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Delivered):
                    delivered += 1
                    position = reading.ts_ms
                elif isinstance(outcome, Reject):
                    if delivered:
                        self.queue.ack(self.name, meter, position, delivered)
                        delivered = 0
                    await self.queue.dead_letter(self.name, reading, outcome.reason)
                    log.warning("reading rejected: moved to dead letters", ts=iso_utc(reading.ts_ms),
                                reason=outcome.reason)
                    position = reading.ts_ms
                else:
                    retry = outcome
                    break
                buffer.popleft()
            if delivered:
                self.queue.ack(self.name, meter, position, delivered)
            if retry is None:
                if attempt:
                    self._recovered(meter)
                attempt = 0
                continue
            attempt += 1
            self._failed(meter, retry, attempt)
            delay = backoff_delay(attempt, self.config.backoff_base, self.config.backoff_cap, retry.after, self.rng)
            log.debug("retrying", attempt=attempt, delay_s=round(delay, 2), reason=retry.reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _send(self, batch: list[Reading], log: structlog.typing.FilteringBoundLogger) -> list[Outcome]:
        try:
            outcomes = await asyncio.wait_for(self.sink.send(batch), self.config.send_timeout)
        except TimeoutError:
            return [Retry(f"no answer within {self.config.send_timeout:g}s")] * len(batch)
        except Exception as e:  # a sink bug must cost a retry, never a reading
            log.exception("sink raised instead of returning an outcome")
            return [Retry(f"sink error: {type(e).__name__}")] * len(batch)
        if len(outcomes) != len(batch):
            log.error("sink returned the wrong number of outcomes", sent=len(batch), got=len(outcomes))
            return [Retry("sink returned the wrong number of outcomes")] * len(batch)
        return outcomes

    # ------------------------------------------------------------ health, logged on change

    def _failed(self, meter: str, retry: Retry, attempt: int) -> None:
        self.last_error = retry.reason
        self.queue.post(lambda st: st.count(f"sink.{self.name}.retried"))
        if not self._failing:
            self._failing_since = time.monotonic()
            self.log.warning("delivery failing: readings are kept and retried", reason=retry.reason, meter=meter)
        self._failing.add(meter)

    def _recovered(self, meter: str) -> None:
        self._failing.discard(meter)
        if not self._failing and self._failing_since is not None:
            self.log.info("delivery recovered", down_s=round(time.monotonic() - self._failing_since, 1))
            self._failing_since = None
            self.last_error = None

    # ------------------------------------------------------------ dead letters an operator asked to retry

    async def _dead_letter_retries(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), DEADLETTER_POLL)
            if self._stopping.is_set():
                return
            letters = await self.queue.run(lambda st: st.dead_letters(self.name, state="retry", limit=100))
            for dl in letters:
                async with self._slots:
                    (outcome,) = await self._send([dl.reading], self.log)
                if isinstance(outcome, Retry):
                    break  # the sink is failing; the letter stays marked for retry
                delivered = isinstance(outcome, Delivered)
                reason = outcome.reason if isinstance(outcome, Reject) else ""

                def resolve(st: QueueStore, dl_id: int = dl.id, ok: bool = delivered, why: str = reason) -> None:
                    st.resolve_dead_letter(dl_id, ok, why)
                    if ok:
                        st.count(f"sink.{self.name}.delivered")

                await self.queue.run(resolve)
                self.log.info("dead letter retried", id=dl.id, delivered=delivered, reason=reason or None)
