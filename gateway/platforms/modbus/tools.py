"""Field technicians' tools: ``read`` (one read now), ``scan`` (who answers on a line), ``profiles``, and the
planned requests ``check`` shows. Output is for people: tables with units, and config lines to paste.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.config.models import GatewayConfig
from gateway.config.profiles import Profile, meter_for
from gateway.config.units import format_duration
from gateway.errors import GatewayError, ModbusBusError, ModbusError
from gateway.platforms.modbus import sunspec
from gateway.platforms.modbus.bus import Bus
from gateway.platforms.modbus.commission import probe_plan, read_blocks, read_identity
from gateway.platforms.modbus.config import (
    BusBase,
    ModbusMeterConfig,
    RtuOverTcpBus,
    SerialBus,
    SerialLine,
    TcpBus,
    bus_where,
)
from gateway.platforms.modbus.plan import Block, plan
from gateway.platforms.modbus.registers import RegisterType, WordOrder, decoder, registers_to_bytes
from gateway.quantities import CODE, Quantity, unit_of
from gateway.reading import Reading, iso_utc


def unit_label(q: Quantity, meter_unit: str | None) -> str:
    return (meter_unit or "") if q is Quantity.VALUE else unit_of(q)


def format_values(values: dict[Quantity, float], value_unit: str | None, indent: str = "  ") -> list[str]:
    # repr: the value exactly as read (230.4, 1234500.0), never rounded or in exponent form.
    return [f"{indent}{q.value:<22} {v!r:>16} {unit_label(q, value_unit)}".rstrip()
            for q, v in sorted(values.items(), key=lambda kv: CODE[kv[0]])]


# ---------------------------------------------------------------- read


@dataclass
class ReadResult:
    meter: ModbusMeterConfig
    reading: Reading | None
    problems: list[str]
    requests: int
    seconds: float
    #: Each value's registers as answered (``register_rows``): for ``read --raw``.
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: What a SunSpec device said it is (its identity, its models).
    device: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"meter": self.meter.name, "ok": self.reading is not None and not self.problems,
                "reading": self.reading.to_json_dict() if self.reading else None, "problems": self.problems,
                "requests": self.requests, "seconds": round(self.seconds, 3)}


def serial_port_busy(port: str) -> str | None:
    """Why ``port`` cannot be opened exclusively right now (the daemon holds it, or another program), or None."""
    import serial

    try:
        s = serial.Serial(port, exclusive=True)
    except serial.SerialException as e:
        text = str(e)
        if "exclusively lock" in text or "Resource temporarily unavailable" in text:
            return (f"serial port {port} is busy: the gateway service (or another program) has it open; read it"
                    f" through the service ('meter-gateway status') or stop the service first")
        return f"cannot open serial port {port}: {text}"
    s.close()
    return None


async def read_meters(config: GatewayConfig, meters: Sequence[ModbusMeterConfig]) -> list[ReadResult]:
    """One poll of each meter, buses in parallel, meters of one bus one after the other."""
    from gateway.platforms.modbus.source import poller_for

    buses = {b.name: b for b in config.buses}

    async def one_bus(bus_cfg: BusBase, ms: list[ModbusMeterConfig]) -> list[ReadResult]:
        if isinstance(bus_cfg, SerialBus) and (busy := serial_port_busy(bus_cfg.port)):
            return [ReadResult(m, None, [busy], 0, 0.0) for m in ms]
        bus = Bus(bus_cfg)
        out = []
        try:
            for m in ms:
                poller = poller_for(m, bus, report_health=False)
                before = bus.stats.requests
                t0 = time.monotonic()
                reading = await poller.poll()
                problems = [f"{e.kind}: {e}" for e in poller.last_problems]
                device = getattr(poller, "device", None)
                out.append(ReadResult(m, reading, problems, bus.stats.requests - before, time.monotonic() - t0,
                                      register_rows(poller), device.describe() if device is not None else ""))
        finally:
            bus.close()
        return out

    groups: dict[str, list[ModbusMeterConfig]] = {}
    for m in meters:
        groups.setdefault(m.bus, []).append(m)
    results = await asyncio.gather(*(one_bus(buses[name], ms) for name, ms in groups.items()))
    by_name = {r.meter.name: r for rs in results for r in rs}
    return [by_name[m.name] for m in meters]


#: The readings of a register's words a profile can express, per width in registers: type and word order.
EVERY_WAY: dict[int, tuple[tuple[RegisterType, WordOrder], ...]] = {
    1: (("uint16", "big"), ("int16", "big")),
    2: tuple((t, o) for t in ("float32", "uint32", "int32") for o in ("big", "little")),
    4: tuple((t, o) for t in ("float64", "uint64", "int64") for o in ("big", "little")),
}


def register_rows(poller: Any) -> list[dict[str, Any]]:
    """Each value's registers as last answered: address, function, raw words, the value decoded as configured,
    with the other word order (a wrong order shows as an absurd number beside a plausible one), and unscaled in
    every type and word order of the same width (``every_way``: what a technician writing a profile compares with
    the meter's display)."""
    out = []
    for block in poller.planner.blocks:
        words = poller.last_words.get((block.function, block.address))
        for p in block.points:
            row: dict[str, Any] = {"quantity": p.quantity.value, "address": p.address, "function": p.code,
                                   "type": p.type, "word_order": p.word_order, "scale": p.scale, "words": None,
                                   "value": None, "other_order": None, "every_way": {}}
            if words is not None and len(words) == block.count:
                off = p.address - block.address
                row["words"] = [f"0x{w:04X}" for w in words[off:off + p.width]]
                data = registers_to_bytes(words)
                row["value"] = decoder(p)(data, 2 * off)
                if p.width > 1:
                    other = replace(p, word_order="little" if p.word_order == "big" else "big")
                    row["other_order"] = decoder(other)(data, 2 * off)
                for t, o in EVERY_WAY[p.width]:
                    raw = replace(p, type=t, word_order=o, scale=1.0, offset=0.0, not_available=frozenset())
                    row["every_way"][f"{t} {o}" if p.width > 1 else t] = decoder(raw)(data, 2 * off)
            out.append(row)
    return out


def render_raw(r: ReadResult) -> list[str]:
    """``read --raw``: per value, its words, the value as configured, and the words read every other way."""
    lines = [f"  {'QUANTITY':<22} {'REGISTER':<16} {'WORDS':<28} {'AS CONFIGURED':>16}  THE SAME WORDS READ AS"]
    for row in r.rows:
        where = f"{'FC3' if row['function'] == 3 else 'FC4'} 0x{row['address']:04X} ({row['address']})"
        if row["words"] is None:
            lines.append(f"  {row['quantity']:<22} {where:<16} (no answer)")
            continue
        configured = f"{row['value']!r}" if row["value"] is not None else "n/a"
        mine = f"{row['type']} {row['word_order']}" if len(row["words"]) > 1 else row["type"]
        ways = "; ".join(f"{k}{' *' if k == mine else ''} {_short(v)}" for k, v in row["every_way"].items())
        lines.append(f"  {row['quantity']:<22} {where:<16} {' '.join(row['words']):<28} {configured:>16}  {ways}")
    lines.append("  (* the profile's type and word order, before its scale; n/a: NaN, infinite or 'not available')")
    return lines


def _short(v: float | None) -> str:
    """Every digit a display could show (integers whole, floats as decoded); absurd magnitudes in short."""
    if v is None:
        return "n/a"
    if abs(v) >= 1e15:
        return f"{v:.3e}"
    return str(int(v)) if v.is_integer() else repr(v)


def render_read(results: Sequence[ReadResult], config: GatewayConfig, raw: bool = False) -> str:
    buses = {b.name: b for b in config.buses}
    lines: list[str] = []
    for r in results:
        m = r.meter
        head = f"{m.name}  ({m.model}, unit {m.unit} on {m.bus}: {bus_where(buses[m.bus])})"
        if r.reading is None:
            lines.append(f"{head}: no reading")
        else:
            lines.append(f"{head}: read at {iso_utc(r.reading.ts_ms)} in {r.seconds:.2f}s, {r.requests} request"
                         f"{'s' if r.requests != 1 else ''}")
            lines += format_values(dict(r.reading.values), m.value_unit)
        if r.device:
            lines.append(f"  ({r.device})")
        if raw and r.rows:
            lines += ["", *render_raw(r)]
        lines += [f"  ! {p}" for p in r.problems]
        lines.append("")
    return "\n".join(lines).rstrip()


# ---------------------------------------------------------------- plans, profiles


def describe_plan(meter: ModbusMeterConfig, bus: BusBase) -> list[str]:
    if meter.sunspec:
        model = f"model {meter.sunspec_model}" if meter.sunspec_model else (
            "its first meter model (201-204, 211-214), else its first inverter model (101-103, 111-113)")
        return ["SunSpec: registers discovered from the device when it is first read (the 'SunS' marker at 40000,"
                f" 50000 or 0, then its model chain); reads {model} in one request; 'meter-gateway read' and 'scan'"
                " show what it is"]
    max_gap = meter.effective_max_gap(bus)
    blocks = plan(meter.points, max_gap)
    n = len(blocks)
    v = len(meter.points)
    out = [f"{n} request{'s' if n != 1 else ''} per poll for {v} value{'s' if v != 1 else ''}"
           f" (reading across gaps of up to {max_gap} registers):"]
    return out + [f"  {b.describe()}" for b in blocks]


def describe_bus(bus: BusBase) -> str:
    extra = ""
    if isinstance(bus, SerialLine):
        extra = f", gap {format_duration(bus.gap)}"
    if isinstance(bus, TcpBus) and bus.max_parallel > 1:
        extra = f", {bus.max_parallel} requests in parallel"
    return f"{bus.type} {bus_where(bus)}, timeout {format_duration(bus.timeout)}{extra}"


# ---------------------------------------------------------------- scan


def parse_units(spec: str, what: str = "units") -> list[int]:
    """Unit ids from ``1-247``, ``1-10``, ``1,2,5``, or ``sunspec`` (the ids SunSpec devices answer at out of the box:
    1, 2, 126, 200-204, 240)."""
    if spec.strip().lower() == sunspec.SUNSPEC:
        return list(sunspec.INSTALLER_UNITS)
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise GatewayError(f"{what} {spec!r}: expected numbers and ranges such as 1-247 or 1,2,5")
        out += list(range(int(lo), int(hi or lo) + 1))
    if not out or not all(0 <= u <= 255 for u in out):
        raise GatewayError(f"{what} {spec!r}: unit ids are 0 to 255 (1 to 247 on a serial line)")
    return out


@dataclass
class ScanHit:
    unit: int
    fits: list[tuple[str, dict[Quantity, float]]]
    #: profile name -> the models it reads ("Eastron SDM630, also SDM630MCT, Kostal KEM-P, ..."), for the label
    titles: dict[str, str] = field(default_factory=dict)
    #: The serial number and firmware where the first profile knows their registers.
    identity: dict[str, str] = field(default_factory=dict)


async def scan(bus_cfg: BusBase, units: Sequence[int], profiles: dict[str, Profile],
               progress: Any = None) -> list[ScanHit]:
    """Which units answer on the line, and which profiles fit each (their probe values are plausible)."""
    if isinstance(bus_cfg, SerialBus) and (busy := serial_port_busy(bus_cfg.port)):
        raise GatewayError(busy)
    bus = Bus(bus_cfg)
    hits: list[ScanHit] = []
    probes = {name: probe_plan(p) for name, p in profiles.items()}
    try:
        for unit in units:
            if progress is not None:
                progress(unit)
            if not await _answers(bus, unit, probes):
                continue
            found = await _sunspec_at(bus, unit)
            if found is not None:
                device, shown = found
                hits.append(ScanHit(unit, [(sunspec.SUNSPEC, shown)], {sunspec.SUNSPEC: device.describe()},
                                    device.identity))
                continue
            fits: list[tuple[tuple[int, float], str, dict[Quantity, float]]] = []
            for name, (blocks, ranges) in probes.items():
                values = await _probe(bus, unit, blocks)
                if values is not None and all(q in values and lo <= values[q] <= hi for q, (lo, hi) in ranges.items()):
                    # Models of one family share their probe registers: the one whose map the meter answers best
                    # comes first (a meter refuses registers it does not have): the most values, then, between
                    # two that read as many, the one with the smaller share of its map refused (a sibling whose map
                    # is a superset reads the same values but has more refused).
                    read = await _values_read(bus, unit, profiles[name])
                    fits.append(((read, read / len(profiles[name].points)), name, values))
            fits.sort(key=lambda f: (-f[0][0], -f[0][1]))
            identity = await read_identity(bus, unit, profiles[fits[0][1]]) if fits else {}
            hits.append(ScanHit(unit, [(name, values) for _, name, values in fits],
                                {name: _models(profiles[name]) for _, name, _ in fits}, identity))
    finally:
        bus.close()
    return hits


async def _sunspec_at(bus: Bus, unit: int) -> tuple[sunspec.Device, dict[Quantity, float]] | None:
    """A SunSpec device at ``unit``: what it is, and a few of its values (None if it is not one)."""
    from gateway.platforms.modbus.source import SunSpecPoller

    meter = ModbusMeterConfig.model_validate({"name": "scan", "type": "modbus", "bus": bus.name, "unit": unit,
                                             "profile": sunspec.SUNSPEC})
    poller = SunSpecPoller(meter, bus, report_health=False)
    reading = await poller.poll()
    if poller.device is None:
        return None
    shown = (Quantity.VOLTAGE_L1, Quantity.FREQUENCY, Quantity.POWER_ACTIVE_TOTAL, Quantity.ENERGY_IMPORT_TOTAL,
             Quantity.ENERGY_EXPORT_TOTAL)
    values = {q: v for q, v in (reading.values if reading else {}).items() if q in shown}
    return poller.device, values


def _models(p: Profile) -> str:
    return p.title + (f"; also sold as {', '.join(p.spec.aliases)}" if p.spec.aliases else "")


async def _answers(bus: Bus, unit: int, probes: dict[str, tuple[list[Block], Any]]) -> bool:
    """Anything at all from ``unit`` (values or an exception reply) means a device is there."""
    tried: set[tuple[int, int, int]] = set()
    for blocks, _ in probes.values():
        block = blocks[0]
        key = (block.code, block.address, block.count)
        if key in tried:
            continue
        tried.add(key)
        try:
            await bus.read(unit, block)
            return True
        except ModbusBusError:
            raise
        except ModbusError as e:
            if e.kind in ("exception", "bad_answer"):
                return True
        if len(tried) >= 2:  # two silences: nobody there (keeps a full scan of 247 units short)
            return False
    return False


async def _values_read(bus: Bus, unit: int, profile: Profile) -> int:
    from gateway.platforms.modbus.source import MeterPoller

    meter = meter_for(profile, name="scan", unit=unit, bus=bus.name)
    reading = await MeterPoller(meter, bus, report_health=False).poll()
    return 0 if reading is None else len(reading.values)


async def _probe(bus: Bus, unit: int, blocks: list[Block]) -> dict[Quantity, float] | None:
    """The probe values, or None when a read fails (the device is not of that model); a bus down raises."""
    try:
        return await read_blocks(bus, unit, blocks)
    except ModbusBusError:
        raise
    except ModbusError:
        return None


def render_scan(hits: Sequence[ScanHit], bus_cfg: BusBase, scanned: int) -> str:
    if not hits:
        return (f"no unit answered on {bus_where(bus_cfg)} ({scanned} unit ids tried, timeout"
                f" {format_duration(bus_cfg.timeout)}): check wiring (A/B swapped?), baud rate and parity")
    lines: list[str] = []
    for h in hits:
        if h.fits:
            name, values = h.fits[0]
            shown = ", ".join(f"{q.value}={v:.4g}{unit_label(q, None) and ' ' + unit_label(q, None)}"
                              for q, v in sorted(values.items(), key=lambda kv: CODE[kv[0]]))
            others = [f[0] for f in h.fits[1:]]
            alike = f" (also fits: {', '.join(others)}: check the model on the label)" if others else ""
            known = h.titles.get(name, "")
            ident = "".join(f", {k} {v}" for k, v in h.identity.items())
            lines.append(f"unit {h.unit}: answers; fits {name}{known and f' ({known})'}{alike}{ident}; {shown}")
        else:
            lines.append(f"unit {h.unit}: answers, but no built-in profile fits: give its registers inline")
    lines += ["", "Configuration lines to paste (rename the meters):", "buses:", f"  - {_bus_line(bus_cfg)}",
              "meters:"]
    for h in hits:
        profile = h.fits[0][0] if h.fits else "TODO-registers"
        lines.append(f"  - {{name: meter-{h.unit}, type: modbus, bus: {bus_cfg.name}, unit: {h.unit},"
                     f" profile: {profile}, interval: 1m}}")
    return "\n".join(lines)


def _bus_line(b: BusBase) -> str:
    if isinstance(b, SerialBus):
        return (f"{{name: {b.name}, type: serial, port: {b.port}, baudrate: {b.baudrate}, parity: {b.parity},"
                f" stopbits: {b.stopbits}}}")
    assert isinstance(b, TcpBus | RtuOverTcpBus)
    return f"{{name: {b.name}, type: {b.type}, host: {b.host}, port: {b.port}}}"

