"""The queue as the event loop sees it: one worker thread owns the SQLite connection.

Every operation is a job run by that thread. The thread takes all jobs waiting and runs them in one transaction,
then commits once: many sources appending at once cost one fsync (group commit). *Lazy* jobs may wait up to
``lazy_commit`` seconds for company, to spare SD cards: acknowledgements from forwarders (nobody awaits them), and
appends from sources that hold nothing upstream (a Modbus poll: its reading is confirmed a moment later, and a
whole tick of meters shares one commit). A job someone waits on promptly (a read, an MQTT batch whose broker
acknowledgements wait for the commit) commits at once, with whatever lazy jobs are pending.

A source's ``await append(...)`` returns only after the commit: a reading is confirmed once it is on disk.
When the disk is full, the transaction is rolled back, the appends report their readings as dropped (counted,
logged once), and the other jobs are tried again on their own; deleting delivered rows is what frees space.

The methods of :class:`DiskQueue` are all there is: each says what the writer thread does and whether the caller
waits for the commit. No caller runs code of its own on the store.
"""

from __future__ import annotations

import asyncio
import queue as stdqueue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from gateway.errors import QueueError, QueueFullError
from gateway.queue.codec import encode_reading
from gateway.queue.counters import CounterKey, CounterView, MeterCount, SinkCount, meter_key, sent_mark_key, sink_key
from gateway.queue.deadletters import DeadLetter
from gateway.queue.held import Released
from gateway.queue.journal import Journal
from gateway.queue.schema import is_disk_full
from gateway.queue.snapshot import Backlog, Snapshot
from gateway.queue.store import AppendOutcome, QueueStore
from gateway.reading import Reading
from gateway.stream import sink_of

log = structlog.get_logger("gateway.queue")
T = TypeVar("T")


@dataclass(slots=True)
class AppendResult:
    accepted: int = 0
    refused: list[tuple[Reading, str]] = field(default_factory=list)
    #: Readings that could not be written (full disk): counted and logged, never confirmed.
    dropped: int = 0


@dataclass(slots=True)
class _Job:
    fn: Callable[[QueueStore], Any]
    #: set on the event loop when the job's transaction is committed; None for jobs nobody awaits
    future: asyncio.Future[Any] | None
    #: set for appends: what to count as dropped if the write fails
    readings: Sequence[Reading] | None = None
    #: for appends: the readings' values encoded (once, on the event loop, for the journal and the store)
    blobs: Sequence[bytes] = ()
    on_commit: Callable[[QueueStore], None] | None = None
    #: may wait for the next commit (up to lazy_commit) although it has a future
    lazy: bool = False
    #: for appends: the journal segment the readings were handed to the kernel in (see queue/journal.py)
    segment: int | None = None


_STOP = object()


