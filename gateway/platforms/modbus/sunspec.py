"""SunSpec devices (``profile: sunspec``): a meter or an inverter that describes its own registers.

A SunSpec device holds, at a base address (40000, 50000 or 0, in holding registers), the marker "SunS", then a chain
of models: each a model id and its length in registers, then its body, up to the end marker (id 0xFFFF). Model 1
names the device (manufacturer, model, version, serial number); meters are models 201-204 (integers with scale
factors) and 211-214 (float32), inverters 101-103 and 111-113. The model definitions are the SunSpec Alliance's
(``sunspec_models.json``, generated from them by ``sunspec_generate``).

Discovery walks the chain once (bounded: at most :data:`MAX_MODELS` models, never past the end of the address
space, never backwards); the meter then reads the one model it takes its values from in one request (a model's
values and their scale factors together, as the specification requires: a scale factor read in another request
could belong to another instant). Values the device marks "not implemented" (0x8000, 0xFFFF, 0x80000000, an
accumulator at 0, NaN) and values whose scale factor is not implemented or out of range are left out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import ModbusBadAnswer, ModbusExceptionReply, ModbusTimeout
from gateway.platforms.modbus.plan import Block, Planner
from gateway.platforms.modbus.registers import MAX_REGISTERS, Point, RegisterType
from gateway.quantities import Quantity as Q

if TYPE_CHECKING:
    from gateway.platforms.modbus.bus import _Connection

SUNSPEC = "sunspec"
#: Where installers' devices put the chain, in the order they are tried.
BASES = (40000, 50000, 0)
MARKER = (0x5375, 0x6E53)  # "SunS"
END = 0xFFFF
#: Unit ids SunSpec devices answer at out of the box (inverters, meters behind them, Modbus TCP defaults).
INSTALLER_UNITS = (1, 2, 126, 200, 201, 202, 203, 204, 240)
#: A chain longer than this is not a device's: discovery stops and says so.
MAX_MODELS = 64

METERS = (201, 202, 203, 204, 211, 212, 213, 214)
INVERTERS = (101, 102, 103, 111, 112, 113)

#: A meter model's points and the quantities they are (the float models name the line voltages PPVph..).
METER_POINTS: dict[str, Q] = {
    "AphA": Q.CURRENT_L1, "AphB": Q.CURRENT_L2, "AphC": Q.CURRENT_L3,
    "PhVphA": Q.VOLTAGE_L1, "PhVphB": Q.VOLTAGE_L2, "PhVphC": Q.VOLTAGE_L3,
    "PhVphAB": Q.VOLTAGE_L1_L2, "PhVphBC": Q.VOLTAGE_L2_L3, "PhVphCA": Q.VOLTAGE_L3_L1,
    "PPVphAB": Q.VOLTAGE_L1_L2, "PPVphBC": Q.VOLTAGE_L2_L3, "PPVphCA": Q.VOLTAGE_L3_L1,
    "Hz": Q.FREQUENCY,
    "W": Q.POWER_ACTIVE_TOTAL, "WphA": Q.POWER_ACTIVE_L1, "WphB": Q.POWER_ACTIVE_L2, "WphC": Q.POWER_ACTIVE_L3,
    "VA": Q.POWER_APPARENT_TOTAL, "VAphA": Q.POWER_APPARENT_L1, "VAphB": Q.POWER_APPARENT_L2,
    "VAphC": Q.POWER_APPARENT_L3,
    "VAR": Q.POWER_REACTIVE_TOTAL, "VARphA": Q.POWER_REACTIVE_L1, "VARphB": Q.POWER_REACTIVE_L2,
    "VARphC": Q.POWER_REACTIVE_L3,
    "PF": Q.POWER_FACTOR_TOTAL, "PFphA": Q.POWER_FACTOR_L1, "PFphB": Q.POWER_FACTOR_L2, "PFphC": Q.POWER_FACTOR_L3,
    "TotWhImp": Q.ENERGY_IMPORT_TOTAL, "TotWhImpPhA": Q.ENERGY_IMPORT_L1, "TotWhImpPhB": Q.ENERGY_IMPORT_L2,
    "TotWhImpPhC": Q.ENERGY_IMPORT_L3,
    "TotWhExp": Q.ENERGY_EXPORT_TOTAL, "TotWhExpPhA": Q.ENERGY_EXPORT_L1, "TotWhExpPhB": Q.ENERGY_EXPORT_L2,
    "TotWhExpPhC": Q.ENERGY_EXPORT_L3,
}

#: An inverter model's points. Its lifetime AC energy (WH) is what it delivered: sent as energy_export_total, the
#: key a meter at its terminals would count it under.
INVERTER_POINTS: dict[str, Q] = {
    "AphA": Q.CURRENT_L1, "AphB": Q.CURRENT_L2, "AphC": Q.CURRENT_L3,
    "PhVphA": Q.VOLTAGE_L1, "PhVphB": Q.VOLTAGE_L2, "PhVphC": Q.VOLTAGE_L3,
    "PPVphAB": Q.VOLTAGE_L1_L2, "PPVphBC": Q.VOLTAGE_L2_L3, "PPVphCA": Q.VOLTAGE_L3_L1,
    "W": Q.POWER_ACTIVE_TOTAL, "Hz": Q.FREQUENCY, "VA": Q.POWER_APPARENT_TOTAL, "VAr": Q.POWER_REACTIVE_TOTAL,
    "PF": Q.POWER_FACTOR_TOTAL, "WH": Q.ENERGY_EXPORT_TOTAL,
    "DCA": Q.DC_CURRENT, "DCV": Q.DC_VOLTAGE, "DCW": Q.DC_POWER,
}

#: SunSpec types -> the gateway's register types, and the raw pattern meaning "not implemented".
_TYPES: dict[str, tuple[RegisterType, int | None]] = {
    "int16": ("int16", 0x8000), "uint16": ("uint16", 0xFFFF), "int32": ("int32", 0x80000000),
    "uint32": ("uint32", 0xFFFFFFFF), "acc32": ("uint32", 0), "float32": ("float32", None),
    "acc16": ("uint16", 0), "acc64": ("uint64", 0), "int64": ("int64", 0x8000000000000000),
    "uint64": ("uint64", 0xFFFFFFFFFFFFFFFF), "sunssf": ("int16", 0x8000),
}


@dataclass(frozen=True)
class ModelSpec:
    id: int
    name: str
    length: int
    #: name -> (offset in the body, SunSpec type, size in registers, scale factor point, units)
    points: dict[str, tuple[int, str, int, str | None, str | None]]


@cache
def models() -> dict[int, ModelSpec]:
    """The SunSpec Alliance's definitions of the models the gateway reads."""
    table = json.loads((Path(__file__).resolve().parent / "sunspec_models.json").read_text())
    return {int(k): ModelSpec(int(k), v["name"], v["length"], {p[0]: (p[1], p[2], p[3], p[4], p[5])
                                                               for p in v["points"]})
            for k, v in table["models"].items()}


