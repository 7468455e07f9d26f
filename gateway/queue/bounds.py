"""The queue's bounds (``max_age``, ``max_size``), and moving readings stamped in the future aside.

Bounds are enforced inside a writer transaction every few seconds: readings older than ``max_age`` go, then, above
``max_size``, whole chunks oldest first (across meters) until the file uses 90 % of it. Every reading a sink had not
received and now never will is counted per sink (``evicted``, and per bound) and reported to the caller, which logs
it. With nothing but held readings left, those go (:func:`gateway.queue.held.evict`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from gateway.queue import deadletters, held
from gateway.queue.codec import decode_chunk, encode_chunk
from gateway.queue.counters import MeterCount, SinkCount, meter_key, sink_key
from gateway.stream import sink_of

if TYPE_CHECKING:
    from gateway.queue.store import QueueStore

log = structlog.get_logger("gateway.queue")

_EVICTED_BY = {"max_age": SinkCount.EVICTED_MAX_AGE, "max_size": SinkCount.EVICTED_MAX_SIZE}


def enforce(store: QueueStore) -> dict[str, int]:
    """Drop the oldest readings beyond ``max_age`` or ``max_size`` (inside a transaction). Returns, per stream, how
    many readings it had not yet delivered and will now never get (also counted)."""
    db = store.conn
    lost: dict[str, int] = {}
    _evict_before(store, store.now_ms() - store.max_age_ms, "max_age", lost)
    used = store.used_bytes()
    if used > store.max_size:
        rows = db.execute("SELECT coalesce(sum(n), 0) FROM readings").fetchone()[0]
        if not rows:
            held.evict(store, used, lost)
        else:
            per_row = max(1.0, used / rows)
            # Free down to 90% so the bound is not hit again at the next append. Whole chunks go, oldest (by their
            # last reading) first, across meters.
            drop = min(rows, max(1, int((used - 0.9 * store.max_size) / per_row)))
            seen, cutoff = 0, None
            for last, k in db.execute("SELECT ts_ms, n FROM readings ORDER BY ts_ms"):
                seen, cutoff = seen + k, last
                if seen >= drop:
                    break
            assert cutoff is not None
            _evict_before(store, cutoff + 1, "max_size", lost)
    return lost


def _evict_before(store: QueueStore, cutoff_ms: int, reason: str, lost: dict[str, int]) -> None:
    db = store.conn
    for mid, meter in list(store.meter_names.items()):
        n, _ = store.count_between(mid, -1, cutoff_ms)
        if not n:
            continue
        for stream in store.sinks_wanting(mid):
            k, _ = store.count_between(mid, store.cursor_of(stream, mid), cutoff_ms)
            if k:
                lost[stream] = lost.get(stream, 0) + k
                store.count(sink_key(sink_of(stream), SinkCount.EVICTED), k)
                store.count(sink_key(sink_of(stream), _EVICTED_BY[reason]), k)
        db.execute("DELETE FROM readings WHERE meter_id=? AND ts_ms<?", (mid, cutoff_ms))
        _trim_chunk(store, mid, cutoff_ms)
        store.pending.store_last_ts.add(mid)  # the cursors may be behind what went
        log.debug("evicted", meter=meter, rows=n, reason=reason)


def _trim_chunk(store: QueueStore, mid: int, cutoff_ms: int) -> None:
    """The chunk that straddles ``cutoff_ms`` (if any) keeps only its readings from the cutoff on."""
    db = store.conn
    row = db.execute("SELECT ts_ms, data, first_ts FROM readings WHERE meter_id=? AND first_ts<? AND ts_ms>=?",
                     (mid, cutoff_ms, cutoff_ms)).fetchone()
    if row is not None:
        kept = [r for r in decode_chunk(row[1], row[2]) if r[0] >= cutoff_ms]
        db.execute("UPDATE readings SET first_ts=?, n=?, data=? WHERE meter_id=? AND ts_ms=?",
                   (kept[0][0], len(kept), encode_chunk(kept), mid, row[0]))


def ahead_of(store: QueueStore, cutoff_ms: int) -> dict[str, list[int]]:
    """Per meter, the timestamps of the queued readings stamped after ``cutoff_ms`` (a device clock in the
    future), oldest first."""
    out: dict[str, list[int]] = {}
    for mid, meter in store.meter_names.items():
        if store.last_ts_of(mid) > cutoff_ms:
            out[meter] = [ts for data, first in store.conn.execute(
                "SELECT data, first_ts FROM readings WHERE meter_id=? AND ts_ms>? ORDER BY ts_ms",
                (mid, cutoff_ms)) for ts, _, _ in decode_chunk(data, first) if ts > cutoff_ms]
    return out


def quarantine_after(store: QueueStore, cutoff_ms: int, reason: str) -> dict[str, int]:
    """Move every queued reading stamped after ``cutoff_ms`` to the dead letters of each sink that had not delivered
    it, and bring the meter's last timestamp and cursors back to the cutoff, so that its readings stamped by a right
    clock are accepted again (inside a transaction, with the daemon stopped). Returns how many moved per meter."""
    db = store.conn
    now_ms = store.now_ms()
    moved: dict[str, int] = {}
    for mid, meter in list(store.meter_names.items()):
        if store.last_ts_of(mid) <= cutoff_ms:
            continue
        n = 0
        for data, first in db.execute("SELECT data, first_ts FROM readings WHERE meter_id=? AND ts_ms>?"
                                      " ORDER BY ts_ms", (mid, cutoff_ms)).fetchall():
            for ts, flags, values in decode_chunk(data, first):
                if ts <= cutoff_ms:
                    continue
                n += 1
                for stream in store.sinks_wanting(mid):
                    if store.cursor_of(stream, mid) < ts:
                        deadletters.add(db, stream, meter, ts, flags, values, reason, now_ms)
        db.execute("DELETE FROM readings WHERE meter_id=? AND first_ts>?", (mid, cutoff_ms))
        row = db.execute("SELECT ts_ms, data, first_ts FROM readings WHERE meter_id=? AND ts_ms>?",
                         (mid, cutoff_ms)).fetchone()
        if row is not None:  # the chunk that straddles the cutoff keeps its readings up to it
            kept = [r for r in decode_chunk(row[1], row[2]) if r[0] <= cutoff_ms]
            db.execute("UPDATE readings SET ts_ms=?, n=?, data=? WHERE meter_id=? AND ts_ms=?",
                       (kept[-1][0], len(kept), encode_chunk(kept), mid, row[0]))
        store.rewind(mid, cutoff_ms)
        store.count(meter_key(meter, MeterCount.FUTURE), n)
        moved[meter] = n
    return moved