class DiskQueue:
    def __init__(self, store: QueueStore, lazy_commit: float = 0.2, bounds_interval: float = 10.0) -> None:
        self._store = store
        #: every append is handed to the kernel at once: a process crash loses none (see queue/journal.py)
        self._journal = Journal(store.path, store.boot)
        #: segments a crash left, not yet put back (a full disk at start): (their files, their readings per boot)
        self._replay: tuple[list[Path], list[tuple[str, list[Reading]]]] | None = None
        self.lazy_commit = lazy_commit
        self.bounds_interval = bounds_interval
        self._jobs: stdqueue.SimpleQueue[_Job | object] = stdqueue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._events: dict[str, dict[str, asyncio.Event]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_bounds = 0.0
        self._full_since: float | None = None
        self._settled: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        self._dropped_while_full = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._open)
        self._thread = threading.Thread(target=self._run, name="queue-writer", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Commit what is pending and close the file."""
        if self._thread is None:
            return
        self._jobs.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        await asyncio.to_thread(self._store.close)
        self._journal.close()

    def _open(self) -> None:
        """Open the file, and put back what a crash left in the journal before anything else is written. On a full
        disk the gateway starts all the same: the segments stay, and go back in with the first transaction that can
        be written, before the readings it holds (so they stay in order)."""
        self._store.open()
        left = self._journal.left_over()
        self._replay = (left, self._journal.read(left))
        self._journal.open(left)
        if not any(readings for _, readings in self._replay[1]):
            self._journal.discard(left)
            self._replay = None
            return
        store = self._store
        store.begin()
        try:
            n = self._put_back()
            store.commit()
        except sqlite3.Error as e:
            store.rollback()
            if not is_disk_full(e):
                raise QueueError(f"cannot put back the readings the last run left in its journal: {e}") from None
            log.error("the queue's disk is full: the readings the last run left in its journal go back in as soon"
                      " as space returns", segments=len(left), error=str(e))
            return
        self._replayed(n)

    def _put_back(self) -> int:
        """Inside a transaction, before any other write: the readings a crash left in the journal; how many."""
        assert self._replay is not None
        return sum(self._store.replay(readings, boot) for boot, readings in self._replay[1])

    def _replayed(self, n: int) -> None:
        """The transaction that put ``n`` readings back is committed."""
        assert self._replay is not None
        left, self._replay = self._replay[0], None
        self._journal.discard(left)
        if n:
            log.warning("readings taken before the last run stopped uncleanly were not yet committed: put back"
                        " from the queue's journal", readings=n, segments=len(left))

    @property
    def path(self) -> Path:
        return self._store.path

    @property
    def moved_aside(self) -> Path | None:
        """Where a corrupt file found at start was moved (a fresh queue was started)."""
        return self._store.moved_aside

    # ------------------------------------------------------------ sources

    async def append(self, readings: Sequence[Reading], prompt: bool = True) -> AppendResult:
        """Write readings; returns once they are committed (or known dropped). Not ``prompt``: the commit may wait up
        to ``lazy_commit`` for other writes (fewer, larger commits). A :class:`gateway.platforms.source.Emit`."""
        if self._thread is None:
            raise QueueError("the queue is not running")
        blobs = [encode_reading(r) for r in readings]  # once, for the journal and the store
        job = _Job(lambda st: st.append(readings, blobs), self._future(), readings, lazy=not prompt, blobs=blobs)
        if readings:
            job.segment = self._journal.write(readings, blobs)
        outcome = await self._submit(job)
        if isinstance(outcome, AppendResult):  # dropped on a full disk
            return outcome
        result = AppendResult(outcome.accepted, outcome.refused)
        for meter in {r.meter for r in readings}:
            for ev in self._events.get(meter, {}).values():
                ev.set()
        return result

    # ------------------------------------------------------------ streams (forwarders)

    async def configure(self, streams: Mapping[str, Sequence[str]]) -> list[str]:
        """The active streams and the meters each wants; a new one starts after what is queued. Returns the streams
        known to the queue that are no longer active (their cursors are kept)."""
        return await self._do(lambda st: st.configure(streams))

    async def last_ts(self, meter: str) -> int:
        """The timestamp of the last reading queued for ``meter`` (-1: none), commits pending included."""

        def fn(st: QueueStore) -> int:
            mid = st.meter_ids.get(meter) or st.pending.new_meters.get(meter)
            return -1 if mid is None else st.last_ts_of(mid)

        return await self._do(fn)

    async def cursor(self, stream: str, meter: str) -> int:
        """The timestamp of the last reading of ``meter`` the stream delivered (-1: none)."""
        return await self._do(lambda st: st.cursor(stream, meter))

    async def read(self, meter: str, after_ts: int, limit: int) -> list[Reading]:
        """Committed readings of ``meter`` after ``after_ts``, read beside the writer (it is not made to commit)."""
        if self._thread is None:
            raise QueueError("the queue is not running")
        return await asyncio.to_thread(self._store.read_committed, meter, after_ts, limit)

    def event(self, stream: str, meter: str) -> asyncio.Event:
        """Set whenever readings of ``meter`` are committed; one per stream so no waiter steals another's."""
        return self._events.setdefault(meter, {}).setdefault(stream, asyncio.Event())

    def ack(self, stream: str, meter: str, ts_ms: int, delivered: int) -> None:
        """The platform acknowledged ``meter`` up to ``ts_ms`` (``delivered`` readings). Not awaited."""

        def fn(st: QueueStore) -> None:
            st.ack(stream, meter, ts_ms)
            st.count(sink_key(sink_of(stream), SinkCount.DELIVERED), delivered)

        self._post(fn)

    async def dead_letter(self, stream: str, reading: Reading, reason: str, upto_ts: int | None = None) -> None:
        """Keep a refused reading aside and move the stream past it (up to ``upto_ts``, for an aggregate of several
        readings); awaited, so the cursor never skips a reading not yet saved."""
        job = _Job(
            lambda st: st.dead_letter(stream, reading, reason),
            self._future(),
            on_commit=lambda st: st.ack(stream, reading.meter, reading.ts_ms if upto_ts is None else upto_ts),
        )
        await self._submit(job)

    async def sent_mark(self, stream: str, meter: str) -> int:
        """How far the stream may have sent before (-1: nothing): see :mod:`gateway.forwarder`."""
        return await self._do(lambda st: st.counters.get(sent_mark_key(stream, meter), -1))

    def mark_sent(self, stream: str, meter: str, ts_ms: int, lazy: bool = False) -> asyncio.Future[None]:
        """Record that the stream may send up to ``ts_ms``; queued at once (ordered before any later job), done once
        committed."""
        done = self._queue_job(lambda st: st.gauge(sent_mark_key(stream, meter), ts_ms), lazy)
        # Whoever does not await it (a clean stop) loses nothing: a failure is logged by the writer already.
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        return done

    def count(self, key: CounterKey, n: int = 1) -> None:
        """Add to a counter with the next commit. Not awaited."""
        self._post(lambda st: st.count(key, n))

    async def count_now(self, key: CounterKey, n: int = 1) -> None:
        """Add to a counter, committed before this returns."""
        await self._do(lambda st: st.count(key, n))

    async def dead_letters(self, sink: str | None = None, state: str | None = None, limit: int = 1000,
                           lazy: bool = False) -> list[DeadLetter]:
        return await self._do(lambda st: st.dead_letters(sink, state, limit), lazy)

    async def retry_dead_letters(self, ids: Sequence[int] | None, sink: str | None = None) -> int:
        """Marked to be sent again (the forwarders pick them up within seconds); how many."""
        return await self._do(lambda st: st.mark_dead_letters(ids, "retry", sink))

    async def purge_dead_letters(self, ids: Sequence[int] | None, sink: str | None = None) -> int:
        """Deleted for good; how many."""
        return await self._do(lambda st: st.purge_dead_letters(ids, sink))

    async def resolve_dead_letter(self, letter: DeadLetter, delivered: bool, reason: str = "") -> None:
        """A dead letter retried: delivered (deleted and counted), or refused again with ``reason``."""

        def fn(st: QueueStore) -> None:
            st.resolve_dead_letter(letter.id, delivered, reason)
            if delivered:
                st.count(sink_key(sink_of(letter.sink), SinkCount.DELIVERED))

        await self._do(fn)

    # ------------------------------------------------------------ the clock

    def release_held(self, offset_ms: int | None) -> asyncio.Future[Released]:
        """Re-stamp and queue the readings held for the clock (``offset_ms`` = wall - monotonic), or with None only
        report those of earlier boots. Queued synchronously: every reading appended after this call is ordered
        after the released ones."""
        return self._queue_job(lambda st: st.release_held(offset_ms))

    # ------------------------------------------------------------ status and the daemon's records

    async def snapshot(self, sinks: Mapping[str, Sequence[tuple[str, str]]]) -> Snapshot:
        return await self._do(lambda st: st.snapshot(sinks))

    async def backlog(self, sink: str, streams: Sequence[tuple[str, str]]) -> Backlog:
        return await self._do(lambda st: st.backlog(sink, streams))

    async def counters(self) -> CounterView:
        return await self._do(lambda st: CounterView(st.counters.snapshot()))

    async def last_sent(self) -> dict[str, Any]:
        return await self._do(lambda st: st.last_sent())

    async def write_records(self, records: Mapping[str, dict[str, object]], lazy: bool = False) -> None:
        """Write the daemon's records (``meta``: its heartbeat, what each stream sent last...)."""

        def fn(st: QueueStore) -> None:
            for key, value in records.items():
                st.set_meta(key, value)

        await self._do(fn, lazy)

    def commit_now(self) -> None:
        """Commit what waits for company at once (a stop or a reload should not wait ``lazy_commit``)."""
        self._queue_job(lambda st: None)

    async def flush(self) -> None:
        """Everything queued before this call is committed."""
        await self._do(lambda st: None)

    # ------------------------------------------------------------ plumbing

    async def _do(self, fn: Callable[[QueueStore], T], lazy: bool = False) -> T:
        return await self._queue_job(fn, lazy)

    def _queue_job(self, fn: Callable[[QueueStore], T], lazy: bool = False) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self._future()
        self._put(_Job(fn, future, lazy=lazy))
        return future

    def _post(self, fn: Callable[[QueueStore], Any]) -> None:
        self._put(_Job(fn, None))

    def _put(self, job: _Job) -> None:
        if self._thread is None:
            raise QueueError("the queue is not running")
        self._jobs.put(job)

    async def _submit(self, job: _Job) -> Any:
        self._put(job)
        assert job.future is not None
        return await job.future

    def _future(self) -> asyncio.Future[Any]:
        assert self._loop is not None
        return self._loop.create_future()

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._jobs.get()
            jobs: list[_Job] = []
            # A job someone waits for (not lazily) makes the batch urgent: what is queued already joins it, nothing
            # more is waited for. (Kept as the jobs come: asking every job at each arrival was quadratic in a
            # batch, a few per cent of a core at 384 meters.)
            urgent = False
            if first is _STOP:
                stop = True
            else:
                assert isinstance(first, _Job)
                jobs.append(first)
                urgent = first.future is not None and not first.lazy
            deadline = time.monotonic() + self.lazy_commit
            while True:
                try:
                    if urgent or stop:
                        nxt = self._jobs.get_nowait()
                    else:
                        nxt = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except stdqueue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                else:
                    assert isinstance(nxt, _Job)
                    jobs.append(nxt)
                    urgent = urgent or (nxt.future is not None and not nxt.lazy)
            if jobs:
                self._process(jobs)
                self._hand_back()

    def _process(self, jobs: list[_Job]) -> None:
        # What is appended from now on goes to a new journal segment: the current one can go once settled.
        self._journal.rotate()
        if self._store.file.is_gone(self._store.undelivered):
            # Readings written now would vanish at the next restart: refused (counted as dropped). Acknowledgements
            # and the rest go on, so the backlog the open file holds is still delivered.
            for job in [j for j in jobs if j.readings is not None]:
                self._drop(job)
            jobs = [j for j in jobs if j.readings is None]
            if not jobs:
                return
        try:
            self._store.begin()
            put_back = self._put_back() if self._replay is not None else None
            results = self._run_jobs(jobs)
            now = time.monotonic()
            if now - self._last_bounds >= self.bounds_interval:
                self._last_bounds = now
                lost = self._store.enforce_bounds()
                if lost:
                    log.warning("queue bound reached: oldest readings dropped", lost_per_sink=lost)
            self._store.commit()
        except sqlite3.Error as e:
            self._store.rollback()
            if not is_disk_full(e):
                log.error("queue transaction failed", error=str(e))
                for job in jobs:
                    self._fail(job, QueueError(f"queue write failed: {e}"))
                return
            self._disk_full(jobs, e)
            return
        if put_back is not None:
            self._replayed(put_back)
        self._recovered()
        self._committed(results)

    def _committed(self, results: list[tuple[_Job, Any, BaseException | None]]) -> None:
        """After a commit: apply what waited for it, then hand each job its result."""
        for job, value, err in results:
            if job.on_commit is not None and err is None:
                job.on_commit(self._store)
            if job.readings is not None:  # committed or refused (or failed, and its caller told): out of the journal
                self._journal.settle(job.segment, len(job.readings))
            self._resolve(job, value, err)

    def _run_jobs(self, jobs: list[_Job]) -> list[tuple[_Job, Any, BaseException | None]]:
        """Run jobs in order; neighbouring appends become one insert (the common case under load)."""
        results: list[tuple[_Job, Any, BaseException | None]] = []
        i = 0
        while i < len(jobs):
            j = i
            while j < len(jobs) and jobs[j].readings is not None:
                j += 1
            if j - i > 1:
                results += self._append_together(jobs[i:j])
                i = j
            else:
                results.append(self._call(jobs[i]))
                i += 1
        return results

    def _append_together(self, jobs: list[_Job]) -> list[tuple[_Job, Any, BaseException | None]]:
        merged = [r for job in jobs for r in job.readings or ()]
        outcome = self._store.append(merged, [b for job in jobs for b in job.blobs])
        refused = {id(r): why for r, why in outcome.refused}
        results: list[tuple[_Job, Any, BaseException | None]] = []
        for job in jobs:
            mine = [(r, refused[id(r)]) for r in job.readings or () if id(r) in refused]
            results.append((job, AppendOutcome(len(job.readings or ()) - len(mine), mine), None))
        return results

    def _call(self, job: _Job) -> tuple[_Job, Any, BaseException | None]:
        try:
            return job, job.fn(self._store), None
        except sqlite3.Error:
            raise
        except Exception as e:  # a bug in one job must not fail the others
            log.exception("queue job failed")
            return job, None, e

    def _disk_full(self, jobs: list[_Job], e: BaseException) -> None:
        appends = [j for j in jobs if j.readings is not None]
        others = [j for j in jobs if j.readings is None]
        dropped = 0
        for job in appends:
            dropped += self._drop(job)
        if self._full_since is None:
            self._full_since = time.monotonic()
            log.error(
                "queue cannot write: the disk is full; new readings are dropped until space returns",
                path=str(self._store.path), error=str(e),
            )
        self._dropped_while_full += dropped
        if not others:
            return
        try:  # acknowledgements and dead letters on their own: deleting delivered rows frees space
            self._store.begin()
            results = self._run_jobs(others)
            self._store.commit()
        except sqlite3.Error as e2:
            self._store.rollback()
            for job in others:
                self._fail(job, QueueFullError(f"queue write failed: {e2}"))
            return
        self._committed(results)

    def _recovered(self) -> None:
        if self._full_since is not None:
            log.warning(
                "queue writes work again",
                down_s=round(time.monotonic() - self._full_since, 1),
                dropped=self._dropped_while_full,
            )
            self._full_since = None
            self._dropped_while_full = 0

    def _resolve(self, job: _Job, value: Any, err: BaseException | None) -> None:
        if job.future is not None:
            self._settled.append((job.future, value, err))

    def _hand_back(self) -> None:
        """Results go back to the event loop in one call per transaction, not one wake-up per job."""
        settled, self._settled = self._settled, []
        if settled and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_settle, settled)

    def _fail(self, job: _Job, err: BaseException) -> None:
        if job.readings is not None:
            self._drop(job)
        else:
            self._resolve(job, None, err)

    def _drop(self, job: _Job) -> int:
        """Report an append's readings as dropped; the counters reach the disk with the next commit that works."""
        readings = job.readings or ()
        for r in readings:
            self._store.count(meter_key(r.meter, MeterCount.DROPPED_WRITE_FAILED))
        self._journal.settle(job.segment, len(readings))
        self._resolve(job, AppendResult(dropped=len(readings)), None)
        return len(readings)


def _settle(settled: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, err in settled:
        if fut.done():  # its waiter was cancelled (a stop); the work is done all the same
            continue
        if err is None:
            fut.set_result(value)
        else:
            fut.set_exception(err)
