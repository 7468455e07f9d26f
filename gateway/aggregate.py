"""One reading per interval: the mean of instantaneous quantities, the last value of counters.

Intervals are aligned to the clock and stamped at their end: with a 5 min interval, the readings taken after
12:00:00 and up to 12:05:00 included become one reading stamped 12:05:00. A meter polled on the clock thus puts
its 12:05:00 reading, whose energy counter is exactly the one at the stamp, in the interval it closes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gateway.quantities import Quantity
from gateway.reading import Reading


def bucket_end(ts_ms: int, interval_ms: int) -> int:
    """The end of the interval ``(end - interval, end]`` holding ``ts_ms``."""
    return -(-ts_ms // interval_ms) * interval_ms


def aggregate(readings: Sequence[Reading], end_ms: int, last: frozenset[Quantity]) -> Reading:
    """The readings of one interval (in time order, all of one meter) as one reading stamped ``end_ms``."""
    sums: dict[Quantity, float] = {}
    counts: dict[Quantity, int] = {}
    lasts: dict[Quantity, float] = {}
    for r in readings:
        for q, v in r.values.items():
            if q in last:
                lasts[q] = v
            else:
                sums[q] = sums.get(q, 0.0) + v
                counts[q] = counts.get(q, 0) + 1
    values = {q: sums[q] / counts[q] for q in sums}
    values.update(lasts)
    values = {q: v for q, v in values.items() if math.isfinite(v)}
    return Reading(readings[0].meter, end_ms, values, all(r.clock_synced for r in readings))