@dataclass
class Device:
    """A discovered SunSpec device: where its chain is, its models, what model 1 says, and the model read."""

    base: int
    #: (model id, address of its body, length) in chain order
    chain: list[tuple[int, int, int]]
    identity: dict[str, str] = field(default_factory=dict)
    model: tuple[int, int, int] | None = None

    def describe(self) -> str:
        who = ", ".join(f"{k} {v}" for k, v in self.identity.items() if v)
        chain = ", ".join(str(m) for m, _, _ in self.chain)
        read = f"; reads model {self.model[0]}" if self.model else "; no meter or inverter model to read"
        return f"SunSpec at {self.base}: {who or 'no common model'}; models {chain}{read}"


def points(device: Device, quantities: frozenset[Q] | None = None) -> tuple[Point, ...]:
    """The points of the device's chosen model, each with its scale factor's address (holding registers)."""
    if device.model is None:
        return ()
    model_id, body, length = device.model
    spec = models()[model_id]
    mapping = METER_POINTS if model_id in METERS else INVERTER_POINTS
    out: dict[Q, Point] = {}
    for name, quantity in mapping.items():
        if name not in spec.points or (quantities is not None and quantity not in quantities):
            continue
        offset, kind, _size, sf, units = spec.points[name]
        if kind not in _TYPES or offset >= length:
            continue
        rtype, na = _TYPES[kind]
        sf_address = None
        if sf is not None:
            if sf not in spec.points or spec.points[sf][0] >= length:
                continue
            sf_address = body + spec.points[sf][0]
        scale = 0.01 if units == "Pct" else 1.0  # a power factor in percent
        out.setdefault(quantity, Point(quantity, body + offset, "holding", rtype, "big", scale, 0.0,
                                       frozenset() if na is None else frozenset({na}), sf_address))
    return tuple(sorted(out.values(), key=lambda p: p.address))


