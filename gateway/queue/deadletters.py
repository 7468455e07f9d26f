"""Dead letters: readings a platform refused for good, kept with the reason for an operator to retry or purge.

A dead letter belongs to a stream (``sink`` or ``sink#key``); asking for a sink's dead letters includes those of
its streams. Its ``state`` is ``dead`` until an operator asks for ``retry`` (``meter-gateway deadletter retry``);
the forwarder then sends it again and deletes it once delivered, or sets it ``dead`` again with the new reason.
Readings whose true time is unknown (taken before the clock was synchronised, in an earlier boot) are never retried.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.queue.codec import FLAG_CLOCK_SYNCED, reading_of
from gateway.reading import Reading
from gateway.stream import STREAMS_OF_SINK_SQL


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    #: the stream it was refused on
    sink: str
    reading: Reading
    reason: str
    at_ms: int
    state: str
    attempts: int


def add(db: sqlite3.Connection, stream: str, meter: str, ts_ms: int, flags: int, values: bytes, reason: str,
        at_ms: int) -> None:
    db.execute("INSERT INTO deadletters (sink, meter, ts_ms, flags, data, reason, at_ms) VALUES (?,?,?,?,?,?,?)",
               (stream, meter, ts_ms, flags, values, reason, at_ms))


def select(db: sqlite3.Connection, sink: str | None = None, state: str | None = None,
           limit: int = 1000) -> list[DeadLetter]:
    sql = "SELECT id, sink, meter, ts_ms, flags, data, reason, at_ms, state, attempts FROM deadletters WHERE 1=1"
    args: list[object] = []
    if sink is not None:
        sql += f" AND {STREAMS_OF_SINK_SQL}"
        args += [sink, sink]
    if state is not None:
        sql += " AND state=?"
        args.append(state)
    sql += " ORDER BY id LIMIT ?"
    args.append(limit)
    return [
        DeadLetter(i, s, reading_of(m, ts, f, d), why, at, st, att)
        for i, s, m, ts, f, d, why, at, st, att in db.execute(sql, args)
    ]


def count(db: sqlite3.Connection, sink: str) -> int:
    return int(db.execute(f"SELECT count(*) FROM deadletters WHERE {STREAMS_OF_SINK_SQL}", (sink, sink)).fetchone()[0])


def mark(db: sqlite3.Connection, ids: Sequence[int] | None, state: str, sink: str | None = None) -> int:
    """Set the state of dead letters ('retry' asks the daemon to send them again). Readings whose true time is
    unknown (taken before the clock was synchronised) are never retried: they would go out with a wrong time."""
    sql, args = "UPDATE deadletters SET state=? WHERE 1=1", list[object]([state])
    if state == "retry":
        sql += f" AND flags & {FLAG_CLOCK_SYNCED}"
    return _where_ids(db, sql, args, ids, sink)


def purge(db: sqlite3.Connection, ids: Sequence[int] | None, sink: str | None = None) -> int:
    return _where_ids(db, "DELETE FROM deadletters WHERE 1=1", [], ids, sink)


def resolve(db: sqlite3.Connection, dl_id: int, delivered: bool, reason: str = "") -> None:
    """A retried dead letter was delivered (deleted) or refused again (dead again, with the new reason)."""
    if delivered:
        db.execute("DELETE FROM deadletters WHERE id=?", (dl_id,))
    else:
        db.execute("UPDATE deadletters SET state='dead', reason=?, attempts=attempts+1 WHERE id=?", (reason, dl_id))


def _where_ids(db: sqlite3.Connection, sql: str, args: list[object], ids: Sequence[int] | None,
               sink: str | None) -> int:
    if sink is not None:
        sql += f" AND {STREAMS_OF_SINK_SQL}"
        args += [sink, sink]
    if ids is not None:
        sql += f" AND id IN ({','.join('?' * len(ids))})"
        args.extend(ids)
    return db.execute(sql, args).rowcount
