"""Simulated Modbus meters served by pymodbus: the demo's meters and the tests' peers.

A :class:`SimMeter` holds a profile's registers and answers with the values a function of time gives, encoded by
pymodbus' own codec (``convert_to_registers``), not by the gateway's decoder, so a test that reads them back checks
one implementation against another. Gaps between registers answer zeros (as most meters do) or, with
``holes=True``, "illegal data address" (as some do).

:class:`MeterServer` serves meters on Modbus TCP, RTU over TCP, or a serial port (one end of a pseudo-terminal pair in
tests), and injects the faults a real bus has: a unit that does not answer (at all, or from one register on),
exception replies (for the whole unit, or for reads covering one register), answers with too few registers, RTU
answers with a broken CRC, and the lies of a bad device or gateway: an answer for the other function code, a byte
count beyond the data.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.platforms.modbus.config import ProfileFile
from gateway.platforms.modbus.registers import Point, WordOrder
from gateway.quantities import Quantity

Values = Callable[[float], Mapping[Quantity, float]]
_DT: Any = ModbusClientMixin.DATATYPE


def encode(point: Point, value: float) -> list[int]:
    """The words a meter holds for ``value`` at ``point``; NaN becomes the point's "not available" pattern."""
    if math.isnan(value) and point.not_available:
        pattern = min(point.not_available)
        return [(pattern >> (16 * i)) & 0xFFFF for i in reversed(range(point.width))][
            :: 1 if point.word_order == "big" else -1]
    raw = (value - point.offset) / point.scale
    dt = _DT[point.type.upper()]
    if point.type.startswith("float"):
        return ModbusClientMixin.convert_to_registers(raw, dt, word_order=point.word_order)
    return ModbusClientMixin.convert_to_registers(round(raw), dt, word_order=point.word_order)


#: Seconds between a baud rate write's answer and the line changing speed.
SWITCH_AFTER = 0.02