def choose(chain: list[tuple[int, int, int]], wanted: int | None) -> tuple[int, int, int] | None:
    """The model read: the one asked for, else the first meter model, else the first inverter model."""
    known = [m for m in chain if m[0] in models() and m[0] != 1]
    if wanted is not None:
        return next((m for m in known if m[0] == wanted), None)
    return next((m for m in known if m[0] in METERS), next((m for m in known if m[0] in INVERTERS), None))


def parse_common(words: list[int]) -> dict[str, str]:
    """Model 1's strings: manufacturer, model, version, serial number (NUL and space padded ASCII)."""
    spec = models()[1]
    out = {}
    for name, key in (("Mn", "manufacturer"), ("Md", "model"), ("Vr", "version"), ("SN", "serial")):
        offset, _, size, _, _ = spec.points[name]
        raw = b"".join(w.to_bytes(2, "big") for w in words[offset: offset + size])
        text = raw.split(b"\0", 1)[0].decode("ascii", "replace").strip()
        out[key] = "".join(c if c.isprintable() else "?" for c in text)[:64]
    return out


def _block(address: int, count: int) -> Block:
    return Block("holding", address, count, (Point(Q.VALUE, address, "holding", "uint16"),))


async def discover(conn: _Connection, unit: int, answer_within: float | None, wanted: int | None) -> Device:
    """Find the chain (base address, models), read model 1, choose the model to read. ModbusError when the device
    does not answer, or answers as no SunSpec device would (ModbusBadAnswer: "not a SunSpec device: ...")."""
    base = None
    silences: list[ModbusTimeout] = []
    for candidate in BASES:
        try:
            words = await conn.read(unit, _block(candidate, 2), answer_within)
        except ModbusExceptionReply:
            continue  # no register there: the next base
        except ModbusTimeout as e:
            silences.append(e)  # some devices keep silent about registers they lack
            continue
        if tuple(words) == MARKER:
            base = candidate
            break
    if base is None:
        if len(silences) == len(BASES):
            raise silences[0]  # nothing answered at all: the device is not there (or not now)
        raise ModbusBadAnswer(f"not a SunSpec device: no 'SunS' marker at {', '.join(map(str, BASES))}")
    chain: list[tuple[int, int, int]] = []  # (model id, address of its body, length)
    address = base + 2
    while True:
        if len(chain) >= MAX_MODELS:
            raise ModbusBadAnswer(f"not a SunSpec device: more than {MAX_MODELS} models from {base} (no end marker)")
        if address + 2 > 0x10000:
            raise ModbusBadAnswer(f"not a SunSpec device: the model chain from {base} runs past the last register")
        model_id, length = await conn.read(unit, _block(address, 2), answer_within)
        if model_id == END:
            break
        body = address + 2
        if body + length > 0x10000:
            raise ModbusBadAnswer(f"SunSpec model {model_id} at {address} runs past the last register")
        chain.append((model_id, body, length))
        address = body + length
    device = Device(base, chain, model=choose(chain, wanted))
    common = next((m for m in chain if m[0] == 1), None)
    if common is not None and common[2] > 0:
        _, body, length = common
        try:
            words = await conn.read(unit, _block(body, min(length, models()[1].length, MAX_REGISTERS)),
                                    answer_within)
        except ModbusExceptionReply:
            words = []  # a model 1 it will not give: the device is read all the same, unnamed
        device.identity = parse_common(words + [0] * (models()[1].length - len(words)))
    return device


class ModelPlanner(Planner):
    """A SunSpec model read whole, in one request (two above 125 registers): its values with their scale
    factors. A refused read is split as any meter's (a value whose scale factor lands in another part is left
    out, never scaled by a guess)."""

    def __init__(self, points: tuple[Point, ...], body: int, length: int) -> None:
        super().__init__(points, max_gap=MAX_REGISTERS)
        self.body, self.length = body, length

    def _plan(self, points: Iterable[Point], barriers: frozenset[tuple[str, int]]) -> list[Block]:
        wanted = [p for p in points if p not in self.unsupported]
        if barriers or not wanted:
            return super()._plan(wanted, barriers)
        out = []
        for start in range(self.body, self.body + self.length, MAX_REGISTERS):
            count = min(MAX_REGISTERS, self.body + self.length - start)
            inside = tuple(p for p in wanted if start <= p.address and p.end <= start + count)
            if inside:
                out.append(Block("holding", start, count, inside))
        return out
