"""The queue file as one thread uses it: meters, cursors, appending and reading, transactions.

Synchronous and not thread-safe: one owner thread (:mod:`gateway.queue.service`); a command beside the running
daemon opens its own store without repair. The layout and the invariants are in :mod:`gateway.queue`; each concern
with rules of its own has a module: :mod:`.codec` (bytes on disk), :mod:`.schema` (tables, opening, upgrades),
:mod:`.counters`, :mod:`.deadletters`, :mod:`.held`, :mod:`.bounds`, :mod:`.watch` (the file removed underneath),
:mod:`.snapshot` (what ``status`` sees).

Writes are grouped by the caller between :meth:`QueueStore.begin` and :meth:`QueueStore.commit`; in-memory state
changed inside a transaction is applied only when it commits, so a failed commit (full disk) leaves memory and disk
agreeing.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from gateway.errors import QueueError
from gateway.queue import bounds, deadletters, held, meta, schema, snapshot, watch
from gateway.queue.codec import (
    FLAG_CLOCK_SYNCED,
    FLAG_RESTAMPED,
    Row,
    chunk_readings,
    encode_chunk,
    encode_reading,
    reading_of,
    split,
)
from gateway.queue.counters import (
    CounterKey,
    Counters,
    MeterCount,
    QueueCount,
    SinkCount,
    meter_key,
    queue_key,
    sink_key,
)
from gateway.queue.deadletters import DeadLetter
from gateway.queue.held import Released
from gateway.queue.snapshot import Backlog, Snapshot
from gateway.reading import Reading
from gateway.stream import sink_of
from gateway.timekeeper import boot_id

log = structlog.get_logger("gateway.queue")

#: Delivered chunks kept per meter to be rewritten in place by the next ones (a commit then writes one page per
#: chunk, not one for the new chunk and one for freeing the old).
SPARE_CHUNKS = 2

#: The fault-injection seam for a full disk: the largest the file may grow, in pages (None: no cap), asked at every
#: transaction. Tests and the soak provoke a real SQLITE_FULL with it without filling a disk.
PageCap = Callable[[], int | None]


@dataclass(slots=True)
class AppendOutcome:
    #: Readings confirmed on disk (held ones included).
    accepted: int = 0
    #: (reading, why) for readings refused on purpose: not newer than the last one queued for the meter.
    refused: list[tuple[Reading, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    last_ts: dict[int, int] = field(default_factory=dict)
    new_meters: dict[str, int] = field(default_factory=dict)
    #: meter id -> readings appended in this transaction: one chunk each (or more) at commit
    rows: dict[int, list[Row]] = field(default_factory=dict)
    #: meters whose last timestamp cannot be worked out from readings and cursors any more: written at commit
    store_last_ts: set[int] = field(default_factory=set)


class QueueStore:
    def __init__(
        self,
        path: Path,
        durability: str = "full",
        max_size: int = 512 * 10**6,
        max_age_s: float = 30 * 86400.0,
        clock: Callable[[], float] = time.time,
        boot: str | None = None,
        page_cap: PageCap | None = None,
    ) -> None:
        self.path = path
        #: This boot: readings held in it can be re-stamped from the monotonic clock.
        self.boot = boot if boot is not None else boot_id()
        #: Wall minus monotonic (ms) once the clock is trusted: late held readings are re-stamped on arrival.
        self.offset_ms: int | None = None
        self.durability = durability
        self.max_size = max_size
        self.max_age_ms = int(max_age_s * 1000)
        self.clock = clock
        self._page_cap = page_cap
        self._page_cap_seen: int | None = None
        self._db: sqlite3.Connection | None = None
        self._in_txn = False
        self.pending = _Pending()
        self.meter_ids: dict[str, int] = {}
        self.meter_names: dict[int, str] = {}
        self.last_ts: dict[int, int] = {}
        #: stream -> meter_id -> ts_ms of the last acknowledged reading
        self.cursors: dict[str, dict[int, int]] = {}
        self._dirty_cursors: set[tuple[str, int]] = set()
        #: active streams -> the meter ids they want
        self.wanted: dict[str, set[int]] = {}
        self._deleted_upto: dict[int, int] = {}
        self.counters = Counters()
        self.moved_aside: Path | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        #: Is the file at ``path`` still the one open? (see gateway/queue/watch.py)
        self.file = watch.FileWatch(path)
        self._owner = False

    # ------------------------------------------------------------ opening and closing

    def open(self, repair: bool = True) -> None:
        """Open (creating if needed). With ``repair``, a corrupt file is moved aside and a fresh one started;
        without (the CLI, beside a running daemon), it is reported and left alone."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise QueueError(f"cannot create the state directory {self.path.parent}: {e.strerror}") from None
        wal_was_missing = watch.wal_missing(self.path)
        try:
            self._connect(check=repair)
        except sqlite3.DatabaseError as e:
            if not repair or not schema.is_corrupt(e):
                raise QueueError(f"cannot open the queue {self.path}: {e}") from None
            self.moved_aside = schema.move_aside(self.path, self.clock)
            log.error(
                "queue file is corrupt: moved aside, starting a fresh queue",
                path=str(self.path), moved_to=str(self.moved_aside), error=str(e),
            )
            try:
                self._connect(check=True)
            except sqlite3.DatabaseError as e2:
                raise QueueError(f"cannot create a fresh queue {self.path}: {e2}") from None
        self.file.opened()
        if repair:  # the daemon (not a command looking beside it) reports what happened to the file before
            self._report_incidents(wal_was_missing and self.file.running_flag.exists())
            with contextlib.suppress(OSError):
                self.file.running_flag.touch()
            self._owner = True

    def _connect(self, check: bool) -> None:
        self._db = schema.connect(self.path, self.durability, check)
        try:
            self._page_cap_seen = None
            self._follow_page_cap()
            self._load_state()
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
            raise

    def _load_state(self) -> None:
        db = self.conn
        for mid, name, last_ts in db.execute("SELECT id, name, last_ts FROM meters"):
            self.meter_ids[name] = mid
            self.meter_names[mid] = name
            self.last_ts[mid] = last_ts
        # meters.last_ts is written only when nothing else keeps it (see commit): the newest queued reading, or
        # failing that the newest acknowledged one, says the rest.
        for sink, mid, ts in db.execute("SELECT sink, meter_id, ts_ms FROM cursors"):
            self.cursors.setdefault(sink, {})[mid] = ts
            self.last_ts[mid] = max(self.last_ts.get(mid, -1), ts)
        for mid, ts in db.execute("SELECT meter_id, max(ts_ms) FROM readings GROUP BY meter_id"):
            self.last_ts[mid] = max(self.last_ts.get(mid, -1), ts)
        self.counters.load(db)

    def _report_incidents(self, wal_lost: bool) -> None:
        """A queue file removed under the last run (its marker), or a write-ahead log lost after a crash: logged,
        counted and kept (meta ``queue_incidents``) for ``status``."""
        incidents: list[dict[str, object]] = []
        lost = watch.take_marker(self.path.parent)
        if lost is not None:
            abandoned = lost.get("abandoned")
            log.error("the previous run's queue file was removed while it ran: the readings it held and had not"
                      " delivered were abandoned", abandoned=abandoned, removed_at=lost.get("at_ms"))
            self.count(queue_key(QueueCount.FILES_LOST))
            if isinstance(abandoned, int):
                self.count(queue_key(QueueCount.ABANDONED), abandoned)
            incidents.append({"what": f"queue file {lost.get('what', 'removed')} while the gateway ran",
                              "at_ms": lost.get("at_ms"), "abandoned": abandoned})
        if wal_lost:
            log.error("the queue's write-ahead log (queue.db-wal) was missing after a run that did not stop cleanly:"
                      " what was committed since the last checkpoint is lost (how many readings is unknown)",
                      path=str(self.path))
            self.count(queue_key(QueueCount.WAL_LOST))
            incidents.append({"what": "write-ahead log missing after an unclean stop: readings committed since the"
                                      " last checkpoint lost (number unknown)",
                              "at_ms": self.now_ms(), "abandoned": None})
        if incidents:
            self.set_meta("queue_incidents", {"items": (meta.incidents(self.conn) + incidents)[-10:]})
            self.counters.write(self.conn)
            self.counters.written()

    def close(self) -> None:
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        if self._db is not None:
            if self._in_txn:
                self.rollback()
            self._db.close()
            self._db = None
            if self._owner or watch.wal_missing(self.path):
                # Closed cleanly, or a command closed the last connection after the daemon stopped (a crash, then
                # 'status'): SQLite checkpointed the write-ahead log into the file and removed it. Nothing is lost,
                # and the next start must not say so.
                with contextlib.suppress(OSError):
                    self.file.running_flag.unlink()
                self._owner = False

    @property
    def conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise QueueError("the queue is not open")
        return self._db

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ------------------------------------------------------------ transactions

    def begin(self) -> None:
        self._follow_page_cap()
        self.conn.execute("BEGIN IMMEDIATE")
        self._in_txn = True
        self.pending = _Pending()

    def _follow_page_cap(self) -> None:
        if self._page_cap is None:
            return
        cap = self._page_cap() or 0
        if cap != self._page_cap_seen:
            self._page_cap_seen = cap
            self.conn.execute(f"PRAGMA max_page_count={cap or schema.NO_PAGE_CAP}")

    def commit(self) -> None:
        """Write dirty cursors and counters, delete delivered rows, commit; then apply in-memory changes."""
        db = self.conn
        if self._dirty_cursors:
            db.executemany(
                "INSERT INTO cursors VALUES (?,?,?) ON CONFLICT (sink, meter_id) DO UPDATE SET ts_ms=excluded.ts_ms",
                [(s, m, self.cursors[s][m]) for s, m in self._dirty_cursors],
            )
        for mid, rows in self.pending.rows.items():
            self._write_chunks(mid, list(split(rows)))
        if self._dirty_cursors:
            self._delete_delivered({m for _, m in self._dirty_cursors})
        if self.pending.store_last_ts:
            db.executemany("UPDATE meters SET last_ts=? WHERE id=?",
                           [(self.last_ts_of(mid), mid) for mid in self.pending.store_last_ts])
        self.counters.write(db)
        db.execute("COMMIT")
        self._in_txn = False
        self._dirty_cursors.clear()
        self.counters.written()
        for name, mid in self.pending.new_meters.items():
            self.meter_ids[name] = mid
            self.meter_names[mid] = name
        self.last_ts.update(self.pending.last_ts)
        self.pending = _Pending()

    def rollback(self) -> None:
        # SQLite may already have rolled back by itself after SQLITE_FULL.
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")
        self._in_txn = False
        self.pending = _Pending()
        # Deletes of the rolled-back transaction did not happen: let the next commit make them again.
        self._deleted_upto.clear()

    # ------------------------------------------------------------ meters, streams, cursors

    def _meter_id(self, name: str) -> int:
        mid = self.meter_ids.get(name) or self.pending.new_meters.get(name)
        if mid is None:
            cur = self.conn.execute("INSERT INTO meters (name) VALUES (?)", (name,))
            mid = int(cur.lastrowid or 0)
            self.pending.new_meters[name] = mid
            self.pending.last_ts.setdefault(mid, -1)
        return mid

    def meter_name(self, mid: int) -> str:
        name = self.meter_names.get(mid)
        if name is None:
            name = next((n for n, i in self.pending.new_meters.items() if i == mid), str(mid))
        return name

    def configure(self, streams: Mapping[str, Sequence[str]]) -> list[str]:
        """Register the active streams and the meters each wants (call inside a transaction).

        A stream (or a stream's meter) seen for the first time starts after the last reading queued for that meter:
        it receives what is queued from now on. Returns the names of streams known to the queue but no longer
        active.
        """
        db = self.conn
        now_ms = self.now_ms()
        known = {r[0] for r in db.execute("SELECT name FROM sinks")}
        self.wanted = {}
        for stream, meters in streams.items():
            if stream not in known:
                db.execute("INSERT INTO sinks VALUES (?, ?)", (stream, now_ms))
            cur = self.cursors.setdefault(stream, {})
            ids = set()
            for meter in meters:
                mid = self._meter_id(meter)
                ids.add(mid)
                if mid not in cur:
                    cur[mid] = self.last_ts_of(mid)
                    self._dirty_cursors.add((stream, mid))
            self.wanted[stream] = ids
        self._deleted_upto.clear()
        self._delete_delivered(set(self.meter_names) | set(self.pending.new_meters.values()))
        return sorted(known - set(streams))

    def last_ts_of(self, mid: int) -> int:
        return self.pending.last_ts.get(mid, self.last_ts.get(mid, -1))

    def sinks_wanting(self, mid: int) -> Iterator[str]:
        """The active streams that take this meter's readings."""
        return (stream for stream, ids in self.wanted.items() if mid in ids)

    def cursor_of(self, stream: str, mid: int) -> int:
        return self.cursors.get(stream, {}).get(mid, -1)

    def _wanted(self, mid: int) -> bool:
        return any(mid in ids for ids in self.wanted.values())

    def _floor(self, mid: int) -> int:
        """Every reading of this meter at or before the returned timestamp is delivered to every stream wanting it."""
        interested = [self.cursors[s].get(mid, -1) for s, ids in self.wanted.items() if mid in ids]
        return min(interested) if interested else self.last_ts_of(mid)

    def cursor(self, stream: str, meter: str) -> int:
        mid = self.meter_ids.get(meter)
        return -1 if mid is None else self.cursor_of(stream, mid)

    def ack(self, stream: str, meter: str, ts_ms: int) -> None:
        """The platform acknowledged every reading of ``meter`` up to ``ts_ms``; written at the next commit."""
        mid = self.meter_ids.get(meter)
        if mid is None:
            return
        cur = self.cursors.setdefault(stream, {})
        if ts_ms > cur.get(mid, -1):
            cur[mid] = ts_ms
            self._dirty_cursors.add((stream, mid))
            self.counters.set(sink_key(sink_of(stream), SinkCount.LAST_DELIVERY_MS), self.now_ms())

    def rewind(self, mid: int, cutoff_ms: int) -> None:
        """Bring a meter's cursors and last timestamp back to ``cutoff_ms`` (its readings after it were moved
        aside: :func:`gateway.queue.bounds.quarantine_after`)."""
        db = self.conn
        db.execute("UPDATE cursors SET ts_ms=? WHERE meter_id=? AND ts_ms>?", (cutoff_ms, mid, cutoff_ms))
        for stream_cursors in self.cursors.values():
            if stream_cursors.get(mid, -1) > cutoff_ms:
                stream_cursors[mid] = cutoff_ms
        newest = db.execute("SELECT max(ts_ms) FROM readings WHERE meter_id=?", (mid,)).fetchone()[0]
        self.last_ts[mid] = min(cutoff_ms, max([newest if newest is not None else -1,
                                                *(c.get(mid, -1) for c in self.cursors.values())]))
        self.pending.last_ts.pop(mid, None)
        db.execute("UPDATE meters SET last_ts=? WHERE id=?", (self.last_ts[mid], mid))

    def _delete_delivered(self, meter_ids: Iterable[int]) -> None:
        for mid in meter_ids:
            floor = self._floor(mid)
            if not self._wanted(mid):
                self.pending.store_last_ts.add(mid)  # no cursor will remember it
            if floor > self._deleted_upto.get(mid, -2):
                # The newest SPARE_CHUNKS delivered chunks stay, for the next chunks of the meter to be written
                # into (see _write_chunks): one platform a moment behind the other then costs no new page.
                self.conn.execute(
                    "DELETE FROM readings WHERE meter_id=? AND ts_ms<=? AND seq NOT IN (SELECT seq FROM readings"
                    " WHERE meter_id=? AND ts_ms<=? ORDER BY ts_ms DESC LIMIT ?)",
                    (mid, floor, mid, floor, SPARE_CHUNKS))
                self._deleted_upto[mid] = floor

    # ------------------------------------------------------------ counters and meta

    def count(self, key: CounterKey, n: int = 1) -> None:
        self.counters.add(key, n)

    def gauge(self, key: CounterKey, value: int) -> None:
        """Like a counter, but set rather than added to (kept in the same table)."""
        self.counters.set(key, value)

    def set_meta(self, key: str, value: dict[str, object]) -> None:
        meta.put(self.conn, key, value)

    def get_meta(self, key: str) -> dict[str, Any] | None:
        return meta.get(self.conn, key)

    def last_sent(self) -> dict[str, Any]:
        return meta.last_sent(self.conn)

    # ------------------------------------------------------------ appending

    def append(self, readings: Sequence[Reading], blobs: Sequence[bytes] | None = None) -> AppendOutcome:
        """Insert readings (inside a transaction); refuse any not newer than the last queued for its meter.
        ``blobs``: their values already encoded (:func:`encode_reading`), when the caller has them."""
        out = AppendOutcome()
        accepted = 0
        holding = []
        if blobs is None:
            blobs = [encode_reading(r) for r in readings]
        for r, blob in zip(readings, blobs, strict=True):
            mid = self._meter_id(r.meter)
            ts, flags = r.ts_ms, FLAG_CLOCK_SYNCED if r.clock_synced else 0
            if not r.clock_synced and r.mono_ms is not None:
                if self.offset_ms is None:
                    holding.append((mid, self.boot, r.mono_ms, r.ts_ms, blob))
                    self.count(meter_key(r.meter, MeterCount.HELD))
                    continue
                # Stamped just before the clock was trusted, queued just after: re-stamped on arrival.
                ts, flags = r.mono_ms + self.offset_ms, FLAG_CLOCK_SYNCED | FLAG_RESTAMPED
                self.count(meter_key(r.meter, MeterCount.RESTAMPED))
            if not self.queue_row(mid, ts, flags, blob):
                out.refused.append((r, f"timestamp {ts} is not newer than the last queued ({self.last_ts_of(mid)})"))
                self.count(meter_key(r.meter, MeterCount.REFUSED))
                continue
            accepted += 1
        if holding:
            held.hold(self.conn, holding)
        out.accepted = accepted + len(holding)
        return out

    def replay(self, readings: Sequence[Reading], boot: str) -> int:
        """Readings a crash left in the journal (inside a transaction, before anything else): those not yet in the
        queue go in; returns how many. A reading already queued is not newer than the last one of its meter, or is
        already held; neither is counted as refused."""
        n = 0
        db = self.conn
        for r in readings:
            mid = self._meter_id(r.meter)
            values = encode_reading(r)
            if not r.clock_synced and r.mono_ms is not None:
                if db.execute("SELECT 1 FROM held WHERE meter_id=? AND boot=? AND mono_ms=?",
                              (mid, boot, r.mono_ms)).fetchone() is None:
                    held.hold(db, [(mid, boot, r.mono_ms, r.ts_ms, values)])
                    self.count(meter_key(r.meter, MeterCount.HELD))
                    n += 1
            elif self.queue_row(mid, r.ts_ms, FLAG_CLOCK_SYNCED if r.clock_synced else 0, values):
                n += 1
        if n:
            self.count(queue_key(QueueCount.REPLAYED), n)
        return n

    def queue_row(self, mid: int, ts_ms: int, flags: int, values: bytes) -> bool:
        """Queue one encoded reading for the commit; False (nothing done) unless it is newer than the meter's last."""
        if ts_ms <= self.last_ts_of(mid):
            return False
        self.pending.last_ts[mid] = ts_ms
        self.pending.rows.setdefault(mid, []).append((ts_ms, flags, values))
        return True

    def _write_chunks(self, mid: int, chunks: Sequence[Sequence[Row]]) -> None:
        """Write a meter's new chunks, each into the row of a chunk of that meter already delivered everywhere if
        there is one (the common case: the platforms keep up). Rewriting a row in place writes its one page; deleting
        it and inserting another wrote both, the freed one included (measured: a third of a commit's pages)."""
        if not self._wanted(mid):
            spare = []  # nobody takes this meter's readings: they stay until a sink does or a restart drops them
        else:
            spare = [seq for (seq,) in self.conn.execute(
                "SELECT seq FROM readings WHERE meter_id=? AND ts_ms<=? ORDER BY ts_ms LIMIT ?",
                (mid, self._floor(mid), len(chunks)))]
        for rows in chunks:
            if not spare:
                schema.insert_chunk(self.conn, mid, rows)
                continue
            self.conn.execute("UPDATE readings SET ts_ms=?, first_ts=?, n=?, data=? WHERE seq=?",
                              (rows[-1][0], rows[0][0], len(rows), encode_chunk(rows), spare.pop(0)))

    # ------------------------------------------------------------ reading

    def read(self, meter: str, after_ts: int, limit: int) -> list[Reading]:
        """Readings of ``meter`` after ``after_ts`` that a sink still needs, oldest first; in a transaction, its own
        appends included. (Chunks delivered everywhere may stay a while, to be rewritten: they are not shown.)"""
        mid = self.meter_ids.get(meter) or self.pending.new_meters.get(meter)
        if mid is not None and self._wanted(mid):
            after_ts = max(after_ts, self._floor(mid))
        out = self._read(self.conn, meter, after_ts, limit)
        pending = self.pending.rows.get(mid, []) if mid is not None else []
        out += [reading_of(meter, ts, flags, v) for ts, flags, v in pending if ts > after_ts][:limit - len(out)]
        return out

    def read_committed(self, meter: str, after_ts: int, limit: int) -> list[Reading]:
        """Like :meth:`read`, from any thread, on a connection of its own: sees only what is committed, and does not
        make the writer commit what waits for company (a forwarder reading must not cost an fsync)."""
        with self._reader_lock:
            if self._reader is None:
                self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                               timeout=10.0)
                self._reader.execute("PRAGMA busy_timeout=10000")
            return self._read(self._reader, meter, after_ts, limit)

    def _read(self, db: sqlite3.Connection, meter: str, after_ts: int, limit: int) -> list[Reading]:
        mid = self.meter_ids.get(meter)
        out: list[Reading] = []
        if mid is None:
            return out
        for first, data in db.execute("SELECT first_ts, data FROM readings WHERE meter_id=? AND ts_ms>? ORDER BY ts_ms",
                                      (mid, after_ts)):
            out += chunk_readings(meter, data, first, after_ts, limit - len(out))
            if len(out) >= limit:
                break
        return out

    # ------------------------------------------------------------ what status sees (:mod:`.snapshot`)

    def count_between(self, mid: int, after_ts: int, before_ts: int | None = None) -> tuple[int, int | None]:
        return snapshot.count_between(self, mid, after_ts, before_ts)

    def undelivered(self) -> int:
        """Readings some stream still waits for (and readings held for the clock)."""
        n = sum(self.count_between(mid, self._floor(mid))[0] for mid in self.meter_names if self._wanted(mid))
        return n + held.status(self.conn)[0]

    def backlog(self, sink: str, streams: Sequence[tuple[str, str]]) -> Backlog:
        return snapshot.backlog(self, sink, streams)

    def used_bytes(self) -> int:
        return snapshot.used_bytes(self.conn)

    def snapshot(self, sinks: Mapping[str, Sequence[tuple[str, str]]]) -> Snapshot:
        return snapshot.take(self, sinks)

    # ------------------------------------------------------------ the concerns of their own modules

    def enforce_bounds(self) -> dict[str, int]:
        return bounds.enforce(self)

    def ahead_of(self, cutoff_ms: int) -> dict[str, list[int]]:
        return bounds.ahead_of(self, cutoff_ms)

    def quarantine_after(self, cutoff_ms: int, reason: str) -> dict[str, int]:
        return bounds.quarantine_after(self, cutoff_ms, reason)

    def release_held(self, offset_ms: int | None) -> Released:
        return held.release(self, offset_ms)

    def held_status(self) -> tuple[int, int | None]:
        return held.status(self.conn)

    def dead_letter(self, stream: str, reading: Reading, reason: str) -> None:
        deadletters.add(self.conn, stream, reading.meter, reading.ts_ms,
                        FLAG_CLOCK_SYNCED if reading.clock_synced else 0, encode_reading(reading), reason,
                        self.now_ms())
        self.count(sink_key(sink_of(stream), SinkCount.REJECTED))

    def dead_letters(self, sink: str | None = None, state: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        return deadletters.select(self.conn, sink, state, limit)

    def mark_dead_letters(self, ids: Sequence[int] | None, state: str, sink: str | None = None) -> int:
        return deadletters.mark(self.conn, ids, state, sink)

    def purge_dead_letters(self, ids: Sequence[int] | None, sink: str | None = None) -> int:
        return deadletters.purge(self.conn, ids, sink)

    def resolve_dead_letter(self, dl_id: int, delivered: bool, reason: str = "") -> None:
        deadletters.resolve(self.conn, dl_id, delivered, reason)
