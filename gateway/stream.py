"""A stream: one meter's readings on their way to one sink, in order, with their own cursor in the queue.

Most sinks have one stream per meter, named after the sink. A sink may have several streams for one meter (Wattics:
one per data point), each named ``sink#key`` in the queue, so that one data point refused by its platform never
holds up another fed by the same meter. The name is built by :func:`stream_name` and taken apart by
:func:`sink_of`, here only.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.quantities import Quantity

#: Counters: aggregated by their last value over an interval; everything else by its mean.
ENERGY: frozenset[Quantity] = frozenset(q for q in Quantity if q.value.startswith("energy_"))

_SEP = "#"
#: SQL condition on a ``sink`` column: the rows of a sink's streams. Two parameters: the sink's name twice.
STREAMS_OF_SINK_SQL = f"(sink=? OR sink LIKE ? || '{_SEP}%')"


def stream_name(sink: str, key: str = "") -> str:
    """The name of a sink's stream in the queue (cursors, dead letters, sent marks)."""
    return f"{sink}{_SEP}{key}" if key else sink


def sink_of(stream: str) -> str:
    """The sink a stream belongs to."""
    return stream.split(_SEP, 1)[0]


@dataclass(frozen=True, slots=True)
class Stream:
    sink: str
    meter: str
    #: what the sink calls the stream (a Wattics data point id); empty when the meter is enough
    key: str = ""
    #: when set, one reading per interval (aligned to the clock, stamped at its end) instead of every reading
    interval: float | None = None
    #: quantities aggregated by their last value (counters); the others by their mean
    last: frozenset[Quantity] = ENERGY

    @property
    def cursor(self) -> str:
        """The stream's name in the queue (cursors, dead letters)."""
        return stream_name(self.sink, self.key)

    @property
    def label(self) -> str:
        return f"{self.key} ({self.meter})" if self.key else self.meter
