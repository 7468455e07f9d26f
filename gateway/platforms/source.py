"""Sources produce readings and hand them to ``emit``; they know nothing of where readings go.

``emit`` returns once the readings are committed to the on-disk queue (or known dropped), so a source that reads
a meter which buffers values itself (an MQTT session, a logger) may acknowledge them upstream only then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from gateway.queue import AppendResult
from gateway.reading import Reading


class Emit(Protocol):
    """Hand readings to the queue; returns once they are committed. ``prompt``: the source holds something upstream
    until then (an MQTT broker's message), so commit now; otherwise the commit may wait a moment for company."""

    def __call__(self, readings: Sequence[Reading], prompt: bool = False) -> Awaitable[AppendResult]: ...


class Source(Protocol):
    name: str
    #: Called when a meter starts or stops failing, or a connection changes state: the heartbeat follows at once.
    on_change: Callable[[], None]

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        """Produce readings until ``stop`` is set; return promptly after it is (after emitting a reading in hand)."""
        ...

    def health(self) -> dict[str, dict[str, object]]:
        """Per meter, how reading it goes (for ``status``); empty when there is nothing to say."""
        ...

    def subscriptions(self) -> dict[str, dict[str, int]]:
        """Per MQTT subscription, its message counters; empty for other sources."""
        ...


async def _nothing_queued(meter: str) -> int:
    return -1


class BaseSource:
    """The defaults of what a source may report: nothing."""

    #: The timestamp of the last reading queued for a meter (-1: none); the daemon gives the queue's. A source that
    #: fetches spans of a meter's history (a cloud) starts after it, and leaves the rest to the queue, which refuses
    #: a reading not newer than the last queued.
    last_queued: Callable[[str], Awaitable[int]] = staticmethod(_nothing_queued)

    def __init__(self) -> None:
        self.on_change: Callable[[], None] = lambda: None

    def health(self) -> dict[str, dict[str, object]]:
        return {}

    def subscriptions(self) -> dict[str, dict[str, int]]:
        return {}


class Committer:
    """Hands one meter's readings to the queue without waiting for the disk, so that a commit (which may wait a
    moment for company) never makes the next tick late. Each append is queued when its task starts, and tasks start
    in the order they were made: the queue writes them in order."""

    def __init__(self, emit: Emit, log: Any) -> None:
        self.emit = emit
        self.log = log
        self._pending: set[asyncio.Task[None]] = set()

    def submit(self, reading: Reading) -> None:
        async def commit() -> None:
            try:
                await self.emit([reading])
            except Exception:  # the queue counts and logs what it drops; this is anything else
                self.log.exception("reading could not be handed to the queue", ts_ms=reading.ts_ms)

        task = asyncio.create_task(commit(), name=f"commit:{reading.meter}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Every reading submitted is committed (a stop, a reload)."""
        if self._pending:
            await asyncio.gather(*self._pending)
