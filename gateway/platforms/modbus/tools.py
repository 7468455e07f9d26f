"""Field technicians' tools: ``read`` (one read now), ``scan`` (who answers on a line), ``profiles``, and the
planned requests ``check`` shows. Output is for people: tables with units, and config lines to paste.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.config.models import GatewayConfig
from gateway.config.profiles import Profile, meter_for
from gateway.config.units import format_duration
from gateway.errors import GatewayError, ModbusBusError, ModbusError
from gateway.platforms.modbus.bus import Bus
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
    from gateway.platforms.modbus.source import MeterPoller

    buses = {b.name: b for b in config.buses}

    async def one_bus(bus_cfg: BusBase, ms: list[ModbusMeterConfig]) -> list[ReadResult]:
        if isinstance(bus_cfg, SerialBus) and (busy := serial_port_busy(bus_cfg.port)):
            return [ReadResult(m, None, [busy], 0, 0.0) for m in ms]
        bus = Bus(bus_cfg)
        out = []
        try:
            for m in ms:
                poller = MeterPoller(m, bus, report_health=False)
                before = bus.stats.requests
                t0 = time.monotonic()
                reading = await poller.poll()
                problems = [f"{e.kind}: {e}" for e in poller.last_problems]
                out.append(ReadResult(m, reading, problems, bus.stats.requests - before, time.monotonic() - t0))
        finally:
            bus.close()
        return out

    groups: dict[str, list[ModbusMeterConfig]] = {}
    for m in meters:
        groups.setdefault(m.bus, []).append(m)
    results = await asyncio.gather(*(one_bus(buses[name], ms) for name, ms in groups.items()))
    by_name = {r.meter.name: r for rs in results for r in rs}
    return [by_name[m.name] for m in meters]


def render_read(results: Sequence[ReadResult], config: GatewayConfig) -> str:
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
        lines += [f"  ! {p}" for p in r.problems]
        lines.append("")
    return "\n".join(lines).rstrip()


# ---------------------------------------------------------------- plans, profiles


def describe_plan(meter: ModbusMeterConfig, bus: BusBase) -> list[str]:
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


def render_profiles(profiles: dict[str, Profile]) -> str:
    serial = SerialBus(name="x", type="serial", port="x")
    lines = [f"{'PROFILE':<22} {'MODEL':<34} {'KIND':<13} {'VALUES':>6}  REQUESTS AT 9600 BAUD"]
    for name, p in sorted(profiles.items()):
        n = len(plan(p.points, serial.default_max_gap()))
        lines.append(f"{name:<22} {p.title:<34} {p.spec.kind:<13} {len(p.points):>6}  {n}")
    lines.append("")
    lines.append("'meter-gateway profiles NAME' shows one profile's registers and the manual it follows.")
    return "\n".join(lines)


def render_profile(p: Profile) -> str:
    s = p.spec
    lines = [f"{p.name}: {p.title} ({s.kind})", f"file:    {p.path}", f"manual:  {s.manual}"]
    if s.checked:
        lines.append(f"checked: {s.checked}")
    if s.value_unit:
        lines.append(f"value unit: {s.value_unit}")
    lines += ["", f"{'QUANTITY':<22} {'FUNCTION':<8} {'ADDRESS':>15} {'TYPE':<8} {'WORDS':<6} {'SCALE':>8} UNIT"]
    notes = {r.quantity: r.note for r in s.registers}
    for pt in sorted(p.points, key=lambda x: (x.function, x.address)):
        scale = f"{pt.scale:g}" + (f"{pt.offset:+g}" if pt.offset else "")
        na = " n/a=" + ",".join(f"0x{v:X}" for v in sorted(pt.not_available)) if pt.not_available else ""
        words = pt.word_order if pt.width > 1 else "-"
        unit = unit_label(pt.quantity, s.value_unit)
        note = f"  ({notes[pt.quantity]})" if notes.get(pt.quantity) else ""
        lines.append(f"{pt.quantity.value:<22} {pt.function:<8} {f'0x{pt.address:04X} ({pt.address})':>15}"
                     f" {pt.type:<8} {words:<6} {scale:>8} {unit}{na}{note}")
    return "\n".join(lines)


# ---------------------------------------------------------------- scan


def parse_units(spec: str, what: str = "units") -> list[int]:
    """Unit ids from ``1-247``, ``1-10`` or ``1,2,5``."""
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


async def scan(bus_cfg: BusBase, units: Sequence[int], profiles: dict[str, Profile],
               progress: Any = None) -> list[ScanHit]:
    """Which units answer on the line, and which profiles fit each (their probe values are plausible)."""
    if isinstance(bus_cfg, SerialBus) and (busy := serial_port_busy(bus_cfg.port)):
        raise GatewayError(busy)
    bus = Bus(bus_cfg)
    hits: list[ScanHit] = []
    probes = {name: _probe_blocks(p) for name, p in profiles.items()}
    try:
        for unit in units:
            if progress is not None:
                progress(unit)
            if not await _answers(bus, unit, probes):
                continue
            fits: list[tuple[int, str, dict[Quantity, float]]] = []
            for name, (blocks, ranges) in probes.items():
                values = await _probe(bus, unit, blocks)
                if values is not None and all(q in values and lo <= values[q] <= hi for q, (lo, hi) in ranges.items()):
                    # Models of one family share their probe registers: the one whose whole map the meter answers
                    # best comes first (a meter refuses registers it does not have).
                    fits.append((await _values_read(bus, unit, profiles[name]), name, values))
            fits.sort(key=lambda f: -f[0])
            hits.append(ScanHit(unit, [(name, values) for _, name, values in fits]))
    finally:
        bus.close()
    return hits


def _probe_blocks(p: Profile) -> tuple[list[Block], dict[Quantity, tuple[float, float]]]:
    ranges = {pr.quantity: (pr.min, pr.max) for pr in p.spec.probe}
    return plan([pt for pt in p.points if pt.quantity in ranges], max_gap=0), ranges


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
    values: dict[Quantity, float] = {}
    for b in blocks:
        try:
            values |= b.decode(await bus.read(unit, b))
        except ModbusBusError:
            raise
        except ModbusError:
            return None
    return values


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
            lines.append(f"unit {h.unit}: answers; fits {name}{alike}; {shown}")
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

