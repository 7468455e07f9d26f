"""Intellimeter's meter reads turned into readings, trusting nothing of the answer's shape.

``GET /api/v1/read?by=meter`` answers ``{property id: [read, ...]}``; a read carries ``meter`` (the meter's id),
``serial_number``, ``time_stamping`` (``YYYY-MM-DDTHH:MM:SS``, the property's local time, without offset),
``kwh`` (the cumulative counter), ``kwh_interval`` (the energy of the read's interval), ``units`` (kWh or m3) and
``utility`` (E, W, G). Each read is reduced while the answer is parsed (json's ``object_hook``) to the few fields
used, so a catch-up answer of many thousand reads is not held as dictionaries.

Times: ``time_stamping`` is local time in the cloud's ``timezone``. A time that does not exist there (in the hour
skipped when clocks go forward) is refused. In the hour repeated when clocks go back, a local time given twice for a
meter is the first (summer-time) instant for the read with the lower counter and the second for the other; given
once, it is the first instant. A stamp that carries an offset (``Z``, ``+01:00``) is taken as it says.

Values: a value must be a JSON number, finite, not negative and below 10^12 kWh; a read whose ``utility`` or
``units`` is not the meter's is refused. Electricity: ``kwh`` x 1000 is ``energy_import_total`` (Wh) and
``kwh_interval`` x 1000 ``interval_energy`` (Wh); a water or gas meter's ``volume_field`` (m3) is ``value``. A read
with no usable value is refused; one whose interval energy alone is unusable is queued without it (counted).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.cloudhttp import json_number
from gateway.platforms.intellimeter.config import UTILITY_CODE, IntellimeterMeter
from gateway.quantities import Quantity
from gateway.reading import Reading

_STAMP = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?(Z|[+-]\d{2}:?\d{2})?$")
MAX_KWH = 1e12


class BadAnswer(Exception):
    """The answer as a whole is not what the document shows."""


@dataclass(frozen=True, slots=True)
class RawRead:
    """What is kept of one read while the answer is parsed."""

    meter: object
    serial: object
    stamp: object
    units: object
    utility: object
    kwh: object
    kwh_interval: object
    #: the water/gas volume fields other than ``kwh`` that meters are configured with
    volume: dict[str, object] | None = None


def object_hook(volume_fields: frozenset[str]) -> object:
    """json's object_hook: a read (a dict with ``time_stamping``) becomes a :class:`RawRead` at once."""
    extra = tuple(sorted(volume_fields - {"kwh"}))
    # A meter's id, serial number, units and utility repeat in each of its reads: one string object each, not one
    # per read (a month of 15-minute reads of 20 meters is 57,600 reads).
    seen: dict[object, object] = {}

    def same(v: object) -> object:
        if isinstance(v, str) and len(v) <= 200:
            return seen.setdefault(v, v) if len(seen) < 100_000 else v
        return v

    def hook(d: dict[str, object]) -> object:
        if "time_stamping" not in d:
            return d
        return RawRead(same(d.get("meter")), same(d.get("serial_number")), d.get("time_stamping"),
                       same(d.get("units")), same(d.get("utility")), d.get("kwh"), d.get("kwh_interval"),
                       {f: d.get(f) for f in extra} if extra else None)

    return hook


def reads_of(answer: object) -> list[tuple[str, RawRead]]:
    """(property, read) for every read of the answer; :class:`BadAnswer` when its shape is not the document's.
    Items that are not reads are left out (counted by the caller as ``not_a_read``)."""
    if not isinstance(answer, dict):
        raise BadAnswer(f"expected an object of properties, got {type(answer).__name__}")
    out: list[tuple[str, RawRead]] = []
    for prop, items in answer.items():
        if not isinstance(items, list):
            raise BadAnswer(f"property {str(prop)[:40]}: expected a list of reads, got {type(items).__name__}")
        out += [(prop, r) if isinstance(r, RawRead) else (prop, _NOT_A_READ) for r in items]
    return out


_NOT_A_READ = RawRead(None, None, None, None, None, None, None)


def _number(v: object) -> float | None:
    return json_number(v, MAX_KWH)


