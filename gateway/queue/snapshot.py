"""What the queue file says to ``status``, ``/metrics`` and ``/health``: per sink what waits and since when, the
file's size, its incidents, the counters. Read on the store's thread (:class:`gateway.queue.store.QueueStore`
delegates here), or by a command beside the running daemon on a store of its own."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.queue import deadletters, held, meta
from gateway.queue.codec import decode_chunk
from gateway.queue.counters import CounterView, SinkCount, sink_key

if TYPE_CHECKING:
    from gateway.queue.store import QueueStore


@dataclass(frozen=True, slots=True)
class Backlog:
    """One sink over its streams: what waits, since when, and what was put aside."""

    depth: int
    oldest_ts_ms: int | None
    last_delivery_ms: int | None
    dead_letters: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the queue file says, for ``status``, ``/metrics`` and ``/health`` (:func:`gateway.status.collect`)."""

    path: Path
    used_bytes: int
    #: the file was removed or replaced under the running daemon (see :mod:`.watch`)
    gone: dict[str, Any] | None
    #: what happened to the file in earlier runs
    incidents: list[Any]
    held: int
    counters: CounterView
    #: per meter name, the timestamp of the last reading queued (-1: none)
    last_ts: Mapping[str, int]
    backlogs: Mapping[str, Backlog]
    #: the daemon's last heartbeat
    daemon: dict[str, Any]


def count_between(store: QueueStore, mid: int, after_ts: int, before_ts: int | None = None) -> tuple[int, int | None]:
    """How many readings of a meter are queued with ``after_ts < ts < before_ts``, and the oldest of them (a chunk
    wholly inside is counted from its row; one across a limit is decoded)."""
    n, oldest = 0, None
    sql = "SELECT first_ts, ts_ms, n, data FROM readings WHERE meter_id=? AND ts_ms>?"
    args: list[int] = [mid, after_ts]
    if before_ts is not None:
        sql += " AND first_ts<?"
        args.append(before_ts)
    for first, last, k, data in store.conn.execute(sql + " ORDER BY ts_ms", args):
        if first > after_ts and (before_ts is None or last < before_ts):
            n += k
            oldest = first if oldest is None else oldest
            continue
        for ts, _, _ in decode_chunk(data, first):
            if ts > after_ts and (before_ts is None or ts < before_ts):
                n += 1
                oldest = ts if oldest is None else oldest
    return n, oldest


def backlog(store: QueueStore, sink: str, streams: Sequence[tuple[str, str]]) -> Backlog:
    """Depth, oldest undelivered timestamp, last delivery and dead letters of one sink over its streams, given as
    (stream, meter) pairs."""
    depth = 0
    oldest: int | None = None
    for stream, meter in streams:
        mid = store.meter_ids.get(meter)
        if mid is None:
            continue
        n, first = count_between(store, mid, store.cursor_of(stream, mid))
        depth += n
        if first is not None and (oldest is None or first < oldest):
            oldest = first
    last = store.counters.get(sink_key(sink, SinkCount.LAST_DELIVERY_MS), -1)
    return Backlog(depth, oldest, None if last < 0 else last, deadletters.count(store.conn, sink))


def used_bytes(db: sqlite3.Connection) -> int:
    """Bytes of the file in use (its free pages left out)."""
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def take(store: QueueStore, sinks: Mapping[str, Sequence[tuple[str, str]]]) -> Snapshot:
    """Everything ``status`` shows of the queue, for the sinks given with their (stream, meter) pairs."""
    return Snapshot(
        path=store.path,
        used_bytes=used_bytes(store.conn),
        gone=store.file.gone,
        incidents=meta.incidents(store.conn),
        held=held.status(store.conn)[0],
        counters=CounterView(store.counters.snapshot()),
        last_ts={name: store.last_ts.get(mid, -1) for name, mid in store.meter_ids.items()},
        backlogs={name: backlog(store, name, pairs) for name, pairs in sinks.items()},
        daemon=store.get_meta("daemon") or {},
    )
