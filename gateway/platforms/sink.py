"""What a sink is: it turns readings into a platform's packets and sends them. It knows nothing of buffering or
retries (the forwarder's job).

A sink receives a batch of readings of one stream (one meter, or one data point fed by a meter), in timestamp order
(at most ``max_batch``), and returns one outcome per reading, in the same order. The forwarder acts on the outcomes
in order: a ``Retry`` stops the batch there (the rest is sent again later), a ``Reject`` moves one reading aside
and the batch goes on. A sink never raises for a failed send.

Optional capabilities, with their defaults in :class:`BaseSink`: ``pipeline`` (batches of one stream the sink may
have in flight before the first is answered, kept in order by it, as an MQTT connection does), ``preview``
(the packet a reading would become, for a dry run) and ``late_periods`` (the sink takes late period readings, see
:class:`gateway.reading.Reading`: it can add or replace a past period on its platform; a sink without it never sees
one, the forwarder skips them for it, counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.outcome import Outcome, Skip
from gateway.reading import Reading
from gateway.stream import Stream

#: What :meth:`Sink.preview` shows: the request or message a reading would become, as JSON-ready data.
Preview = dict[str, object]


class Sink(Protocol):
    name: str
    max_batch: int
    pipeline: int
    #: the sink takes late period readings (a corrected or late bill), and can add or replace a past period
    late_periods: bool

    async def start(self) -> None: ...

    async def send(self, stream: Stream, readings: Sequence[Reading]) -> list[Outcome]: ...

    async def close(self) -> None: ...

    def preview(self, stream: Stream, reading: Reading) -> Preview | Skip | None:
        """The packet ``reading`` would become (a Skip: none is sent for it); None: this sink cannot preview."""
        ...


class BaseSink:
    """The optional capabilities' defaults: one batch at a time, no preview."""

    pipeline = 1
    late_periods = False

    def preview(self, stream: Stream, reading: Reading) -> Preview | Skip | None:
        return None
