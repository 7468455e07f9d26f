"""The durable on-disk queue between sources and forwarders."""

from gateway.queue.service import AppendResult, DiskQueue
from gateway.queue.store import DeadLetter, QueueStore

__all__ = ["AppendResult", "DeadLetter", "DiskQueue", "QueueStore"]