class SimMeter:
    """One simulated device at ``unit`` holding ``points``, answering ``values(now)``."""

    def __init__(
        self, unit: int, points: Sequence[Point], values: Values | Mapping[Quantity, float], *, holes: bool = False,
        clock: Callable[[], float] = time.time, delay: float = 0.0, profile: ProfileFile | None = None,
        serial: int = 0, baudrate: int = 9600, switches_rate: bool = True,
    ) -> None:
        self.unit = unit
        #: The profile's identity and settings registers: a serial number to read, a unit id and a baud rate code
        #: to write (the unit id takes effect after the answer, as Eastron meters do).
        self.profile = profile
        self.serial = serial
        self.baudrate = baudrate
        #: The baud rate code last written, if any.
        self.baud_code_written: int | None = None
        #: A written baud rate is taken at once, after the answer (on a serial line, the server's port changes
        #: speed: :meth:`MeterServer.switch_rate`); False: only after a restart, as some meters do.
        self.switches_rate = switches_rate
        #: Seconds each answer takes (a slow meter, or a slow gateway in front of it).
        self.delay = delay
        self.points = tuple(points)
        if callable(values):
            self.values: Values = values
        else:
            fixed = dict(values)
            self.values = lambda _t: fixed
        self.holes = holes
        self.clock = clock
        #: What the meter held at its last answer, per quantity: what a reader should have got.
        self.served: dict[Quantity, float] = {}
        self.reads = 0

    def device(self) -> SimDevice:
        blocks: dict[str, list[SimData]] = {"holding": [], "input": []}
        for function in blocks:
            pts = sorted((p for p in self.points if p.function == function), key=lambda p: p.address)
            if not pts:
                blocks[function] = [SimData(0, count=1, datatype=DataType.INVALID)]
            elif self.holes:
                blocks[function] = [SimData(p.address, values=[0] * p.width, datatype=DataType.REGISTERS)
                                    for p in _distinct(pts)]
            else:
                start, end = pts[0].address, max(p.end for p in pts)
                blocks[function] = [SimData(start, values=[0] * (end - start), datatype=DataType.REGISTERS)]
        blocks["holding"] = [b for b in blocks["holding"] if b.datatype != DataType.INVALID] + self._admin_blocks()
        if not blocks["holding"]:
            blocks["holding"] = [SimData(0, count=1, datatype=DataType.INVALID)]
        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        return SimDevice(self.unit, simdata=(bits, list(bits), blocks["holding"], blocks["input"]),
                         action=self._refresh)

    def _admin_blocks(self) -> list[SimData]:
        """The identity and settings registers of the profile, holding the serial number, unit id and baud code."""
        if self.profile is None:
            return []
        out = []
        ident, settings = self.profile.identity, self.profile.settings
        if ident.serial_number is not None:
            out.append(SimData(ident.serial_number.address, datatype=DataType.REGISTERS,
                               values=_words(ident.serial_number.type, ident.serial_number.word_order, self.serial)))
        if settings.unit is not None:
            out.append(SimData(settings.unit.address, datatype=DataType.REGISTERS,
                               values=_words(settings.unit.type, settings.unit.word_order, self.unit)))
        if settings.baudrate is not None:
            code = settings.baudrate.encoded(self.baudrate) or 0
            out.append(SimData(settings.baudrate.address, datatype=DataType.REGISTERS,
                               values=_words(settings.baudrate.type, settings.baudrate.word_order, code)))
        return sorted(out, key=lambda b: b.address)

    def written(self, address: int, words: list[int]) -> int | None:
        """A write to a settings register: the new unit id if it was the unit register (None otherwise); a write
        elsewhere is refused with "illegal data address" (as meters refuse writes to measurements)."""
        settings = self.profile.settings if self.profile is not None else None
        for reg, what in ((settings.unit, "unit"), (settings.baudrate, "baud")) if settings else ():
            if reg is not None and reg.address == address:
                value = int(_value(reg.type, reg.word_order, words))
                if what == "unit":
                    return value
                self.baud_code_written = value
                rate = next((c.rate for c in reg.codes or [] if c.code == value), value if reg.codes is None else None)
                if rate is not None and self.switches_rate:
                    self.baudrate = rate
                return None
        raise ValueError(f"0x{address:04X} is not a setting")

    async def _refresh(
        self, function_code: int, start_address: int, address: int, count: int, registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self.delay:
            await asyncio.sleep(self.delay)
        function = "holding" if function_code == 3 else "input"
        now = self.values(self.clock())
        self.reads += 1
        for p in self.points:
            if p.function != function or p.quantity not in now:
                continue
            words = encode(p, now[p.quantity])
            at = p.address - start_address
            if at >= 0 and at + len(words) <= len(registers):
                registers[at: at + len(words)] = words
                if address <= p.address and p.end <= address + count:
                    self.served[p.quantity] = now[p.quantity]
        return None


def _words(type_: str, word_order: WordOrder, value: float) -> list[int]:
    dt = _DT[type_.upper()]
    v = float(value) if type_.startswith("float") else int(value)
    return list(ModbusClientMixin.convert_to_registers(v, dt, word_order=word_order))


def _value(type_: str, word_order: WordOrder, words: list[int]) -> float:
    value = ModbusClientMixin.convert_from_registers(words, _DT[type_.upper()], word_order=word_order)
    assert isinstance(value, int | float)
    return float(value)


def _distinct(points: Sequence[Point]) -> list[Point]:
    out: list[Point] = []
    for p in points:
        if not out or p.address >= out[-1].end:
            out.append(p)
    return out


class _FaultyContext:
    """The server's datastore, with per-unit faults in front of it."""

    def __init__(self, inner: Any, server: MeterServer) -> None:
        self.inner = inner
        self.server = server

    async def async_setValues(self, device_id: int, func_code: int, address: int, values: list[int]) -> Any:
        s = self.server
        original = s.renumbered.get(device_id, device_id)
        if device_id in s.silent or device_id in s.moved or original not in s.units:
            raise NoSuchIdException(f"unit {device_id} is silent")
        if device_id in s.exceptions:
            s.exception_replies[device_id] += 1
            return ExcCodes(s.exceptions[device_id])
        meter = s.meters[original]
        rate = meter.baudrate if isinstance(meter, SimMeter) else None
        try:
            new_unit = meter.written(address, list(values))
        except ValueError:
            return ExcCodes.ILLEGAL_ADDRESS
        if isinstance(meter, SimMeter) and meter.baudrate != rate:
            # The answer goes out at the old rate; the line changes speed right after it.
            asyncio.get_running_loop().call_later(SWITCH_AFTER, s.switch_rate, meter.baudrate)
        if new_unit is not None and new_unit != device_id:
            # Answered at the old id (this write's answer), then only at the new one.
            s.renumbered[new_unit] = original
            s.moved.add(device_id)
            s.moved.discard(new_unit)
        return await self.inner.async_setValues(original, func_code, address, values)

    async def async_getValues(self, device_id: int, func_code: int, address: int, count: int = 1) -> Any:
        s = self.server
        if device_id in s.moved:
            raise NoSuchIdException(f"unit {device_id} was renumbered")
        device_id = s.renumbered.get(device_id, device_id)
        if device_id in s.silent or device_id not in s.units:
            raise NoSuchIdException(f"unit {device_id} is silent")  # ignore_missing_devices: no answer at all
        if device_id in s.exceptions:
            s.exception_replies[device_id] += 1
            return ExcCodes(s.exceptions[device_id])
        for (unit, at), fault in s.faults_at.items():
            if unit == device_id and address <= at < address + count:
                if fault == "silent":
                    raise NoSuchIdException(f"unit {device_id} stops answering at {at}")
                s.exception_replies[device_id] += 1
                return ExcCodes(fault)
        return await self.inner.async_getValues(device_id, func_code, address, count)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class MeterServer:
    """Simulated meters on one Modbus server: TCP (``framer="socket"``), RTU over TCP (``"rtu"``) or a serial port."""

    def __init__(self, meters: Sequence[SimMeter | SunSpecSim]) -> None:
        self.meters = {m.unit: m for m in meters}
        self.units = set(self.meters)
        self.silent: set[int] = set()
        self.exceptions: dict[int, int] = {}
        #: Exception replies sent, per unit (what a test compares the gateway's counters with).
        self.exception_replies: Counter[int] = Counter()
        self.short: set[int] = set()
        #: Units whose RTU answers go out with a broken CRC (line noise).
        self.corrupt: set[int] = set()
        #: (unit, address): a request covering that register gets this exception code, or no answer ("silent").
        self.faults_at: dict[tuple[int, int], int | Literal["silent"]] = {}
        #: Units that answer a read of input registers as if it were of holding registers, and the other way round.
        self.wrong_function: set[int] = set()
        #: Units whose Modbus TCP answers claim more bytes than they carry.
        self.overlong: set[int] = set()
        #: Unit ids given by a write to a meter's unit register -> the meter's first id; and the ids left behind.
        self.renumbered: dict[int, int] = {}
        self.moved: set[int] = set()
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self.port = 0

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending and pdu.dev_id in self.short and getattr(pdu, "registers", None):
            pdu.registers = pdu.registers[:-1]
        if sending and pdu.dev_id in self.wrong_function and pdu.function_code in (3, 4):
            pdu.function_code = 7 - pdu.function_code
        return pdu

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending and self.corrupt and data and data[0] in self.corrupt:
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        return data

    def _trace_tcp(self, sending: bool, data: bytes) -> bytes:
        # MBAP header (7 bytes: transaction, protocol, length, unit), then function and byte count.
        if sending and len(data) > 8 and data[6] in self.overlong and data[7] in (3, 4):
            return data[:8] + bytes([data[8] + 4]) + data[9:]
        return data

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0,
                        framer: Literal["socket", "rtu"] = "socket") -> MeterServer:
        ft = FramerType.SOCKET if framer == "socket" else FramerType.RTU
        server = ModbusTcpServer([m.device() for m in self.meters.values()], framer=ft, address=(host, port),
                                 ignore_missing_devices=True, trace_pdu=self._trace_pdu,
                                 trace_packet=self._trace_tcp if framer == "socket" else self._trace_packet)
        await self._serve(server)
        transport: Any = server.transport
        self.port = transport.sockets[0].getsockname()[1] if port == 0 else port
        return self

    async def start_serial(self, device: str, baudrate: int = 9600) -> MeterServer:
        server = ModbusSerialServer([m.device() for m in self.meters.values()], framer=FramerType.RTU,
                                    port=device, baudrate=baudrate, ignore_missing_devices=True,
                                    trace_pdu=self._trace_pdu, trace_packet=self._trace_packet)
        await self._serve(server)
        return self

    def switch_rate(self, rate: int) -> None:
        """Set the serial port the meters answer on to ``rate`` (a meter that took a new baud rate). Every meter of
        this server shares the port: tests change the rate of a line holding one meter."""
        port = getattr(getattr(self._server, "transport", None), "sync_serial", None)
        if port is not None:
            port.baudrate = rate

    async def _serve(self, server: ModbusTcpServer | ModbusSerialServer) -> None:
        server.context = _FaultyContext(server.context, self)  # type: ignore[assignment]
        await server.serve_forever(background=True)
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None


