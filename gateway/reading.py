"""A reading: one meter, one instant, a set of quantities (and how it is written as text).

How the queue stores a reading's values on disk is :mod:`gateway.queue.codec`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from gateway.quantities import CODE, Quantity


@dataclass(frozen=True, slots=True)
class Reading:
    """What a meter said at one instant.

    ``ts_ms`` is UTC milliseconds since the epoch. ``clock_synced`` tells whether the system clock was trusted when
    the reading was taken; a reading taken before is held in the queue and re-stamped from ``mono_ms`` (the
    monotonic clock then) once it is (:mod:`gateway.timekeeper`).

    A *period reading* (a utility bill, an interval of a utility's interval data) covers ``start_ms`` to ``ts_ms``:
    its values are what was used or paid over that span (``interval_energy``, ``cost``), not the state of a meter at
    one instant. It is ordered, like any reading, by ``ts_ms``, its end.

    A *late period reading* is a period reading learned after the meter's later readings were queued: a bill
    corrected by the utility, or one that arrived after the next. It covers ``start_ms`` to ``end_ms``, and its
    ``ts_ms`` is only its place in the queue (just after the meter's newest reading when it was learned), so that
    the queue's order per meter still holds. A sink that can replace or add a past period (Wegowise) takes it; the
    others skip it, counted (:attr:`gateway.platforms.sink.Sink.late_periods`).
    """

    meter: str
    ts_ms: int
    values: Mapping[Quantity, float]
    clock_synced: bool = True
    mono_ms: int | None = None
    #: the start of the span a period reading covers (UTC ms); None for a reading of one instant
    start_ms: int | None = None
    #: the end of a late period reading's span (UTC ms); None for any other reading (whose span ends at ts_ms)
    end_ms: int | None = None

    def __post_init__(self) -> None:
        if self.start_ms is not None and not self.start_ms < self.period_end:
            raise ValueError(f"{self.meter}: a period must end after it starts ({self.start_ms} .. {self.period_end})")
        if self.end_ms is not None and (self.start_ms is None or self.end_ms > self.ts_ms):
            raise ValueError(f"{self.meter}: a late period needs a start and is queued after its end"
                             f" ({self.start_ms} .. {self.end_ms}, queued at {self.ts_ms})")
        values = self.values
        if not all(type(q) is Quantity for q in values):
            raise TypeError(f"{self.meter}: keys must be Quantity members, got {list(values)}")
        if not all(map(math.isfinite, values.values())):
            bad = {q.value: v for q, v in values.items() if not math.isfinite(v)}
            raise ValueError(f"{self.meter}: {bad}: only finite values enter a reading")

    @classmethod
    def trusted(cls, meter: str, ts_ms: int, values: dict[Quantity, float], clock_synced: bool,
                start_ms: int | None = None, end_ms: int | None = None) -> Reading:
        """A reading read back from the queue: it was checked when it went in, so skip the checks."""
        r = object.__new__(cls)
        object.__setattr__(r, "meter", meter)
        object.__setattr__(r, "ts_ms", ts_ms)
        object.__setattr__(r, "values", values)
        object.__setattr__(r, "clock_synced", clock_synced)
        object.__setattr__(r, "mono_ms", None)
        object.__setattr__(r, "start_ms", start_ms)
        object.__setattr__(r, "end_ms", end_ms)
        return r

    @property
    def period_end(self) -> int:
        """The end of the span a period reading covers (``ts_ms`` but for a late period reading)."""
        return self.ts_ms if self.end_ms is None else self.end_ms

    @property
    def late(self) -> bool:
        """A late period reading (see the class's text)."""
        return self.end_ms is not None

    @property
    def timestamp(self) -> datetime:
        return datetime.fromtimestamp(self.ts_ms / 1000, tz=UTC)

    def to_json_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"meter": self.meter}
        if self.start_ms is not None:
            out.update(start=iso_utc(self.start_ms), start_ms=self.start_ms)
        if self.end_ms is not None:  # ts is then its place in the queue, not its period's end
            out.update(end=iso_utc(self.end_ms), end_ms=self.end_ms, late=True)
        out.update(ts=iso_utc(self.ts_ms), ts_ms=self.ts_ms, clock_synced=self.clock_synced,
                   values={q.value: v for q, v in sorted(self.values.items(), key=lambda kv: CODE[kv[0]])})
        return out


def json_lines(readings: Iterable[Reading]) -> str:
    """One compact JSON object per reading, each on its own line (the file and stdout sinks' format)."""
    return "".join(json.dumps(r.to_json_dict(), separators=(",", ":")) + "\n" for r in readings)


def local_iso(ts_ms: int, tz: ZoneInfo) -> str:
    """``2016-02-10T21:45:31.070+11:00``: local time in ``tz``, milliseconds, offset (never ``Z``)."""
    dt = datetime.fromtimestamp(ts_ms // 1000, tz=UTC).replace(microsecond=ts_ms % 1000 * 1000).astimezone(tz)
    return dt.isoformat(timespec="milliseconds")


def iso_utc(ts_ms: int) -> str:
    """``2026-11-23T15:00:00.000Z``."""
    dt = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"
