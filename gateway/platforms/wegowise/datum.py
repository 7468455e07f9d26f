"""A period as Wegowise's raw datum: the usage in the data type's unit (kWh, btu, gallons), the charge from the
tariff, every value a string; and reading what Wegowise holds (keys, ids, values compared as numbers), trusting
nothing of its shape."""

from __future__ import annotations

from typing import Any

from gateway.platforms.wegowise.config import BTU_PER_THERM, BTU_PER_WH, GALLONS_PER_M3, USAGE_FIELD, WegowiseMeter
from gateway.platforms.wegowise.periods import Period


def usage(p: Period, unit: str, entry: WegowiseMeter) -> float:
    """The period's consumption in the unit its data type's raw datum wants (kWh, btu, gallons)."""
    c = p.consumption
    if entry.data_type == "Electric":
        return c / 1000 if unit == "Wh" else c
    if entry.data_type == "Gas":
        if unit == "m3":
            assert entry.btu_per_m3 is not None
            return c * entry.btu_per_m3
        return c * BTU_PER_WH * (1000 if unit == "kWh" else 1)
    return c * GALLONS_PER_M3 / (1000 if unit == "l" else 1)


def charge(p: Period, unit: str, entry: WegowiseMeter) -> float | None:
    """``total_charge`` from the tariff; None without one."""
    t = entry.tariff
    if t is None:
        return None
    c = p.consumption
    btu = (c * entry.btu_per_m3 if unit == "m3" and entry.btu_per_m3 else
           c * BTU_PER_WH * (1000 if unit == "kWh" else 1))
    m3 = c / 1000 if unit == "l" else c
    amount = {"kWh": btu / BTU_PER_WH / 1000, "therm": btu / BTU_PER_THERM, "m3": m3,
              "gallon": m3 * GALLONS_PER_M3}[t.per]
    return t.price * amount + t.fixed * p.spans


def datum(p: Period, unit: str, entry: WegowiseMeter, cost: float | None = None) -> dict[str, str]:
    """The raw datum's body: the document's fields, every value a string. ``cost``: what the period cost (a bill's
    own), used instead of the tariff."""
    body = {"start_date": p.first_day.isoformat(), "end_date": p.last_day.isoformat(),
            USAGE_FIELD[entry.data_type]: f"{usage(p, unit, entry):.3f}"}
    total = cost if cost is not None else charge(p, unit, entry)
    body["total_charge"] = f"{total:.2f}" if total is not None else "0.00"
    return body


def period_key(body: dict[str, Any]) -> str:
    """A period's key, from the body the gateway built or from what Wegowise answered (anything: then a key that
    matches no period)."""
    start, end = body.get("start_date"), body.get("end_date")
    return f"{start}/{end}" if isinstance(start, str) and isinstance(end, str) else "?"


def datum_id(value: Any) -> int | None:
    """A raw datum's id as Wegowise gave it, if it is one."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def same_values(held: dict[str, Any], body: dict[str, str]) -> bool:
    """Does what Wegowise holds say what ``body`` says? (numbers compared as numbers: it may answer 10.0 for 10)"""
    for k, v in body.items():
        h = held.get(k)
        if k in ("start_date", "end_date"):
            if h != v:
                return False
            continue
        try:
            if h is None or abs(float(h) - float(v)) > 0.0005:
                return False
        except (TypeError, ValueError):
            return False
    return True