class SunSpecSim:
    """A SunSpec device (a meter or an inverter) built from the SunSpec Alliance's model definitions: the "SunS"
    marker at ``base``, model 1 naming it, each model of ``models`` with the values given (integers stored with the
    scale factors of ``sf``, default 0), every other point "not implemented", and the end marker."""

    def __init__(self, unit: int, base: int, common: Mapping[str, str],
                 models: Sequence[tuple[int, Mapping[str, float]]], sf: Mapping[str, int] | None = None,
                 length_of: Mapping[int, int] | None = None) -> None:
        self.unit = unit
        self.base = base
        self.common = dict(common)
        self.models = list(models)
        self.sf = dict(sf or {})
        #: A model's length as the device declares it (default: the definition's), to lie about it in tests.
        self.length_of = dict(length_of or {})
        self.words = self._words()

    def _words(self) -> list[int]:
        from gateway.platforms.modbus import sunspec

        out = list(sunspec.MARKER)
        for model_id, values in [(1, {}), *self.models]:
            spec = sunspec.models()[model_id]
            body = [0] * spec.length
            for name, (offset, kind, size, sf_name, _units) in spec.points.items():
                if kind == "string":
                    text = self.common.get(name, "").encode("ascii")[: 2 * size].ljust(2 * size, b"\0")
                    body[offset: offset + size] = [int.from_bytes(text[i: i + 2], "big") for i in range(0, 2 * size, 2)]
                elif kind == "sunssf":
                    body[offset] = self.sf.get(name, 0) & 0xFFFF
                elif kind in ("pad", "bitfield16", "bitfield32", "enum16", "enum32"):
                    continue
                elif name in values:
                    value = values[name]
                    if kind != "float32" and sf_name is not None:
                        sf = self.sf.get(sf_name, 0)
                        value = round(value / 10.0 ** (sf if -10 <= sf <= 10 else 0))  # a lying SF: any raw
                    rtype = {"acc32": "uint32", "acc16": "uint16", "acc64": "uint64"}.get(kind, kind)
                    body[offset: offset + size] = _words(rtype, "big", value)
                else:
                    na = {"int16": [0x8000], "uint16": [0xFFFF], "int32": [0x8000, 0], "uint32": [0xFFFF, 0xFFFF],
                          "acc32": [0, 0], "float32": [0x7FC0, 0]}.get(kind)
                    if na is not None:
                        body[offset: offset + size] = na
            declared = self.length_of.get(model_id, spec.length)
            out += [model_id, declared, *body[:declared]]  # a shorter length declared: the body cut to it
        return [*out, sunspec.END, 0]

    def device(self) -> SimDevice:
        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        holding = [SimData(self.base, values=self.words, datatype=DataType.REGISTERS)]
        inputs = [SimData(0, count=1, datatype=DataType.INVALID)]
        return SimDevice(self.unit, simdata=(bits, list(bits), holding, inputs))

    def written(self, address: int, words: list[int]) -> int | None:
        raise ValueError(f"0x{address:04X} is not a setting")
