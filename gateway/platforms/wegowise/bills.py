"""A bill (a period reading from a utility's data, such as WattzOn's) as a Wegowise period: the UTC days of its
start and of its last instant; and whether a bill overlaps one sent before (by the instants of their periods, so
that two bills that only meet, one ending when the next begins, do not)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.platforms.wegowise.periods import Period
from gateway.quantities import Quantity
from gateway.reading import Reading


def bill_period(r: Reading) -> Period | None:
    """A period reading (a bill) as a period of its own: the UTC days of its start and of its last instant."""
    energy = r.values.get(Quantity.INTERVAL_ENERGY)
    if r.start_ms is None or energy is None:
        return None
    end = r.period_end  # a late one (a corrected bill) is queued after its end
    first = datetime.fromtimestamp(r.start_ms / 1000, tz=UTC).date()
    last = datetime.fromtimestamp((end - 1) / 1000, tz=UTC).date()
    return Period(r.start_ms, end, first, last, energy)


def overlaps(span: Any, p: Period) -> bool:
    """A recorded raw datum's span (ms; absent in records of earlier versions) and the period share an instant."""
    return (isinstance(span, list) and len(span) == 2 and all(type(x) is int for x in span)
            and span[0] < p.end_ms and p.start_ms < span[1])
