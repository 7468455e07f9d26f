"""WattzOn Link's bills and interval data turned into period readings, trusting nothing of their shape.

A bill record (type ``electricity`` or ``gas``) with ``start_date`` and ``end_date`` (ISO 8601, UTC: the document
says so; a stamp with an offset is taken as it says), ``usage`` and ``units``, ``cost`` and ``currency`` becomes a
reading of its period: ``interval_energy`` in Wh and ``cost`` in the meter's currency. Energy units: kWh, Wh, MWh,
and for gas ``therms`` (1 therm = 100,000 BTU = 29,307.107 Wh, with the international-table BTU of
1,055.05585262 J); any other unit (a
volume such as ccf) is refused. A record with only the older agents' interpolated ``date`` has no period: refused.

An interval of a month's normalised data becomes a reading of its interval (``interval_energy``); where its fields
are is :class:`gateway.platforms.wattzon.config.IntervalLayout`.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from gateway.cloudhttp import json_number
from gateway.platforms.wattzon.config import IntervalLayout, WattzonMeter
from gateway.quantities import WH_PER_THERM, Quantity
from gateway.reading import Reading

THERM_WH = WH_PER_THERM
#: Wh per unit, by the unit's name in lower case.
ENERGY_UNITS = {"kwh": 1000.0, "wh": 1.0, "mwh": 1e6, "therm": THERM_WH, "therms": THERM_WH}
LIMIT = 1e12
#: Unix seconds beyond this are not a time a bill or an interval has (year 2100).
LAST_TIME_S = 4_102_444_800


def number(v: object, signed: bool = False) -> float | None:
    return json_number(v, LIMIT, signed)


def instant_ms(v: object) -> int | None:
    """An ISO 8601 time (UTC without an offset) or Unix seconds, in ms; None when it is neither."""
    if isinstance(v, str) and 10 <= len(v) <= 40:
        try:
            dt = datetime.fromisoformat(v)
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ms = int(dt.timestamp() * 1000)
    else:
        s = number(v)
        if s is None:
            return None
        ms = round(s * 1000)
    return ms if 0 < ms < LAST_TIME_S * 1000 else None


def is_mine(meter: WattzonMeter, rec: dict[str, Any]) -> bool:
    if not isinstance(rec.get("type"), str) or rec["type"].lower() != meter.utility:
        return False
    if meter.meter_number is not None:
        return rec.get("meter_number") == meter.meter_number
    return rec.get("account_number") == meter.account_number


def bill_reading(meter: WattzonMeter, rec: dict[str, Any], problems: Counter[str]) -> Reading | None:
    """The period reading of one of this meter's bill records, or None (the reason counted)."""
    start, end = instant_ms(rec.get("start_date")), instant_ms(rec.get("end_date"))
    if start is None or end is None:
        problems["no_period"] += 1
        return None
    if not start < end:
        problems["bad_period"] += 1
        return None
    currency = rec.get("currency")
    if currency is not None and (not isinstance(currency, str) or currency.upper() != meter.currency.upper()):
        problems["wrong_currency"] += 1
        return None
    values: dict[Quantity, float] = {}
    usage = number(rec.get("usage"))
    if usage is not None:
        units = rec.get("units")
        factor = ENERGY_UNITS.get(units.lower()) if isinstance(units, str) else None
        if factor is None:
            problems["unknown_units"] += 1
            return None
        values[Quantity.INTERVAL_ENERGY] = round(usage * factor, 6)
    elif rec.get("usage") is not None:
        problems["bad_value"] += 1
        return None
    cost = number(rec.get("cost"), signed=True)  # a credit is a negative cost
    if cost is not None:
        values[Quantity.COST] = round(cost, 4)
    elif rec.get("cost") is not None:
        problems["bad_value"] += 1
        return None
    if not values:
        problems["no_value"] += 1
        return None
    return Reading(meter.name, end, values, start_ms=start)


def interval_rows(answer: object, layout: IntervalLayout) -> list[Any]:
    """The list of intervals of a month's answer; ValueError when it is not where the layout says."""
    rows = answer if not layout.list else (answer.get(layout.list) if isinstance(answer, dict) else None)
    if not isinstance(rows, list):
        where = f"under '{layout.list}'" if layout.list else "as the answer itself"
        raise ValueError(f"no list of intervals {where} (see interval_layout)")
    return rows


def interval_reading(meter: WattzonMeter, row: object, layout: IntervalLayout,
                     problems: Counter[str]) -> Reading | None:
    if not isinstance(row, dict):
        problems["not_an_interval"] += 1
        return None
    start, end = instant_ms(row.get(layout.start)), instant_ms(row.get(layout.end))
    if start is None or end is None or not start < end:
        problems["bad_period"] += 1
        return None
    usage = number(row.get(layout.usage))
    units = row.get(layout.units, layout.default_units)
    factor = ENERGY_UNITS.get(units.lower()) if isinstance(units, str) else None
    if usage is None or factor is None:
        problems["bad_value" if factor is not None else "unknown_units"] += 1
        return None
    return Reading(meter.name, end, {Quantity.INTERVAL_ENERGY: round(usage * factor, 6)}, start_ms=start)


def in_order(readings: list[Reading], problems: Counter[str]) -> list[Reading]:
    """By end; the same period twice with the same values is one reading, with different values none."""
    by_end: dict[int, list[Reading]] = {}
    for r in readings:
        by_end.setdefault(r.ts_ms, []).append(r)
    out = []
    for end in sorted(by_end):
        group = by_end[end]
        distinct = {(r.start_ms, tuple(sorted(r.values.items()))) for r in group}
        if len(distinct) == 1:
            out.append(group[0])
        else:
            problems["conflicting"] += len(group)
    return out
