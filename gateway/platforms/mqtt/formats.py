"""MQTT messages to readings: generic JSON with a path per quantity, plain numbers, Tasmota and Shelly Gen2.

A message either becomes readings (meter, time, values) or raises :class:`BadMessage` with a short reason (for the
per-subscription counters and the log); it never becomes a partial guess. Values must be finite numbers: a string,
a boolean, NaN or infinity where a number is expected makes the whole message bad. A ``null`` means "not measured"
and is left out.

Formats, checked against the devices' public documentation:

- ``tasmota``: ``tele/<device>/SENSOR`` with an ``ENERGY`` object (Tasmota docs, "Power Monitoring"): ``Total`` and
  ``ExportActive`` in kWh, ``Power`` W, ``ApparentPower`` VA, ``ReactivePower`` VAr, ``Factor``, ``Voltage`` V,
  ``Current`` A, ``Frequency`` Hz; three-phase devices send lists (one per phase). ``Time`` is the device's local
  time without an offset: the site's time zone.
- ``shelly_gen2``: Shelly Pro 3EM / 3EM Gen3 in the triphase profile (Shelly Gen2 API: EM and EMData components,
  MQTT): ``NotifyStatus`` notifications on ``<prefix>/events/rpc`` (``params.ts`` in UTC seconds, ``em:0`` and
  ``emdata:0``), or whole status objects on ``<prefix>/status/em:0`` and ``<prefix>/status/emdata:0``. Power W,
  voltage V, current A, energies Wh. Notifications of other components (sys, wifi...) are ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from gateway.quantities import Quantity as Q

if TYPE_CHECKING:
    from gateway.platforms.mqtt.config import SubscriptionConfig, TimestampSpec

#: Earliest plausible reading time: a device whose clock says 1970 has not set it.
EARLIEST_S = 946_684_800.0  # 2000-01-01

Values = dict[Q, float]
#: (meter, time in UTC ms or None when the message carries no time of its own, values)
Decoded = list[tuple[str, int | None, Values]]


#: SubscriptionConfig counters that are not reasons a message was refused.
NOT_REASONS = frozenset({"messages", "readings", "ignored", "bad"})


def refusal_reasons(counts: dict[str, int]) -> str:
    """``not_json 2, unknown_meter 1``: why a subscription's messages were refused, from its counters."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k not in NOT_REASONS)


