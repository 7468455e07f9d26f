"""The durable on-disk queue between sources and forwarders: one SQLite file in WAL mode.

**What it promises.**

1. A reading is *confirmed* (``await DiskQueue.append`` returns it accepted) only once its transaction is committed
   with ``synchronous=FULL`` (``durability: full``): it survives a process crash and a power cut.
2. Per meter, timestamp order is arrival order: a reading not newer than the last one queued for its meter is
   refused (counted ``refused``), never queued out of order.
3. Each stream (a sink, or a sink's data point ``sink#key``) has its own cursor: the timestamp of the last reading
   of each meter its platform acknowledged. A reading is deleted only once every stream that wants its meter is
   past it; a stream never skips a reading it has not delivered, refused into the dead letters, or lost to a bound
   (counted ``evicted``).
4. Readings the queue cannot write (a full disk, its file removed) are never confirmed: they are counted
   ``dropped_write_failed`` and logged. Nothing is lost without a counter and a log line.
5. Readings taken before the clock is trusted are *held* and re-stamped from the monotonic clock once it is
   (:mod:`.held`); they enter the readings in order, before any newer reading.

**On disk** (:mod:`.schema`): ``readings`` (a meter's readings of one commit as one *chunk* row: :mod:`.codec`),
``meters`` (id, name, last timestamp), ``sinks`` and ``cursors`` (per stream and meter), ``deadletters``
(:mod:`.deadletters`), ``held`` (:mod:`.held`), ``counters`` (:mod:`.counters`), ``meta`` (the daemon's records:
heartbeat, what each stream sent last, incidents). Bounds (``max_age``, ``max_size``): :mod:`.bounds`. The file
watched from outside (removed under the daemon, WAL lost): :mod:`.watch`.

**Who does what.** :class:`QueueStore` (:mod:`.store`) is the file as one thread uses it; :class:`DiskQueue`
(:mod:`.service`) owns that thread and is the only interface the event loop has: append, read a stream,
acknowledge, dead letters, sent marks, counters, held readings, status. docs/design.md draws where it sits.
"""

from gateway.queue.counters import CounterView, MeterCount, QueueCount, SinkCount
from gateway.queue.deadletters import DeadLetter
from gateway.queue.files import open_store, queue_path
from gateway.queue.held import Released
from gateway.queue.service import AppendResult, DiskQueue
from gateway.queue.snapshot import Backlog, Snapshot
from gateway.queue.store import QueueStore

__all__ = [
    "AppendResult", "Backlog", "CounterView", "DeadLetter", "DiskQueue", "MeterCount", "QueueCount", "QueueStore",
    "Released", "SinkCount", "Snapshot", "open_store", "queue_path",
]
