"""The on-disk queue: one SQLite file in WAL mode, used from one thread at a time.

Layout (see docs/reliability.md "How the queue keeps readings"):

- ``readings(seq, meter_id, ts_ms, first_ts, n, data)``: a meter's readings of one transaction are one row, a
  *chunk* (``ts_ms`` its last timestamp, ``first_ts`` its first, ``n`` how many, ``data`` the readings one after the
  other, at most CHUNK_MAX_BYTES). A chunk every sink wanting its meter has received is rewritten in place by the
  meter's next chunk (SPARE_CHUNKS are kept per meter for that, the rest deleted); otherwise a chunk is appended
  (``seq``). A commit then writes about one page per meter whatever the backlog. ``readings_meter (meter_id, ts_ms)``
  finds a meter's chunks in timestamp order. A reading whose timestamp is not newer than the last one queued for
  its meter is refused, so per meter, timestamp order *is* arrival order (docs/performance.md "Footprint of a site"
  has the measurements behind this layout).
- ``cursors(sink, meter_id, ts_ms)``: per sink and meter, the timestamp of the last reading the platform
  acknowledged. A row is deleted once every sink that wants its meter is past it.
- ``deadletters``: readings a platform refused for good, with the reason, for an operator to retry or purge.
- ``counters``: delivered, retried, rejected, evicted... per sink and per meter, kept across restarts.
- ``held``: readings taken before the system clock was trusted, with the monotonic time and boot they were taken
  in; re-stamped and moved into ``readings`` once it is (:meth:`QueueStore.release_held`, :mod:`gateway.timekeeper`).

Writes are grouped by the caller between :meth:`begin` and :meth:`commit`; in-memory state changes made inside a
transaction are applied only when it commits, so a failed commit (full disk) leaves memory and disk agreeing.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from gateway.errors import QueueError
from gateway.queue import watch
from gateway.reading import (
    Reading,
    decode_values,
    encode_values,
    iso_utc,
    layout_size,
    value_masks,
    with_wide,
)
from gateway.stream import sink_of
from gateway.timekeeper import boot_id

log = structlog.get_logger("gateway.queue")

SCHEMA_VERSION = 2
PAGE_SIZE = 1024
WAL_CHECKPOINT_PAGES = 10_000
#: Rows of a sink: its own name, or one of its streams (``sink#key``). Two parameters: the sink's name twice.
_OF_SINK = "(sink=? OR sink LIKE ? || '#%')"
FLAG_CLOCK_SYNCED = 1
#: The reading was taken before the clock was trusted; its time was worked out from the monotonic clock.
FLAG_RESTAMPED = 2

_READINGS = """CREATE TABLE IF NOT EXISTS readings (
    seq INTEGER PRIMARY KEY, meter_id INTEGER NOT NULL, ts_ms INTEGER NOT NULL, first_ts INTEGER NOT NULL,
    n INTEGER NOT NULL, data BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS readings_meter ON readings (meter_id, ts_ms)"""

_CURSORS = """CREATE TABLE IF NOT EXISTS cursors (
    sink TEXT NOT NULL, meter_id INTEGER NOT NULL, ts_ms INTEGER NOT NULL, PRIMARY KEY (sink, meter_id)
) WITHOUT ROWID"""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meters (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, last_ts INTEGER NOT NULL DEFAULT -1
);
{_READINGS};
CREATE TABLE IF NOT EXISTS sinks (name TEXT PRIMARY KEY, added_ms INTEGER NOT NULL) WITHOUT ROWID;
{_CURSORS};
CREATE TABLE IF NOT EXISTS deadletters (
    id INTEGER PRIMARY KEY, sink TEXT NOT NULL, meter TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    flags INTEGER NOT NULL, data BLOB NOT NULL, reason TEXT NOT NULL, at_ms INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'dead', attempts INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS deadletters_sink ON deadletters (sink, state, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS held (
    id INTEGER PRIMARY KEY, meter_id INTEGER NOT NULL, boot TEXT NOT NULL, mono_ms INTEGER NOT NULL,
    wall_ms INTEGER NOT NULL, data BLOB NOT NULL
);
"""


def is_disk_full(e: BaseException) -> bool:
    """SQLITE_FULL, or an I/O error writing (which is how some file systems report ENOSPC)."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is None:
        return "disk is full" in str(e) or "disk I/O error" in str(e)
    return code & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)


def _is_corrupt(e: BaseException) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is None:
        return "malformed" in str(e) or "not a database" in str(e)
    return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


@dataclass(slots=True)
class AppendOutcome:
    #: Readings confirmed on disk (held ones included).
    accepted: int = 0
    #: (reading, why) for readings refused on purpose: not newer than the last one queued for the meter.
    refused: list[tuple[Reading, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    sink: str
    reading: Reading
    reason: str
    at_ms: int
    state: str
    attempts: int


@dataclass(slots=True)
class Released:
    """What :meth:`QueueStore.release_held` did, per meter."""

    restamped: dict[str, int] = field(default_factory=dict)
    #: Re-stamped to a time not after the last reading queued for the meter (a clock stepped back meanwhile).
    refused: dict[str, int] = field(default_factory=dict)
    #: Taken in an earlier boot: their true time cannot be known. Kept as dead letters.
    unstampable: dict[str, int] = field(default_factory=dict)
    #: Still held (the clock is not trusted yet).
    held: int = 0


@dataclass(slots=True)
class _Pending:
    last_ts: dict[int, int] = field(default_factory=dict)
    new_meters: dict[str, int] = field(default_factory=dict)
    #: meter id -> readings appended in this transaction, as (ts_ms, flags, values): one chunk each at commit
    rows: dict[int, list[tuple[int, int, bytes]]] = field(default_factory=dict)
    #: meters whose last timestamp cannot be worked out from readings and cursors any more: written at commit
    store_last_ts: set[int] = field(default_factory=set)


#: A reading inside a chunk: milliseconds after the chunk's first reading, flags; then its values without their
#: masks, which the chunk holds once (a meter sends the same quantities every time; one that does not starts a
#: new chunk).
_RECORD = struct.Struct("<IB")

#: Largest chunk, in bytes. A row longer than about 990 bytes (with 1 KB pages) spills into overflow pages,
#: rewritten whole; within it, a page holds one chunk.
CHUNK_MAX_BYTES = 900
#: Delivered chunks kept per meter to be rewritten in place by the next ones (a commit then writes one page per
#: chunk, not one for the new chunk and one for freeing the old).
SPARE_CHUNKS = 2


def _split(rows: Sequence[tuple[int, int, bytes]]) -> Iterator[Sequence[tuple[int, int, bytes]]]:
    """Consecutive runs of readings that can share a chunk: the same quantities, within CHUNK_MAX_BYTES and 2^32 ms,
    each run re-encoded with one set of float64 values (a value that does not fit a float32 in one reading, an
    energy total say, makes that quantity float64 in the whole chunk: a chunk holds its masks once)."""
    start, present, wide = 0, -1, 0
    for i, (ts, _, v) in enumerate(rows):
        mask, w = value_masks(v)
        union = wide | w
        if i > start:
            head, floats = layout_size(mask, union)
            size = head + (i + 1 - start) * (_RECORD.size + floats)
            if mask != present or size > CHUNK_MAX_BYTES or ts - rows[start][0] >= 2**32:
                yield _widened(rows[start:i], wide)
                start, union = i, w
        present, wide = mask, union
    yield _widened(rows[start:], wide)


def _widened(rows: Sequence[tuple[int, int, bytes]], wide: int) -> Sequence[tuple[int, int, bytes]]:
    return [(ts, flags, with_wide(v, wide)) for ts, flags, v in rows]


def encode_chunk(rows: Sequence[tuple[int, int, bytes]]) -> bytes:
    """One chunk of readings made by :func:`_split`, as (ts_ms, flags, encoded values)."""
    first, head = rows[0][0], layout_size(*value_masks(rows[0][2]))[0]
    return rows[0][2][:head] + b"".join(_RECORD.pack(ts - first, flags) + v[head:] for ts, flags, v in rows)


def decode_chunk(data: bytes, first_ts: int) -> Iterator[tuple[int, int, bytes]]:
    """(ts_ms, flags, encoded values) of each reading of a chunk, in order."""
    head, size = layout_size(*value_masks(data))
    masks = data[:head]
    pos, end = head, len(data)
    while pos < end:
        delta, flags = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        yield first_ts + delta, flags, masks + data[pos:pos + size]
        pos += size


def _reading(meter: str, ts_ms: int, flags: int, values: bytes) -> Reading:
    return Reading.trusted(meter, ts_ms, decode_values(values), bool(flags & FLAG_CLOCK_SYNCED))


class QueueStore:
    """Synchronous access to the queue file. Not thread-safe: one owner thread (see :mod:`gateway.queue.service`)."""

    def __init__(
        self,
        path: Path,
        durability: str = "full",
        max_size: int = 512 * 10**6,
        max_age_s: float = 30 * 86400.0,
        clock: Callable[[], float] = time.time,
        max_page_count: int | None = None,
        boot: str | None = None,
        max_page_file: Path | None = None,
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
        self._max_page_count = max_page_count  # tests: a real SQLITE_FULL without filling a disk
        # Soak: the cap read from this file at each transaction (absent: no cap), so a disk fills and frees live.
        self._max_page_file = max_page_file
        self._page_cap_seen: int | None = None
        self._db: sqlite3.Connection | None = None
        self._in_txn = False
        self._pending = _Pending()
        self.meter_ids: dict[str, int] = {}
        self.meter_names: dict[int, str] = {}
        self.last_ts: dict[int, int] = {}
        #: sink -> meter_id -> ts_ms of the last acknowledged reading
        self.cursors: dict[str, dict[int, int]] = {}
        self._dirty_cursors: set[tuple[str, int]] = set()
        #: active sinks -> the meter ids they want
        self.wanted: dict[str, set[int]] = {}
        self._deleted_upto: dict[int, int] = {}
        self.counters: dict[str, int] = {}
        self._dirty_counters: set[str] = set()
        self.moved_aside: Path | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        #: Is the file at ``path`` still the one open? (see gateway/queue/watch.py)
        self.file = watch.FileWatch(path)
        self._owner = False

    # ------------------------------------------------------------ opening

    def open(self, repair: bool = True) -> None:
        """Open (creating if needed). With ``repair``, a corrupt file is moved aside and a fresh one started;
        without (the CLI, beside a running daemon), it is reported and left alone."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise QueueError(f"cannot create the state directory {self.path.parent}: {e.strerror}") from None
        wal_was_missing = watch.wal_missing(self.path)
        try:
            self._open_checked(repair)
        except sqlite3.DatabaseError as e:
            if not repair or not _is_corrupt(e):
                raise QueueError(f"cannot open the queue {self.path}: {e}") from None
            self._close_quietly()
            self.moved_aside = self._move_aside()
            log.error(
                "queue file is corrupt: moved aside, starting a fresh queue",
                path=str(self.path), moved_to=str(self.moved_aside), error=str(e),
            )
            try:
                self._open_checked()
            except sqlite3.DatabaseError as e2:
                raise QueueError(f"cannot create a fresh queue {self.path}: {e2}") from None
        self.file.opened()
        if repair:  # the daemon (not a command looking beside it) reports what happened to the file before
            self._report_incidents(wal_was_missing and self.file.running_flag.exists())
            with contextlib.suppress(OSError):
                self.file.running_flag.touch()
            self._owner = True

    def _report_incidents(self, wal_lost: bool) -> None:
        """A queue file removed under the last run (its marker), or a write-ahead log lost after a crash: logged,
        counted and kept (meta ``queue_incidents``) for ``status``."""
        incidents: list[dict[str, object]] = []
        lost = watch.take_marker(self.path.parent)
        if lost is not None:
            abandoned = lost.get("abandoned")
            log.error("the previous run's queue file was removed while it ran: the readings it held and had not"
                      " delivered were abandoned", abandoned=abandoned, removed_at=lost.get("at_ms"))
            self.count("queue.files_lost")
            if isinstance(abandoned, int):
                self.count("queue.abandoned", abandoned)
            incidents.append({"what": f"queue file {lost.get('what', 'removed')} while the gateway ran",
                              "at_ms": lost.get("at_ms"), "abandoned": abandoned})
        if wal_lost:
            log.error("the queue's write-ahead log (queue.db-wal) was missing after a run that did not stop cleanly:"
                      " what was committed since the last checkpoint is lost (how many readings is unknown)",
                      path=str(self.path))
            self.count("queue.wal_lost")
            incidents.append({"what": "write-ahead log missing after an unclean stop: readings committed since the"
                                      " last checkpoint lost (number unknown)",
                              "at_ms": int(self.clock() * 1000), "abandoned": None})
        if incidents:
            kept = list((self.get_meta("queue_incidents") or {}).get("items") or [])  # type: ignore[call-overload]
            self.set_meta("queue_incidents", {"items": (kept + incidents)[-10:]})
            for name in self._dirty_counters:
                self._conn.execute("INSERT INTO counters VALUES (?,?) ON CONFLICT (name) DO UPDATE SET"
                                   " value=excluded.value", (name, self.counters[name]))
            self._dirty_counters.clear()

    def undelivered(self) -> int:
        """Readings some sink still waits for (and readings held for the clock)."""
        n = sum(self._count(mid, self._floor(mid))[0] for mid in self.meter_names if self._wanted(mid))
        return n + int(self._conn.execute("SELECT count(*) FROM held").fetchone()[0])

    def _open_checked(self, check: bool = True) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        self._db = db
        db.execute("PRAGMA busy_timeout=10000")
        # A new file gets 1 KB pages (an existing one keeps its own): a commit writes whole pages, and most of a
        # commit is a few small changes (cursors, counters, the newest chunks), and five readings of a meter fill
        # a 1 KB page (docs/performance.md "Footprint of a site").
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise QueueError(f"cannot put {self.path} in WAL mode (got {mode})")
        db.execute(f"PRAGMA synchronous={'FULL' if self.durability == 'full' else 'NORMAL'}")
        # The checkpoint copies every page the WAL holds into the database, however often it was rewritten since:
        # a checkpoint every 10,000 pages (10 MB of WAL with 1 KB pages) instead of 1,000 copies the same few hot
        # pages (the newest chunks, cursors, counters) ten times less often.
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        # Some builds (Debian's) overwrite deleted rows and freed pages with zeros: writes to spare an SD card,
        # for data that is no secret on the device itself. FAST zeroes only what is written anyway.
        db.execute("PRAGMA secure_delete=FAST")
        if self._max_page_count:
            db.execute(f"PRAGMA max_page_count={self._max_page_count}")
        if check:
            result = db.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed ({result})")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise QueueError(f"{self.path} was written by a newer meter-gateway (schema {row[0]})")
        elif int(row[0]) == 1:
            self._migrate_v1()
        self._load_state()

    def _migrate_v1(self) -> None:
        """Schema 1 kept one row per reading; schema 2 one row per meter and transaction (a chunk). The readings
        move over in one transaction: nothing is lost if the process dies meanwhile."""
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("ALTER TABLE readings RENAME TO readings_v1")
            for statement in _READINGS.split(";"):
                db.execute(statement)
            moved = 0
            for (mid,) in db.execute("SELECT DISTINCT meter_id FROM readings_v1").fetchall():
                rows = db.execute("SELECT ts_ms, flags, data FROM readings_v1 WHERE meter_id=? ORDER BY ts_ms",
                                  (mid,)).fetchall()
                for chunk in _split(rows):
                    self._insert_chunk(mid, chunk)
                moved += len(rows)
            db.execute("DROP TABLE readings_v1")
            # Schema 1's cursors had an updated_ms column nothing read (a few bytes more to write at every commit).
            db.execute("ALTER TABLE cursors RENAME TO cursors_v1")
            db.execute(_CURSORS)
            db.execute("INSERT INTO cursors SELECT sink, meter_id, ts_ms FROM cursors_v1")
            db.execute("DROP TABLE cursors_v1")
            db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        log.info("queue file upgraded to schema 2", path=str(self.path), readings=moved)

    def _insert_chunk(self, mid: int, rows: Sequence[tuple[int, int, bytes]]) -> None:
        self._conn.execute("INSERT INTO readings (meter_id, ts_ms, first_ts, n, data) VALUES (?,?,?,?,?)",
                           (mid, rows[-1][0], rows[0][0], len(rows), encode_chunk(rows)))

    def _write_chunks(self, mid: int, chunks: Sequence[Sequence[tuple[int, int, bytes]]]) -> None:
        """Write a meter's new chunks, each into the row of a chunk of that meter already delivered everywhere if
        there is one (the common case: the platforms keep up). Rewriting a row in place writes its one page; deleting
        it and inserting another wrote both, the freed one included (measured: a third of a commit's pages)."""
        if not self._wanted(mid):
            spare = []  # nobody takes this meter's readings: they stay until a sink does or a restart drops them
        else:
            spare = [seq for (seq,) in self._conn.execute(
                "SELECT seq FROM readings WHERE meter_id=? AND ts_ms<=? ORDER BY ts_ms LIMIT ?",
                (mid, self._floor(mid), len(chunks)))]
        for rows in chunks:
            if not spare:
                self._insert_chunk(mid, rows)
                continue
            self._conn.execute("UPDATE readings SET ts_ms=?, first_ts=?, n=?, data=? WHERE seq=?",
                               (rows[-1][0], rows[0][0], len(rows), encode_chunk(rows), spare.pop(0)))

    def _load_state(self) -> None:
        db = self._conn
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
        self.counters = dict(db.execute("SELECT name, value FROM counters").fetchall())

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.clock()))
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        os.replace(self.path, target)
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                os.replace(side, Path(f"{target}{suffix}"))
        return target

    def _close_quietly(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

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
            if self._owner:  # closed cleanly: SQLite checkpointed and removed the write-ahead log itself
                with contextlib.suppress(OSError):
                    self.file.running_flag.unlink()
                self._owner = False

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise QueueError("the queue is not open")
        return self._db

    # ------------------------------------------------------------ transactions

    def begin(self) -> None:
        if self._max_page_file is not None:
            self._follow_page_cap(self._max_page_file)
        self._conn.execute("BEGIN IMMEDIATE")
        self._in_txn = True
        self._pending = _Pending()

    def _follow_page_cap(self, path: Path) -> None:
        try:
            cap = int(path.read_text().strip() or 0)
        except (OSError, ValueError):
            cap = 0
        if cap != self._page_cap_seen:
            self._page_cap_seen = cap
            self._conn.execute(f"PRAGMA max_page_count={cap or 2**31 - 2}")

    def commit(self) -> None:
        """Write dirty cursors and counters, delete delivered rows, commit; then apply in-memory changes."""
        db = self._conn
        if self._dirty_cursors:
            db.executemany(
                "INSERT INTO cursors VALUES (?,?,?) ON CONFLICT (sink, meter_id) DO UPDATE SET ts_ms=excluded.ts_ms",
                [(s, m, self.cursors[s][m]) for s, m in self._dirty_cursors],
            )
        for mid, rows in self._pending.rows.items():
            self._write_chunks(mid, list(_split(rows)))
        if self._dirty_cursors:
            self._delete_delivered({m for _, m in self._dirty_cursors})
        if self._pending.store_last_ts:
            db.executemany("UPDATE meters SET last_ts=? WHERE id=?",
                           [(self._last_ts(mid), mid) for mid in self._pending.store_last_ts])
        if self._dirty_counters:
            db.executemany(
                "INSERT INTO counters VALUES (?,?) ON CONFLICT (name) DO UPDATE SET value=excluded.value",
                [(n, self.counters[n]) for n in self._dirty_counters],
            )
        db.execute("COMMIT")
        self._in_txn = False
        self._dirty_cursors.clear()
        self._dirty_counters.clear()
        for name, mid in self._pending.new_meters.items():
            self.meter_ids[name] = mid
            self.meter_names[mid] = name
        self.last_ts.update(self._pending.last_ts)
        self._pending = _Pending()

    def rollback(self) -> None:
        # SQLite may already have rolled back by itself after SQLITE_FULL.
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")
        self._in_txn = False
        self._pending = _Pending()
        # Deletes of the rolled-back transaction did not happen: let the next commit make them again.
        self._deleted_upto.clear()

    # ------------------------------------------------------------ meters and sinks

    def _meter_id(self, name: str) -> int:
        mid = self.meter_ids.get(name) or self._pending.new_meters.get(name)
        if mid is None:
            cur = self._conn.execute("INSERT INTO meters (name) VALUES (?)", (name,))
            mid = int(cur.lastrowid or 0)
            self._pending.new_meters[name] = mid
            self._pending.last_ts.setdefault(mid, -1)
        return mid

    def configure(self, sinks: dict[str, list[str]]) -> list[str]:
        """Register the active sinks and the meters each wants (call inside a transaction).

        A sink (or a sink's meter) seen for the first time starts after the last reading queued for that meter:
        it receives what is queued from now on. Returns the names of sinks known to the queue but no longer active.
        """
        db = self._conn
        now_ms = int(self.clock() * 1000)
        known = {r[0] for r in db.execute("SELECT name FROM sinks")}
        self.wanted = {}
        for sink, meters in sinks.items():
            if sink not in known:
                db.execute("INSERT INTO sinks VALUES (?, ?)", (sink, now_ms))
            cur = self.cursors.setdefault(sink, {})
            ids = set()
            for meter in meters:
                mid = self._meter_id(meter)
                ids.add(mid)
                if mid not in cur:
                    cur[mid] = self._last_ts(mid)
                    self._dirty_cursors.add((sink, mid))
            self.wanted[sink] = ids
        self._deleted_upto.clear()
        self._delete_delivered(set(self.meter_names) | set(self._pending.new_meters.values()))
        return sorted(known - set(sinks))

    def _last_ts(self, mid: int) -> int:
        return self._pending.last_ts.get(mid, self.last_ts.get(mid, -1))

    def _wanted(self, mid: int) -> bool:
        """Some sink takes this meter's readings."""
        return any(mid in ids for ids in self.wanted.values())

    def _floor(self, mid: int) -> int:
        """Every reading of this meter at or before the returned timestamp is delivered to every sink wanting it."""
        interested = [self.cursors[s].get(mid, -1) for s, ids in self.wanted.items() if mid in ids]
        return min(interested) if interested else self._last_ts(mid)

    def _delete_delivered(self, meter_ids: Iterable[int]) -> None:
        for mid in meter_ids:
            floor = self._floor(mid)
            if not self._wanted(mid):
                self._pending.store_last_ts.add(mid)  # no cursor will remember it
            if floor > self._deleted_upto.get(mid, -2):
                # The newest SPARE_CHUNKS delivered chunks stay, for the next chunks of the meter to be written
                # into (see _write_chunks): one platform a moment behind the other then costs no new page.
                self._conn.execute(
                    "DELETE FROM readings WHERE meter_id=? AND ts_ms<=? AND seq NOT IN (SELECT seq FROM readings"
                    " WHERE meter_id=? AND ts_ms<=? ORDER BY ts_ms DESC LIMIT ?)",
                    (mid, floor, mid, floor, SPARE_CHUNKS))
                self._deleted_upto[mid] = floor

    # ------------------------------------------------------------ appending and reading

    def append(self, readings: Sequence[Reading]) -> AppendOutcome:
        """Insert readings (inside a transaction); refuse any not newer than the last queued for its meter."""
        out = AppendOutcome()
        accepted = 0
        held = []
        for r in readings:
            mid = self._meter_id(r.meter)
            ts, flags = r.ts_ms, FLAG_CLOCK_SYNCED if r.clock_synced else 0
            if not r.clock_synced and r.mono_ms is not None:
                if self.offset_ms is None:
                    held.append((mid, self.boot, r.mono_ms, r.ts_ms, encode_values(r.values)))
                    self.count(f"meter.{r.meter}.held")
                    continue
                # Stamped just before the clock was trusted, queued just after: re-stamped on arrival.
                ts, flags = r.mono_ms + self.offset_ms, FLAG_CLOCK_SYNCED | FLAG_RESTAMPED
                self.count(f"meter.{r.meter}.restamped")
            last = self._last_ts(mid)
            if ts <= last:
                out.refused.append((r, f"timestamp {ts} is not newer than the last queued ({last})"))
                self.count(f"meter.{r.meter}.refused")
                continue
            self._pending.last_ts[mid] = ts
            self._pending.rows.setdefault(mid, []).append((ts, flags, encode_values(r.values)))
            accepted += 1
        if held:
            self._conn.executemany("INSERT INTO held (meter_id, boot, mono_ms, wall_ms, data) VALUES (?,?,?,?,?)",
                                   held)
        out.accepted = accepted + len(held)
        return out

    def release_held(self, offset_ms: int | None) -> Released:
        """Re-stamp the held readings of this boot (``monotonic + offset_ms``) and queue them in order; report those
        of earlier boots, whose time cannot be known, as dead letters of every sink that wants their meter (call
        inside a transaction; with ``offset_ms`` None, only the latter)."""
        db = self._conn
        out = Released()
        done: list[int] = []
        if offset_ms is not None:
            self.offset_ms = offset_ms
        rows = db.execute("SELECT id, meter_id, boot, mono_ms, wall_ms, data FROM held ORDER BY id").fetchall()
        now_ms = int(self.clock() * 1000)
        for hid, mid, boot, mono_ms, wall_ms, data in rows:
            meter = self.meter_names.get(mid) or next(n for n, i in self._pending.new_meters.items() if i == mid)
            if boot == self.boot:
                if offset_ms is None:
                    out.held += 1
                    continue
                ts = mono_ms + offset_ms
                if ts <= self._last_ts(mid):
                    out.refused[meter] = out.refused.get(meter, 0) + 1
                    self.count(f"meter.{meter}.refused")
                else:
                    self._pending.last_ts[mid] = ts
                    self._pending.rows.setdefault(mid, []).append((ts, FLAG_CLOCK_SYNCED | FLAG_RESTAMPED, data))
                    out.restamped[meter] = out.restamped.get(meter, 0) + 1
                    self.count(f"meter.{meter}.restamped")
            else:
                reason = ("taken before the clock was synchronised, in an earlier boot: its true time cannot be"
                          f" known (the clock said {iso_utc(wall_ms)})")
                for sink, ids in self.wanted.items():
                    if mid in ids:
                        db.execute("INSERT INTO deadletters (sink, meter, ts_ms, flags, data, reason, at_ms)"
                                   " VALUES (?,?,?,?,?,?,?)", (sink, meter, wall_ms, 0, data, reason, now_ms))
                out.unstampable[meter] = out.unstampable.get(meter, 0) + 1
                self.count(f"meter.{meter}.unstampable")
            done.append(hid)
        for i in range(0, len(done), 500):
            chunk = done[i:i + 500]
            db.execute(f"DELETE FROM held WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        return out

    def held_status(self) -> tuple[int, int | None]:
        """How many readings are held, and the monotonic ms of the oldest in this boot."""
        n, oldest = self._conn.execute("SELECT count(*), min(mono_ms) FROM held").fetchone()
        return int(n), oldest

    def read(self, meter: str, after_ts: int, limit: int) -> list[Reading]:
        """Readings of ``meter`` after ``after_ts`` that a sink still needs, oldest first; in a transaction, its own
        appends included. (Chunks delivered everywhere may stay a while, to be rewritten: they are not shown.)"""
        mid = self.meter_ids.get(meter) or self._pending.new_meters.get(meter)
        if mid is not None and self._wanted(mid):
            after_ts = max(after_ts, self._floor(mid))
        out = self._read(self._conn, meter, after_ts, limit)
        pending = self._pending.rows.get(mid, []) if mid is not None else []
        out += [_reading(meter, ts, flags, v) for ts, flags, v in pending if ts > after_ts][:limit - len(out)]
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
            for ts, flags, v in decode_chunk(data, first):
                if ts > after_ts:
                    out.append(_reading(meter, ts, flags, v))
                    if len(out) >= limit:
                        return out
        return out

    def _count(self, mid: int, after_ts: int, before_ts: int | None = None) -> tuple[int, int | None]:
        """How many readings of a meter are queued with ``after_ts < ts < before_ts``, and the oldest of them."""
        n, oldest = 0, None
        sql = "SELECT first_ts, ts_ms, n, data FROM readings WHERE meter_id=? AND ts_ms>?"
        args: list[int] = [mid, after_ts]
        if before_ts is not None:
            sql += " AND first_ts<?"
            args.append(before_ts)
        for first, last, k, data in self._conn.execute(sql + " ORDER BY ts_ms", args):
            if first > after_ts and (before_ts is None or last < before_ts):
                n += k
                oldest = first if oldest is None else oldest
                continue
            for ts, _, _ in decode_chunk(data, first):
                if ts > after_ts and (before_ts is None or ts < before_ts):
                    n += 1
                    oldest = ts if oldest is None else oldest
        return n, oldest

    def cursor(self, sink: str, meter: str) -> int:
        mid = self.meter_ids.get(meter)
        return -1 if mid is None else self.cursors.get(sink, {}).get(mid, -1)

    def ack(self, sink: str, meter: str, ts_ms: int) -> None:
        """The platform acknowledged every reading of ``meter`` up to ``ts_ms``; written at the next commit."""
        mid = self.meter_ids.get(meter)
        if mid is None:
            return
        cur = self.cursors.setdefault(sink, {})
        if ts_ms > cur.get(mid, -1):
            cur[mid] = ts_ms
            self._dirty_cursors.add((sink, mid))
            self.gauge(f"sink.{sink_of(sink)}.last_delivery_ms", int(self.clock() * 1000))

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n
        self._dirty_counters.add(name)

    def gauge(self, name: str, value: int) -> None:
        """Like a counter, but set rather than added to (kept in the same table)."""
        self.counters[name] = value
        self._dirty_counters.add(name)

    # ------------------------------------------------------------ bounds

    def used_bytes(self) -> int:
        db = self._conn
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def enforce_bounds(self) -> dict[str, int]:
        """Drop the oldest readings beyond ``max_age`` or ``max_size`` (inside a transaction).

        Returns, per sink, how many readings it had not yet delivered and will now never get (also counted).
        """
        now_ms = int(self.clock() * 1000)
        lost: dict[str, int] = {}
        self._evict_before(now_ms - self.max_age_ms, "max_age", lost)
        used = self.used_bytes()
        if used > self.max_size:
            rows = self._conn.execute("SELECT coalesce(sum(n), 0) FROM readings").fetchone()[0]
            if not rows:
                self._evict_held(used, lost)
            else:
                per_row = max(1.0, used / rows)
                # Free down to 90% so the bound is not hit again at the next append. Whole chunks go, oldest
                # (by their last reading) first, across meters.
                drop = min(rows, max(1, int((used - 0.9 * self.max_size) / per_row)))
                seen, cutoff = 0, None
                for last, k in self._conn.execute("SELECT ts_ms, n FROM readings ORDER BY ts_ms"):
                    seen, cutoff = seen + k, last
                    if seen >= drop:
                        break
                assert cutoff is not None
                self._evict_before(cutoff + 1, "max_size", lost)
        return lost

    def _evict_held(self, used: int, lost: dict[str, int]) -> None:
        """Only held readings left and still over ``max_size`` (a clock that never synchronises): the oldest go,
        counted per meter (``held_evicted``) and reported under ``held``."""
        db = self._conn
        n = db.execute("SELECT count(*) FROM held").fetchone()[0]
        if not n:
            return
        drop = min(n, max(1, int((used - 0.9 * self.max_size) / max(1.0, used / n))))
        rows = db.execute("SELECT id, meter_id FROM held ORDER BY id LIMIT ?", (drop,)).fetchall()
        for _, mid in rows:
            self.count(f"meter.{self.meter_names.get(mid, mid)}.held_evicted")
        db.execute("DELETE FROM held WHERE id <= ?", (rows[-1][0],))
        lost["held"] = lost.get("held", 0) + len(rows)

    def _evict_before(self, cutoff_ms: int, reason: str, lost: dict[str, int]) -> None:
        db = self._conn
        for mid, meter in list(self.meter_names.items()):
            n, _ = self._count(mid, -1, cutoff_ms)
            if not n:
                continue
            for sink, ids in self.wanted.items():
                if mid not in ids:
                    continue
                k, _ = self._count(mid, self.cursors[sink].get(mid, -1), cutoff_ms)
                if k:
                    lost[sink] = lost.get(sink, 0) + k
                    self.count(f"sink.{sink_of(sink)}.evicted", k)
                    self.count(f"sink.{sink_of(sink)}.evicted.{reason}", k)
            db.execute("DELETE FROM readings WHERE meter_id=? AND ts_ms<?", (mid, cutoff_ms))
            self._trim_chunk(mid, cutoff_ms)
            self._pending.store_last_ts.add(mid)  # the cursors may be behind what went
            log.debug("evicted", meter=meter, rows=n, reason=reason)

    def _trim_chunk(self, mid: int, cutoff_ms: int) -> None:
        """The chunk that straddles ``cutoff_ms`` (if any) keeps only its readings from the cutoff on."""
        row = self._conn.execute("SELECT ts_ms, data, first_ts FROM readings WHERE meter_id=? AND first_ts<?"
                                 " AND ts_ms>=?", (mid, cutoff_ms, cutoff_ms)).fetchone()
        if row is not None:
            kept = [r for r in decode_chunk(row[1], row[2]) if r[0] >= cutoff_ms]
            self._conn.execute("UPDATE readings SET first_ts=?, n=?, data=? WHERE meter_id=? AND ts_ms=?",
                               (kept[0][0], len(kept), encode_chunk(kept), mid, row[0]))

    def ahead_of(self, cutoff_ms: int) -> dict[str, list[int]]:
        """Per meter, the timestamps of the queued readings stamped after ``cutoff_ms`` (a device clock in the
        future), oldest first."""
        out: dict[str, list[int]] = {}
        for mid, meter in self.meter_names.items():
            if self._last_ts(mid) > cutoff_ms:
                stamps = [ts for data, first in self._conn.execute(
                    "SELECT data, first_ts FROM readings WHERE meter_id=? AND ts_ms>? ORDER BY ts_ms",
                    (mid, cutoff_ms)) for ts, _, _ in decode_chunk(data, first) if ts > cutoff_ms]
                out[meter] = stamps
        return out

    def quarantine_after(self, cutoff_ms: int, reason: str) -> dict[str, int]:
        """Move every queued reading stamped after ``cutoff_ms`` to the dead letters of each sink that had not
        delivered it, and bring the meter's last timestamp and cursors back to the cutoff, so that its readings
        stamped by a right clock are accepted again (inside a transaction, with the daemon stopped). Returns how
        many readings moved per meter."""
        db = self._conn
        now_ms = int(self.clock() * 1000)
        moved: dict[str, int] = {}
        for mid, meter in list(self.meter_names.items()):
            if self._last_ts(mid) <= cutoff_ms:
                continue
            n = 0
            for data, first in db.execute("SELECT data, first_ts FROM readings WHERE meter_id=? AND ts_ms>?"
                                          " ORDER BY ts_ms", (mid, cutoff_ms)).fetchall():
                for ts, flags, values in decode_chunk(data, first):
                    if ts <= cutoff_ms:
                        continue
                    n += 1
                    for sink, ids in self.wanted.items():
                        if mid in ids and self.cursors.get(sink, {}).get(mid, -1) < ts:
                            db.execute("INSERT INTO deadletters (sink, meter, ts_ms, flags, data, reason, at_ms)"
                                       " VALUES (?,?,?,?,?,?,?)", (sink, meter, ts, flags, values, reason, now_ms))
            db.execute("DELETE FROM readings WHERE meter_id=? AND first_ts>?", (mid, cutoff_ms))
            row = db.execute("SELECT ts_ms, data, first_ts FROM readings WHERE meter_id=? AND ts_ms>?",
                             (mid, cutoff_ms)).fetchone()
            if row is not None:  # the chunk that straddles the cutoff keeps its readings up to it
                kept = [r for r in decode_chunk(row[1], row[2]) if r[0] <= cutoff_ms]
                db.execute("UPDATE readings SET ts_ms=?, n=?, data=? WHERE meter_id=? AND ts_ms=?",
                           (kept[-1][0], len(kept), encode_chunk(kept), mid, row[0]))
            db.execute("UPDATE cursors SET ts_ms=? WHERE meter_id=? AND ts_ms>?", (cutoff_ms, mid, cutoff_ms))
            for sink_cursors in self.cursors.values():
                if sink_cursors.get(mid, -1) > cutoff_ms:
                    sink_cursors[mid] = cutoff_ms
            newest = db.execute("SELECT max(ts_ms) FROM readings WHERE meter_id=?", (mid,)).fetchone()[0]
            self.last_ts[mid] = min(cutoff_ms, max([newest if newest is not None else -1,
                                                    *(c.get(mid, -1) for c in self.cursors.values())]))
            self._pending.last_ts.pop(mid, None)
            db.execute("UPDATE meters SET last_ts=? WHERE id=?", (self.last_ts[mid], mid))
            self.count(f"meter.{meter}.future", n)
            moved[meter] = n
        return moved

    # ------------------------------------------------------------ dead letters

    def dead_letter(self, sink: str, reading: Reading, reason: str) -> None:
        now_ms = int(self.clock() * 1000)
        self._conn.execute(
            "INSERT INTO deadletters (sink, meter, ts_ms, flags, data, reason, at_ms) VALUES (?,?,?,?,?,?,?)",
            (sink, reading.meter, reading.ts_ms, FLAG_CLOCK_SYNCED if reading.clock_synced else 0,
             encode_values(reading.values), reason, now_ms),
        )
        self.count(f"sink.{sink_of(sink)}.rejected")

    def dead_letters(self, sink: str | None = None, state: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        sql = "SELECT id, sink, meter, ts_ms, flags, data, reason, at_ms, state, attempts FROM deadletters WHERE 1=1"
        args: list[object] = []
        if sink is not None:
            sql += f" AND {_OF_SINK}"
            args += [sink, sink]
        if state is not None:
            sql += " AND state=?"
            args.append(state)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [
            DeadLetter(i, s, Reading(m, ts, decode_values(d), bool(f & FLAG_CLOCK_SYNCED)), why, at, st, att)
            for i, s, m, ts, f, d, why, at, st, att in self._conn.execute(sql, args)
        ]

    def mark_dead_letters(self, ids: Sequence[int] | None, state: str, sink: str | None = None) -> int:
        """Set the state of dead letters ('retry' asks the daemon to send them again). Readings whose true time is
        unknown (taken before the clock was synchronised) are never retried: they would go out with a wrong time."""
        sql, args = "UPDATE deadletters SET state=? WHERE 1=1", list[object]([state])
        if state == "retry":
            sql += f" AND flags & {FLAG_CLOCK_SYNCED}"
        return self._where_ids(sql, args, ids, sink)

    def purge_dead_letters(self, ids: Sequence[int] | None, sink: str | None = None) -> int:
        return self._where_ids("DELETE FROM deadletters WHERE 1=1", [], ids, sink)

    def _where_ids(self, sql: str, args: list[object], ids: Sequence[int] | None, sink: str | None) -> int:
        if sink is not None:
            sql += f" AND {_OF_SINK}"
            args += [sink, sink]
        if ids is not None:
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            args.extend(ids)
        return self._conn.execute(sql, args).rowcount

    def resolve_dead_letter(self, dl_id: int, delivered: bool, reason: str = "") -> None:
        if delivered:
            self._conn.execute("DELETE FROM deadletters WHERE id=?", (dl_id,))
        else:
            self._conn.execute(
                "UPDATE deadletters SET state='dead', reason=?, attempts=attempts+1 WHERE id=?", (reason, dl_id)
            )

    # ------------------------------------------------------------ status

    def set_meta(self, key: str, value: dict[str, object]) -> None:
        self._conn.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
            (key, json.dumps(value)),
        )

    def get_meta(self, key: str) -> dict[str, object] | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def sink_status(self, sink: str, streams: Sequence[tuple[str, str]]) -> dict[str, object]:
        """Depth, oldest undelivered timestamp, last delivery and dead letters of one sink over its streams,
        given as (cursor, meter) pairs."""
        db = self._conn
        depth = 0
        oldest: int | None = None
        for cursor, meter in streams:
            mid = self.meter_ids.get(meter)
            if mid is None:
                continue
            n, first = self._count(mid, self.cursors.get(cursor, {}).get(mid, -1))
            depth += n
            if first is not None and (oldest is None or first < oldest):
                oldest = first
        last = self.counters.get(f"sink.{sink}.last_delivery_ms")
        dead = db.execute(
            f"SELECT count(*) FROM deadletters WHERE {_OF_SINK}", (sink, sink)
        ).fetchone()[0]
        return {"depth": depth, "oldest_ts_ms": oldest, "last_delivery_ms": last, "dead_letters": dead}