class BadMessage(Exception):
    """``reason`` is short and fixed (a counter's name); ``detail`` says more, never the payload itself."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class Ignored(Exception):
    """A message that carries nothing for the gateway (another component's notification): not a problem."""


def number(value: object, where: str) -> float | None:
    """A finite number, None for null; BadMessage for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadMessage("wrong_type", f"{where} is {type(value).__name__}, not a number")
    try:
        v = float(value)
    except OverflowError:  # an integer beyond any float
        raise BadMessage("not_finite", f"{where} is a number too large for any meter") from None
    if not math.isfinite(v):
        raise BadMessage("not_finite", f"{where} is {v}")
    return v


def finite(v: float, where: str) -> float:
    """A scaled value, still finite (a huge number times a scale can overflow)."""
    if not math.isfinite(v):
        raise BadMessage("not_finite", f"{where} scaled is {v}")
    return v


def lookup(doc: object, path: str | tuple[str, ...]) -> object:
    """``ENERGY.Power`` or ``Power.0`` (or the path already split): the value there; KeyError when absent."""
    cur = doc
    for part in path.split(".") if isinstance(path, str) else path:
        if isinstance(cur, dict):
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise KeyError(path)
    return cur


def parse_json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except UnicodeDecodeError:
        raise BadMessage("not_json", "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise BadMessage("not_json", f"{e.msg} at position {e.pos}") from None
    except RecursionError:
        raise BadMessage("too_deep", "nested deeper than a meter's message is") from None
    except ValueError:  # an integer of more than 4,300 digits (Python's limit on int parsing)
        raise BadMessage("not_a_number", "a number with more digits than any meter has") from None


def parse_time(value: object, fmt: str, tz: ZoneInfo, where: str) -> int:
    """UTC milliseconds from ISO 8601 text (the site's zone when it has no offset) or epoch seconds/milliseconds."""
    if isinstance(value, str) and fmt in ("auto", "iso"):
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            raise BadMessage("bad_timestamp", f"{where} is not ISO 8601 time") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=tz)
        seconds = dt.timestamp()
    elif isinstance(value, int | float) and not isinstance(value, bool) and fmt != "iso":
        try:
            seconds = float(value)
        except OverflowError:
            raise BadMessage("bad_timestamp", f"{where} is not a plausible time") from None
        if fmt == "epoch_ms" or (fmt == "auto" and seconds > 1e11):
            seconds /= 1000
    else:
        raise BadMessage("bad_timestamp", f"{where} is not a time of format {fmt}")
    if not math.isfinite(seconds) or seconds < EARLIEST_S or seconds > 4_102_444_800:  # before 2000 or after 2100
        raise BadMessage("bad_timestamp", f"{where} is not a plausible time")
    return round(seconds * 1000)


class Decoder:
    """Turns the messages of one subscription into readings for the meters the configuration knows."""

    def __init__(self, sub: SubscriptionConfig, tz: ZoneInfo, meters: set[str]) -> None:
        self.sub = sub
        self.tz = tz
        self.meters = meters
        # Paths split once, not at every message.
        self._paths = [(q, tuple(m.path.split(".")), m) for q, m in (sub.values or {}).items()]
        self._decode: Callable[[str, bytes], list[tuple[int | None, Values]]] = {
            "json": self._json, "value": self._value, "tasmota": self._tasmota, "shelly_gen2": self._shelly,
        }[sub.format]

    def meter_of(self, topic: str) -> str:
        if self.sub.meter is not None:
            return self.sub.meter
        levels = topic.split("/")
        level = self.sub.meter_level or 0
        name = levels[level - 1] if level <= len(levels) else ""
        if name not in self.meters:
            raise BadMessage("unknown_meter", f"topic level {level} is '{name[:64]}', not a meter of type mqtt")
        return name

    def decode(self, topic: str, payload: bytes) -> Decoded:
        meter = self.meter_of(topic)
        out = [(meter, ts, values) for ts, values in self._decode(topic, payload)]
        if not out:
            raise BadMessage("missing_fields", "none of the mapped values is in the message")
        return out

    # ------------------------------------------------------------ formats

    def _value(self, topic: str, payload: bytes) -> list[tuple[int | None, Values]]:
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise BadMessage("not_a_number", "not UTF-8 text") from None
        try:
            v = float(text)
        except ValueError:
            raise BadMessage("not_a_number", "the payload is not a plain number") from None
        if not math.isfinite(v):
            raise BadMessage("not_finite", f"the payload is {v}")
        return [(None, {self.sub.quantity or Q.VALUE: finite(v * self.sub.scale + self.sub.offset, "payload")})]

    def _json(self, topic: str, payload: bytes) -> list[tuple[int | None, Values]]:
        doc = parse_json(payload)
        values: Values = {}
        for q, path, m in self._paths:
            try:
                raw = lookup(doc, path)
            except KeyError:
                continue
            v = number(raw, m.path)
            if v is not None:
                values[q] = finite(v * m.scale + m.offset, m.path)
        if not values:
            return []
        return [(self._stamp(doc, self.sub.timestamp), values)]

    def _stamp(self, doc: object, spec: TimestampSpec | None) -> int | None:
        if spec is None:
            return None
        try:
            raw = lookup(doc, spec.path)
        except KeyError:
            raise BadMessage("bad_timestamp", f"{spec.path} is missing") from None
        return parse_time(raw, spec.format, self.tz, spec.path)

    def _tasmota(self, topic: str, payload: bytes) -> list[tuple[int | None, Values]]:
        doc = parse_json(payload)
        energy = doc.get("ENERGY") if isinstance(doc, dict) else None
        if not isinstance(energy, dict):
            raise BadMessage("missing_fields", "no ENERGY object (a tele/<device>/SENSOR message of a power monitor)")
        values: Values = {}
        for key, total, phases, scale in _TASMOTA:
            if key in energy:
                _spread(energy[key], f"ENERGY.{key}", total, phases, scale, values)
        if not values:
            return []
        return [(parse_time(doc["Time"], "iso", self.tz, "Time") if "Time" in doc else None, values)]

    def _shelly(self, topic: str, payload: bytes) -> list[tuple[int | None, Values]]:
        doc = parse_json(payload)
        if not isinstance(doc, dict):
            raise BadMessage("wrong_type", "the message is not a JSON object")
        if "params" in doc or "method" in doc:  # an RPC notification on <prefix>/events/rpc
            params = doc.get("params")
            if doc.get("method") != "NotifyStatus" or not isinstance(params, dict):
                raise Ignored
            components = {k: v for k, v in params.items() if k in ("em:0", "emdata:0")}
            if not components:
                raise Ignored
            ts = parse_time(params["ts"], "epoch_s", self.tz, "params.ts") if "ts" in params else None
        else:  # a whole component status on <prefix>/status/<component>
            component = topic.rsplit("/", 1)[-1]
            if component not in ("em:0", "emdata:0"):
                raise Ignored
            components, ts = {component: doc}, None
        values: Values = {}
        for name, status in components.items():
            if not isinstance(status, dict):
                raise BadMessage("wrong_type", f"{name} is not an object")
            for key, q in (_SHELLY_EM if name == "em:0" else _SHELLY_EMDATA).items():
                if key in status and (v := number(status[key], f"{name}.{key}")) is not None:
                    values[q] = v
        return [(ts, values)] if values else []


def quantities_of(sub: SubscriptionConfig) -> frozenset[Q] | None:
    """Every quantity messages of ``sub`` can give; None for Tasmota, whose devices send one total or one value
    per phase as they are built."""
    if sub.format == "json":
        return frozenset(sub.values or ())
    if sub.format == "value":
        return frozenset({sub.quantity or Q.VALUE})
    if sub.format == "shelly_gen2":
        return frozenset(_SHELLY_EM.values()) | frozenset(_SHELLY_EMDATA.values())
    return None


def _spread(raw: object, where: str, total: Q | None, phases: tuple[Q, ...], scale: float, out: Values) -> None:
    """A Tasmota value: one number (the total, or phase 1 for voltage and current) or one per phase."""
    if isinstance(raw, list):
        if len(raw) > 3:
            raise BadMessage("wrong_type", f"{where} has {len(raw)} values, more than three phases")
        if len(raw) == 1 and total is not None:
            raw = raw[0]
        else:
            for i, item in enumerate(raw[: len(phases)]):  # a frequency per phase: the first one
                v = number(item, f"{where}.{i}")
                if v is not None:
                    out[phases[i]] = finite(v * scale, where)
            return
    v = number(raw, where)
    if v is not None:
        out[total if total is not None else phases[0]] = finite(v * scale, where)


# (ENERGY key, quantity of a single number, per-phase quantities, scale to the quantity's unit)
_TASMOTA: tuple[tuple[str, Q | None, tuple[Q, ...], float], ...] = (
    ("Power", Q.POWER_ACTIVE_TOTAL, (Q.POWER_ACTIVE_L1, Q.POWER_ACTIVE_L2, Q.POWER_ACTIVE_L3), 1.0),
    ("ApparentPower", Q.POWER_APPARENT_TOTAL, (Q.POWER_APPARENT_L1, Q.POWER_APPARENT_L2, Q.POWER_APPARENT_L3), 1.0),
    ("ReactivePower", Q.POWER_REACTIVE_TOTAL, (Q.POWER_REACTIVE_L1, Q.POWER_REACTIVE_L2, Q.POWER_REACTIVE_L3), 1.0),
    ("Factor", Q.POWER_FACTOR_TOTAL, (Q.POWER_FACTOR_L1, Q.POWER_FACTOR_L2, Q.POWER_FACTOR_L3), 1.0),
    ("Voltage", None, (Q.VOLTAGE_L1, Q.VOLTAGE_L2, Q.VOLTAGE_L3), 1.0),
    ("Current", None, (Q.CURRENT_L1, Q.CURRENT_L2, Q.CURRENT_L3), 1.0),
    ("Frequency", Q.FREQUENCY, (Q.FREQUENCY,), 1.0),
    ("Total", Q.ENERGY_IMPORT_TOTAL, (Q.ENERGY_IMPORT_L1, Q.ENERGY_IMPORT_L2, Q.ENERGY_IMPORT_L3), 1000.0),
    ("ExportActive", Q.ENERGY_EXPORT_TOTAL, (Q.ENERGY_EXPORT_L1, Q.ENERGY_EXPORT_L2, Q.ENERGY_EXPORT_L3), 1000.0),
)

_SHELLY_EM: dict[str, Q] = {
    **{f"{p}_current": q for p, q in zip("abc", (Q.CURRENT_L1, Q.CURRENT_L2, Q.CURRENT_L3), strict=True)},
    **{f"{p}_voltage": q for p, q in zip("abc", (Q.VOLTAGE_L1, Q.VOLTAGE_L2, Q.VOLTAGE_L3), strict=True)},
    **{f"{p}_act_power": q for p, q in zip("abc", (Q.POWER_ACTIVE_L1, Q.POWER_ACTIVE_L2, Q.POWER_ACTIVE_L3),
                                             strict=True)},
    **{f"{p}_aprt_power": q for p, q in zip("abc", (Q.POWER_APPARENT_L1, Q.POWER_APPARENT_L2, Q.POWER_APPARENT_L3),
                                              strict=True)},
    **{f"{p}_pf": q for p, q in zip("abc", (Q.POWER_FACTOR_L1, Q.POWER_FACTOR_L2, Q.POWER_FACTOR_L3), strict=True)},
    "a_freq": Q.FREQUENCY,
    "n_current": Q.CURRENT_N,
    "total_act_power": Q.POWER_ACTIVE_TOTAL,
    "total_aprt_power": Q.POWER_APPARENT_TOTAL,
}
_SHELLY_EMDATA: dict[str, Q] = {
    **{f"{p}_total_act_energy": q for p, q in zip("abc", (Q.ENERGY_IMPORT_L1, Q.ENERGY_IMPORT_L2, Q.ENERGY_IMPORT_L3),
                                                      strict=True)},
    **{f"{p}_total_act_ret_energy": q for p, q in zip(
        "abc", (Q.ENERGY_EXPORT_L1, Q.ENERGY_EXPORT_L2, Q.ENERGY_EXPORT_L3), strict=True)},
    "total_act": Q.ENERGY_IMPORT_TOTAL,
    "total_act_ret": Q.ENERGY_EXPORT_TOTAL,
}