def instants(stamp: str, tz: ZoneInfo) -> tuple[int, int] | None:
    """The instant(s) of a stamp in ms: (first, second), equal unless the local time is ambiguous; None when the
    stamp is not a date and time, or names a local time that does not exist."""
    m = _STAMP.match(stamp)
    if m is None:
        return None
    try:
        naive = datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6]),
                         int((m[7] or "0").ljust(6, "0")))
    except ValueError:
        return None
    if m[8]:
        off = m[8]
        if off == "Z":
            delta = timedelta(0)
        else:
            sign = -1 if off[0] == "-" else 1
            hh, mm = int(off[1:3]), int(off[-2:])
            if hh > 23 or mm > 59:
                return None
            delta = sign * timedelta(hours=hh, minutes=mm)
        ms = int((naive - delta).replace(tzinfo=UTC).timestamp() * 1000)
        return ms, ms
    first = naive.replace(tzinfo=tz, fold=0)
    second = naive.replace(tzinfo=tz, fold=1)
    # A local time that does not exist does not survive the round trip through UTC.
    if first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != naive:
        return None
    return int(first.timestamp() * 1000), int(second.timestamp() * 1000)


class Mapper:
    """Which gateway meter a read belongs to, and the reading it makes."""

    def __init__(self, meters: Iterable[IntellimeterMeter], tz: ZoneInfo) -> None:
        self.tz = tz
        self.by_id = {m.meter_id: m for m in meters if m.meter_id}
        self.by_serial = {m.serial_number: m for m in meters if m.serial_number}
        #: per gateway meter: the Intellimeter meter ids seen for a serial number (two: ambiguous)
        self.ids_of_serial: dict[str, set[str]] = {}

    def meter_of(self, read: RawRead) -> IntellimeterMeter | None:
        m = self.by_id.get(read.meter) if isinstance(read.meter, str) else None
        if m is None and isinstance(read.serial, str):
            m = self.by_serial.get(read.serial)
            if m is not None and isinstance(read.meter, str):
                self.ids_of_serial.setdefault(m.name, set()).add(read.meter)
        return m

    def values(self, meter: IntellimeterMeter, read: RawRead, problems: Counter[str]) -> dict[Quantity, float] | None:
        """The reading's values, or None (the reason counted in ``problems``)."""
        code = UTILITY_CODE[meter.utility]
        if read.utility is not None and (not isinstance(read.utility, str) or read.utility.upper() != code):
            problems["wrong_utility"] += 1
            return None
        units = read.units.lower() if isinstance(read.units, str) else read.units
        if meter.utility == "electricity":
            if units is not None and units != "kwh":
                problems["wrong_units"] += 1
                return None
            out: dict[Quantity, float] = {}
            total = _number(read.kwh)
            if total is not None:
                out[Quantity.ENERGY_IMPORT_TOTAL] = round(total * 1000, 3)
            elif read.kwh is not None:
                problems["bad_value"] += 1
            part = _number(read.kwh_interval)
            if part is not None:
                out[Quantity.INTERVAL_ENERGY] = round(part * 1000, 3)
            elif read.kwh_interval is not None:
                problems["bad_interval_value"] += 1
            if not out:
                problems["no_value"] += 1
                return None
            return out
        if units != "m3":
            problems["wrong_units"] += 1
            return None
        raw = read.kwh if meter.volume_field == "kwh" else (read.volume or {}).get(meter.volume_field)
        volume = _number(raw)
        if volume is None:
            problems["bad_value" if raw is not None else "no_value"] += 1
            return None
        return {Quantity.VALUE: round(volume, 6)}

    def readings(self, meter: IntellimeterMeter, reads: list[RawRead], problems: Counter[str]) -> list[Reading]:
        """One meter's reads as readings in time order (see the module's note on times)."""
        by_stamp: dict[str, list[dict[Quantity, float]]] = {}
        for read in reads:
            if not isinstance(read.stamp, str):
                problems["bad_time"] += 1
                continue
            values = self.values(meter, read, problems)
            if values is None:
                continue
            by_stamp.setdefault(read.stamp, []).append(values)
        out: list[Reading] = []
        for stamp, group in by_stamp.items():
            when = instants(stamp, self.tz)
            if when is None:
                problems["bad_time"] += len(group)
                continue
            distinct = list({tuple(sorted(v.items())): v for v in group}.values())  # the same read twice: once
            if len(distinct) == 1:
                out.append(Reading(meter.name, when[0], distinct[0]))
                continue
            counters = [v.get(Quantity.ENERGY_IMPORT_TOTAL, v.get(Quantity.VALUE)) for v in distinct]
            if len(distinct) == 2 and when[0] != when[1] and None not in counters and counters[0] != counters[1]:
                first, second = sorted(distinct, key=lambda v: v.get(Quantity.ENERGY_IMPORT_TOTAL,
                                                                     v.get(Quantity.VALUE, 0.0)))
                out.append(Reading(meter.name, when[0], first))
                out.append(Reading(meter.name, when[1], second))
            else:
                problems["conflicting"] += len(distinct)
        out.sort(key=lambda r: r.ts_ms)
        return out
