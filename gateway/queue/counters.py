"""Every counter the queue keeps, named once.

Counters live in the queue file (table ``counters``), are written with the transaction that changes them, and so
survive restarts and agree with the readings they count. A counter's name on disk is ``sink.<sink>.<what>``,
``meter.<meter>.<what>``, ``queue.<what>`` or ``stream.<stream>.<meter>.sent_ts``: those strings are built here
and nowhere else; the rest of the gateway names a counter with :class:`SinkCount`, :class:`MeterCount` or
:class:`QueueCount` and the helpers below.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from enum import StrEnum
from typing import NewType

#: A counter's name on disk; made only by the helpers of this module.
CounterKey = NewType("CounterKey", str)


class SinkCount(StrEnum):
    """Per sink (over all its streams)."""

    #: readings the platform acknowledged
    DELIVERED = "delivered"
    #: failed sends, each retried later
    RETRIED = "retried"
    #: readings the platform refused for good (moved to the dead letters)
    REJECTED = "rejected"
    #: readings the sink chose not to send (nothing to send for that stream); acknowledged all the same
    SKIPPED = "skipped"
    #: readings sent again after a restart, which may have reached the platform before it (an upper bound)
    RESENT = "resent"
    #: readings dropped undelivered by the queue's bounds (and per bound, below)
    EVICTED = "evicted"
    EVICTED_MAX_AGE = "evicted.max_age"
    EVICTED_MAX_SIZE = "evicted.max_size"
    #: a gauge: wall ms of the last acknowledgement
    LAST_DELIVERY_MS = "last_delivery_ms"


class MeterCount(StrEnum):
    """Per meter."""

    #: taken before the clock was trusted, kept in ``held`` until it is
    HELD = "held"
    #: held readings re-stamped from the monotonic clock and queued
    RESTAMPED = "restamped"
    #: held readings of an earlier boot, whose time cannot be known (kept as dead letters)
    UNSTAMPABLE = "unstampable"
    #: held readings dropped by ``queue.max_size`` while the clock never synchronised
    HELD_EVICTED = "held_evicted"
    #: refused by the queue: not newer than the last reading queued for the meter
    REFUSED = "refused"
    #: refused or moved aside as stamped in the future (a device clock ahead)
    FUTURE = "future"
    #: readings the queue could not write (full disk, queue file gone): counted, never confirmed
    DROPPED_WRITE_FAILED = "dropped_write_failed"


class QueueCount(StrEnum):
    """About the queue file itself."""

    #: the previous run's queue file was removed under it
    FILES_LOST = "files_lost"
    #: undelivered readings such a file held
    ABANDONED = "abandoned"
    #: a write-ahead log missing after an unclean stop
    WAL_LOST = "wal_lost"
    #: readings a crash left uncommitted, recovered from the journal at the next start (see queue/journal.py)
    REPLAYED = "journal_replayed"


def sink_key(sink: str, what: SinkCount) -> CounterKey:
    return CounterKey(f"sink.{sink}.{what.value}")


def meter_key(meter: str, what: MeterCount) -> CounterKey:
    return CounterKey(f"meter.{meter}.{what.value}")


def queue_key(what: QueueCount) -> CounterKey:
    return CounterKey(f"queue.{what.value}")


def sent_mark_key(stream: str, meter: str) -> CounterKey:
    """A gauge: how far a stream may have sent (see :mod:`gateway.forwarder`)."""
    return CounterKey(f"stream.{stream}.{meter}.sent_ts")


class Counters:
    """The counters in memory, and which changed since they were last written."""

    def __init__(self) -> None:
        self._values: dict[str, int] = {}
        self._dirty: set[str] = set()

    def load(self, db: sqlite3.Connection) -> None:
        self._values = dict(db.execute("SELECT name, value FROM counters").fetchall())
        self._dirty.clear()

    def add(self, key: CounterKey, n: int = 1) -> None:
        self._values[key] = self._values.get(key, 0) + n
        self._dirty.add(key)

    def set(self, key: CounterKey, value: int) -> None:
        """A gauge: set rather than added to (kept in the same table)."""
        self._values[key] = value
        self._dirty.add(key)

    def get(self, key: CounterKey, default: int = 0) -> int:
        return self._values.get(key, default)

    def sink(self, sink: str, what: SinkCount) -> int:
        return self._values.get(sink_key(sink, what), 0)

    def meter(self, meter: str, what: MeterCount) -> int:
        return self._values.get(meter_key(meter, what), 0)

    def snapshot(self) -> dict[str, int]:
        return dict(self._values)

    def write(self, db: sqlite3.Connection) -> None:
        """Write what changed (inside the caller's transaction). Still marked changed until :meth:`written`: a
        transaction that fails writes them again with the next one."""
        if self._dirty:
            db.executemany(
                "INSERT INTO counters VALUES (?,?) ON CONFLICT (name) DO UPDATE SET value=excluded.value",
                [(n, self._values[n]) for n in self._dirty],
            )

    def written(self) -> None:
        """The transaction that wrote them is committed."""
        self._dirty.clear()


class CounterView:
    """Counters as read from a snapshot (``status``, ``/metrics``): typed lookups over a plain mapping."""

    def __init__(self, values: Mapping[str, int]) -> None:
        self.values = values

    def sink(self, sink: str, what: SinkCount) -> int:
        return self.values.get(sink_key(sink, what), 0)

    def meter(self, meter: str, what: MeterCount) -> int:
        return self.values.get(meter_key(meter, what), 0)
