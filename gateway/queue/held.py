"""Held readings: taken before the system clock was trusted, kept with the monotonic time and boot they were
taken in, until the clock is trusted (:mod:`gateway.timekeeper`).

Then each reading of *this* boot is re-stamped ``monotonic + offset`` (the offset wall - monotonic measured once at
sync) and queued in order, before any newer reading. Readings of an earlier boot cannot be re-stamped (the monotonic
clock restarts at every boot): they become dead letters of every sink that wants their meter, with the clock's
wrong time in the reason, and are never retried. Held readings count toward ``queue.max_size``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.queue import deadletters
from gateway.queue.codec import FLAG_CLOCK_SYNCED, FLAG_RESTAMPED
from gateway.queue.counters import MeterCount, meter_key
from gateway.reading import iso_utc

if TYPE_CHECKING:
    from gateway.queue.store import QueueStore


@dataclass(slots=True)
class Released:
    """What :func:`release` did, per meter."""

    restamped: dict[str, int] = field(default_factory=dict)
    #: Re-stamped to a time not after the last reading queued for the meter (a clock stepped back meanwhile).
    refused: dict[str, int] = field(default_factory=dict)
    #: Taken in an earlier boot: their true time cannot be known. Kept as dead letters.
    unstampable: dict[str, int] = field(default_factory=dict)
    #: Still held (the clock is not trusted yet).
    held: int = 0


def hold(db: sqlite3.Connection, rows: list[tuple[int, str, int, int, bytes]]) -> None:
    """Keep readings as (meter id, boot, monotonic ms, wall ms, encoded values)."""
    db.executemany("INSERT INTO held (meter_id, boot, mono_ms, wall_ms, data) VALUES (?,?,?,?,?)", rows)


def release(store: QueueStore, offset_ms: int | None) -> Released:
    """Re-stamp the held readings of this boot (``monotonic + offset_ms``) and queue them in order; report those of
    earlier boots as dead letters (inside a transaction; with ``offset_ms`` None, only the latter)."""
    db = store.conn
    out = Released()
    done: list[int] = []
    if offset_ms is not None:
        store.offset_ms = offset_ms
    rows = db.execute("SELECT id, meter_id, boot, mono_ms, wall_ms, data FROM held ORDER BY id").fetchall()
    now_ms = store.now_ms()
    for hid, mid, boot, mono_ms, wall_ms, data in rows:
        meter = store.meter_name(mid)
        if boot == store.boot:
            if offset_ms is None:
                out.held += 1
                continue
            if store.queue_row(mid, mono_ms + offset_ms, FLAG_CLOCK_SYNCED | FLAG_RESTAMPED, data):
                out.restamped[meter] = out.restamped.get(meter, 0) + 1
                store.count(meter_key(meter, MeterCount.RESTAMPED))
            else:
                out.refused[meter] = out.refused.get(meter, 0) + 1
                store.count(meter_key(meter, MeterCount.REFUSED))
        else:
            reason = ("taken before the clock was synchronised, in an earlier boot: its true time cannot be"
                      f" known (the clock said {iso_utc(wall_ms)})")
            for sink in store.sinks_wanting(mid):
                deadletters.add(db, sink, meter, wall_ms, 0, data, reason, now_ms)
            out.unstampable[meter] = out.unstampable.get(meter, 0) + 1
            store.count(meter_key(meter, MeterCount.UNSTAMPABLE))
        done.append(hid)
    for i in range(0, len(done), 500):
        chunk = done[i:i + 500]
        db.execute(f"DELETE FROM held WHERE id IN ({','.join('?' * len(chunk))})", chunk)
    return out


def status(db: sqlite3.Connection) -> tuple[int, int | None]:
    """How many readings are held, and the monotonic ms of the oldest."""
    n, oldest = db.execute("SELECT count(*), min(mono_ms) FROM held").fetchone()
    return int(n), oldest


def evict(store: QueueStore, used: int, lost: dict[str, int]) -> None:
    """Only held readings left and still over ``max_size`` (a clock that never synchronises): the oldest go,
    counted per meter (``held_evicted``) and reported under ``held``."""
    db = store.conn
    n = db.execute("SELECT count(*) FROM held").fetchone()[0]
    if not n:
        return
    drop = min(n, max(1, int((used - 0.9 * store.max_size) / max(1.0, used / n))))
    rows = db.execute("SELECT id, meter_id FROM held ORDER BY id LIMIT ?", (drop,)).fetchall()
    for _, mid in rows:
        store.count(meter_key(store.meter_name(mid), MeterCount.HELD_EVICTED))
    db.execute("DELETE FROM held WHERE id <= ?", (rows[-1][0],))
    lost["held"] = lost.get("held", 0) + len(rows)
