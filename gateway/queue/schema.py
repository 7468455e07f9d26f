"""The queue file's tables, how it is opened, checked and upgraded, and what its errors mean.

Opening sets what the rest relies on: WAL mode (readers beside the one writer), ``synchronous`` per the configured
durability, 1 KB pages for a new file, a checkpoint every WAL_CHECKPOINT_PAGES pages. A file that fails SQLite's
quick check is *corrupt*: the daemon moves it aside (with its WAL) and starts a fresh one; a command beside the
daemon only reports it. A file written by a newer version is refused; one of schema 1 is upgraded in one
transaction; one of schema 2 or 3 is marked schema 4 (schema 3 only added what a schema 2 reader would misread:
quantity codes from 42 on and the period bit of the values' mask; schema 4 the late-period bit,
:mod:`gateway.queue.codec`; nothing stored changes).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from gateway.errors import QueueError
from gateway.queue.codec import Row, encode_chunk, split

log = structlog.get_logger("gateway.queue")

SCHEMA_VERSION = 4
PAGE_SIZE = 1024
WAL_CHECKPOINT_PAGES = 10_000
#: No cap on the file's pages (SQLite's largest).
NO_PAGE_CAP = 2**31 - 2

READINGS = """CREATE TABLE IF NOT EXISTS readings (
    seq INTEGER PRIMARY KEY, meter_id INTEGER NOT NULL, ts_ms INTEGER NOT NULL, first_ts INTEGER NOT NULL,
    n INTEGER NOT NULL, data BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS readings_meter ON readings (meter_id, ts_ms)"""

CURSORS = """CREATE TABLE IF NOT EXISTS cursors (
    sink TEXT NOT NULL, meter_id INTEGER NOT NULL, ts_ms INTEGER NOT NULL, PRIMARY KEY (sink, meter_id)
) WITHOUT ROWID"""

TABLES = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meters (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, last_ts INTEGER NOT NULL DEFAULT -1
);
{READINGS};
CREATE TABLE IF NOT EXISTS sinks (name TEXT PRIMARY KEY, added_ms INTEGER NOT NULL) WITHOUT ROWID;
{CURSORS};
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


def is_corrupt(e: BaseException) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is None:
        return "malformed" in str(e) or "not a database" in str(e)
    return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def connect(path: Path, durability: str, check: bool = True) -> sqlite3.Connection:
    """Open the file with the settings above; with ``check``, raise DatabaseError when it is corrupt."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    try:
        db.execute("PRAGMA busy_timeout=10000")
        # A new file gets 1 KB pages (an existing one keeps its own): a commit writes whole pages, and most of a
        # commit is a few small changes (cursors, counters, the newest chunks), and five readings of a meter fill
        # a 1 KB page (docs/performance.md "Footprint of a site").
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise QueueError(f"cannot put {path} in WAL mode (got {mode})")
        db.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
        # The checkpoint copies every page the WAL holds into the database, however often it was rewritten since:
        # a checkpoint every 10,000 pages (10 MB of WAL with 1 KB pages) instead of 1,000 copies the same few hot
        # pages (the newest chunks, cursors, counters) ten times less often.
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        # Some builds (Debian's) overwrite deleted rows and freed pages with zeros: writes to spare an SD card,
        # for data that is no secret on the device itself. FAST zeroes only what is written anyway.
        db.execute("PRAGMA secure_delete=FAST")
        if check:
            result = db.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed ({result})")
        prepare(db, path)
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.close()
        raise
    return db


def prepare(db: sqlite3.Connection, path: Path) -> None:
    """Create what is missing; refuse a newer schema; upgrade an older one."""
    db.executescript(TABLES)
    row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    if row is None:
        db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
    elif int(row[0]) > SCHEMA_VERSION:
        raise QueueError(f"{path} was written by a newer meter-gateway (schema {row[0]})")
    elif int(row[0]) == 1:
        migrate_v1(db, path)
    elif int(row[0]) in (2, 3):
        # A version that knows an older schema only would decode period readings (2), late period readings (3)
        # and the newer quantities (2) as the wrong values: from now on it refuses the file instead.
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
        log.info(f"queue file marked schema {SCHEMA_VERSION} (readings unchanged)", path=str(path), was=int(row[0]))


def insert_chunk(db: sqlite3.Connection, mid: int, chunk: Sequence[Row]) -> None:
    db.execute("INSERT INTO readings (meter_id, ts_ms, first_ts, n, data) VALUES (?,?,?,?,?)",
               (mid, chunk[-1][0], chunk[0][0], len(chunk), encode_chunk(chunk)))


def migrate_v1(db: sqlite3.Connection, path: Path) -> None:
    """Schema 1 kept one row per reading; schema 2 one row per meter and transaction (a chunk). The readings move
    over in one transaction: nothing is lost if the process dies meanwhile."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("ALTER TABLE readings RENAME TO readings_v1")
        for statement in READINGS.split(";"):
            db.execute(statement)
        moved = 0
        for (mid,) in db.execute("SELECT DISTINCT meter_id FROM readings_v1").fetchall():
            rows = db.execute("SELECT ts_ms, flags, data FROM readings_v1 WHERE meter_id=? ORDER BY ts_ms",
                              (mid,)).fetchall()
            for chunk in split(rows):
                insert_chunk(db, mid, chunk)
            moved += len(rows)
        db.execute("DROP TABLE readings_v1")
        # Schema 1's cursors had an updated_ms column nothing read (a few bytes more to write at every commit).
        db.execute("ALTER TABLE cursors RENAME TO cursors_v1")
        db.execute(CURSORS)
        db.execute("INSERT INTO cursors SELECT sink, meter_id, ts_ms FROM cursors_v1")
        db.execute("DROP TABLE cursors_v1")
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    log.info(f"queue file upgraded to schema {SCHEMA_VERSION}", path=str(path), readings=moved)


def move_aside(path: Path, clock: Callable[[], float] = time.time) -> Path:
    """Rename a corrupt file (and its WAL and shared memory) to ``<name>.corrupt-<UTC time>``."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(clock()))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        if side.exists():
            os.replace(side, Path(f"{target}{suffix}"))
    return target
