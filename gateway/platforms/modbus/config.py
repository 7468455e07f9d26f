"""Configuration of Modbus buses, Modbus meters, registers and meter profile files.

A bus is one physical line: a serial port (RS-485 adapter), a Modbus TCP device or gateway, or an RTU-over-TCP
converter (RTU framing carried over a TCP socket, so still one request at a time on the RS-485 side).
A meter sits on a bus at a unit id and is described by a profile (one YAML file per meter model, in
``gateway/profiles/`` or ``profiles_dir``) and/or registers written inline for a one-off device.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PrivateAttr

from gateway.config.common import (
    Duration,
    MeterBase,
    Name,
    PositiveDuration,
    QuantityName,
    Strict,
    check_value_unit,
    nonzero,
)
from gateway.platforms.modbus.registers import WIDTH, Function, Point, RegisterType, WordOrder
from gateway.quantities import Quantity

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig

#: Modbus RTU unit ids for a device on a serial line (0 is broadcast, 248-255 reserved).
SERIAL_UNITS = range(1, 248)
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
#: Default silence between two frames on a serial line: the 3.5 characters RTU requires at 9600 baud are 4 ms;
#: many meters and USB adapters need more before they listen again.
DEFAULT_GAP = 0.020
#: What one more request costs, in registers, on TCP: a round trip outweighs 64 registers' 128 bytes on a LAN.
TCP_MAX_GAP = 64




def _sentinels(value: object) -> object:
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value




class RegisterDefaults(Strict):
    function: Function | None = None
    type: RegisterType | None = None
    word_order: WordOrder = "big"


class RegisterSpec(Strict):
    """One register as written in a profile or inline: where a quantity is and how to decode it."""

    quantity: QuantityName
    #: 0-based protocol address (what goes on the wire), not the 3xxxx/4xxxx "register number" of some manuals.
    address: Annotated[int, Field(ge=0, le=65535)]
    function: Function | None = None
    type: RegisterType | None = None
    word_order: WordOrder | None = None
    scale: Annotated[float, AfterValidator(nonzero)] = 1.0
    offset: float = 0.0
    #: Raw patterns (the register's words as one unsigned number) meaning "not available", e.g. 0xFFFFFFFF.
    not_available: Annotated[list[Annotated[int, Field(ge=0)]], BeforeValidator(_sentinels)] = Field(
        default_factory=list)
    #: The manual's name for the register, for people reading the profile.
    note: str | None = None

    def resolve(self, defaults: RegisterDefaults) -> tuple[Point | None, list[tuple[tuple[str, ...], str]]]:
        """The register with defaults applied, or the problems (key, message) that stop that."""
        function = self.function or defaults.function
        type_ = self.type or defaults.type
        problems: list[tuple[tuple[str, ...], str]] = []
        if function is None:
            problems.append((("function",), "required key is missing (input or holding; no default for it here)"))
        if type_ is None:
            problems.append((("type",), "required key is missing (int16, uint16, int32, uint32, int64, uint64,"
                                        " float32 or float64; no default for it here)"))
        if function is None or type_ is None:
            return None, problems
        width = WIDTH[type_]
        if self.address + width > 65536:
            problems.append((("address",), f"{self.address} + {width} registers of {type_} runs past 65535"))
        for s in self.not_available:
            if s >= 1 << (16 * width):
                problems.append((("not_available",), f"0x{s:X} does not fit in {type_} ({16 * width} bits)"))
        if problems:
            return None, problems
        return Point(self.quantity, self.address, function, type_, self.word_order or defaults.word_order,
                     self.scale, self.offset, frozenset(self.not_available)), []


class ProbeSpec(Strict):
    """A value that tells whether a meter of this model answers at a unit id: plausible within [min, max]."""

    quantity: QuantityName
    min: float
    max: float


class IdentityRegister(Strict):
    """A register telling the device apart (serial number, firmware version): shown by ``scan``."""

    address: Annotated[int, Field(ge=0, le=65535)]
    function: Function = "holding"
    type: RegisterType
    word_order: WordOrder = "big"
    note: str | None = None


class Identity(Strict):
    serial_number: IdentityRegister | None = None
    firmware: IdentityRegister | None = None


class Code(Strict):
    """A setting's value and the number the meter stores for it (baud rate 19200 is code 3)."""

    rate: int
    code: int


class SettingRegister(Strict):
    """A holding register the technician may write over Modbus (function 16), in the meter's own encoding."""

    address: Annotated[int, Field(ge=0, le=65535)]
    type: RegisterType
    word_order: WordOrder = "big"
    #: The number written for each value (a baud rate's code), where the meter does not take the value itself.
    codes: list[Code] | None = None
    note: str | None = None

    def encoded(self, value: int) -> int | None:
        """What to write for ``value`` (None: the meter has no code for it)."""
        if self.codes is None:
            return value
        return next((c.code for c in self.codes if c.rate == value), None)


class Settings(Strict):
    #: The meter's Modbus unit id (its "address", "meter id", "node").
    unit: SettingRegister | None = None
    baudrate: SettingRegister | None = None


class ProfileFile(Strict):
    """A meter model's register map (one YAML file in gateway/profiles/ or profiles_dir)."""

    manufacturer: str
    model: str
    #: Other names of the same device (rebadges, sibling models with this very map): 'profiles' and 'scan' find the
    #: profile under them; a configuration naming one is told which profile to write.
    aliases: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    #: The vendor document this map follows (title, version, where to get it): cite it.
    manual: str
    #: What else it was checked against.
    checked: str | None = None
    kind: Literal["three_phase", "single_phase", "value"]
    value_unit: Annotated[str, AfterValidator(check_value_unit)] | None = None
    defaults: RegisterDefaults = Field(default_factory=RegisterDefaults)
    probe: Annotated[list[ProbeSpec], Field(min_length=1)]
    registers: Annotated[list[RegisterSpec], Field(min_length=1)]
    #: Registers that tell one device from another (shown by 'scan').
    identity: Identity = Field(default_factory=Identity)
    #: Settings a technician may change over Modbus ('set-address', 'set-baudrate').
    settings: Settings = Field(default_factory=Settings)

    def cross_check(self) -> list[tuple[tuple[str | int, ...], str]]:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.kind == "value" and self.value_unit is None:
            problems.append((("value_unit",), "required for kind: value (the unit of the value, e.g. m3, degC)"))
        problems += _duplicate_quantities(self.registers)
        seen = {plain_name(self.model)}
        for i, alias in enumerate(self.aliases):
            if plain_name(alias) in seen:
                problems.append((("aliases", i), f"'{alias}' is already a name of this profile"))
            seen.add(plain_name(alias))
        known = {r.quantity for r in self.registers}
        for i, p in enumerate(self.probe):
            if p.quantity not in known:
                problems.append((("probe", i, "quantity"), f"'{p.quantity.value}' has no register in this profile"))
            if p.min >= p.max:
                problems.append((("probe", i, "max"), f"{p.max:g} is not above min {p.min:g}"))
        for i, r in enumerate(self.registers):
            problems += [(("registers", i, *k), m) for k, m in r.resolve(self.defaults)[1]]
        baud = self.settings.baudrate
        if baud is not None and baud.codes is not None:
            odd = sorted({c.rate for c in baud.codes} - set(BAUDRATES))
            if odd:
                rates = ", ".join(map(str, BAUDRATES))
                problems.append((("settings", "baudrate", "codes"),
                                 f"{', '.join(map(str, odd))} is not a standard rate ({rates})"))
        return problems


def plain_name(name: str) -> str:
    """A model name as a technician may type it: case, spaces, dashes, dots and underscores do not matter."""
    return "".join(c for c in name.lower() if c.isalnum())


def _duplicate_quantities(registers: list[RegisterSpec]) -> list[tuple[tuple[str | int, ...], str]]:
    seen: dict[Quantity, int] = {}
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for i, r in enumerate(registers):
        if r.quantity in seen:
            problems.append((("registers", i, "quantity"),
                             f"'{r.quantity.value}' is already read by registers[{seen[r.quantity]}]"))
        seen.setdefault(r.quantity, i)
    return problems


# ---------------------------------------------------------------- buses


class BusBase(Strict):
    name: Name
    type: str
    #: A request without an answer by then counts as a timeout of that meter (a meter's own ``timeout`` wins).
    timeout: PositiveDuration = 1.0
    #: A meter that does not answer is tried again at its next tick, then less and less often, up to this.
    retry_cap: PositiveDuration = 60.0
    #: Silence after the line is (re)opened or the converter (re)connected, before the first request: some USB
    #: adapters and serial servers drop the first frame sent too soon.
    connect_pause: Duration = 0.0

    @property
    def serialised(self) -> bool:
        """One request at a time with a silence between frames (a serial line, at the end of the wire)."""
        return True

    def default_max_gap(self) -> int:
        return TCP_MAX_GAP


class SerialLine(BusBase):
    """A bus at the end of which is an RS-485 line: one request at a time, a silence between frames."""

    baudrate: int = 9600
    gap: Duration = DEFAULT_GAP

    def char_time(self) -> float:
        """Seconds one character takes on the line (11 bits: start, 8 data, parity or 2nd stop, stop)."""
        return 11 / self.baudrate

    def default_max_gap(self) -> int:
        # One more request costs 8 + 5 bytes of frames, two 3.5-character silences, the gap and a meter's
        # turnaround (~10 ms): read across a gap when its registers (2 bytes each) cost less.
        chars = 20 + (self.gap + 0.010) / self.char_time()
        return max(1, round(chars / 2))

    def timing_problems(self) -> list[tuple[tuple[str, ...], str]]:
        problems: list[tuple[tuple[str, ...], str]] = []
        if self.baudrate not in BAUDRATES:
            problems.append((("baudrate",), f"{self.baudrate} is not a standard rate"
                                            f" (expected one of: {', '.join(map(str, BAUDRATES))})"))
            return problems
        least = max(3.5 * self.char_time(), 0.00175)
        if self.gap < least:
            problems.append((("gap",), f"{self.gap * 1000:g}ms is shorter than the 3.5-character silence Modbus RTU"
                                       f" requires at {self.baudrate} baud ({least * 1000:.2f}ms)"))
        return problems


class SerialBus(SerialLine):
    """An RS-485 line on a serial port (a USB adapter, a HAT): one request at a time."""

    type: Literal["serial"]
    port: Annotated[str, Field(min_length=1)]
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


class RtuOverTcpBus(SerialLine):
    """An RS-485 line behind a serial-to-TCP converter: RTU frames over TCP, still one request at a time.

    ``baudrate`` is the converter's serial side; it sets the default for reading across gaps and the least gap.
    """

    type: Literal["rtu_over_tcp"]
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 502


class TcpBus(BusBase):
    """A Modbus TCP device or gateway. ``max_parallel`` connections carry requests at the same time."""

    type: Literal["tcp"]
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    timeout: PositiveDuration = 2.0
    max_parallel: Annotated[int, Field(ge=1, le=8)] = 1

    @property
    def serialised(self) -> bool:
        return False


BusConfig = Annotated[SerialBus | TcpBus | RtuOverTcpBus, Field(discriminator="type")]


def bus_where(bus: BusBase) -> str:
    if isinstance(bus, SerialBus):
        return f"{bus.port} {bus.baudrate} {bus.bytesize}{bus.parity}{bus.stopbits}"
    if isinstance(bus, RtuOverTcpBus):
        return f"{bus.host}:{bus.port} (RTU over TCP)"
    assert isinstance(bus, TcpBus)
    return f"{bus.host}:{bus.port}"


# ---------------------------------------------------------------- meters


class ModbusMeterConfig(MeterBase):
    """A meter on a Modbus bus, described by a profile and/or inline registers."""

    type: Literal["modbus"]
    bus: Name
    #: Unit id (slave address): 1-247 on a serial line; 0-255 on TCP (many TCP devices answer to 1, 0 or 255).
    unit: Annotated[int, Field(ge=0, le=255)]
    profile: Annotated[str, Field(min_length=1)] | None = None
    #: Registers of a one-off device, or added to (and overriding, per quantity) the profile's.
    registers: list[RegisterSpec] = Field(default_factory=list)
    #: Read only these quantities of the profile (fewer registers, fewer requests).
    quantities: list[QuantityName] | None = None
    value_unit: Annotated[str, AfterValidator(check_value_unit)] | None = None
    #: Read across up to this many unused registers rather than send another request; default from the bus.
    max_gap: Annotated[int, Field(ge=0, le=124)] | None = None
    #: This meter's answer timeout (a slow meter longer, the others on a shared line short); default: the bus's.
    timeout: PositiveDuration | None = None
    #: A meter that answered last time and misses is asked again up to this many times at the same tick, after the
    #: meters waiting for the line (a lost frame should not cost a reading; a dead meter is not asked again).
    retries: Annotated[int, Field(ge=0, le=3)] = 1
    #: ``profile: sunspec``: the model of the device's chain to read (default: its first meter model, else its first
    #: inverter model).
    sunspec_model: Annotated[int, Field(ge=101, le=214)] | None = None

    #: Every register resolved (profile, inline, quantities filter): set when the file is loaded.
    _points: tuple[Point, ...] = PrivateAttr(default=())

    @property
    def points(self) -> tuple[Point, ...]:
        return self._points

    @property
    def model(self) -> str:
        return self.profile or "inline registers"

    def describe(self) -> str:
        return f"unit {self.unit} on {self.bus}"

    def resolved(self, points: tuple[Point, ...], value_unit: str | None) -> ModbusMeterConfig:
        out = self.model_copy(update={"value_unit": self.value_unit or value_unit})
        out._points = points
        return out

    @property
    def sunspec(self) -> bool:
        """A SunSpec device: its registers are discovered from the device, not listed."""
        return self.profile == "sunspec"

    def offered_quantities(self, gateway: GatewayConfig) -> frozenset[Quantity] | None:
        if self.sunspec:
            return None  # known once the device is discovered
        return frozenset(p.quantity for p in self.points)

    def effective_max_gap(self, bus: BusBase) -> int:
        return self.max_gap if self.max_gap is not None else bus.default_max_gap()

    def effective_timeout(self, bus: BusBase) -> float:
        return self.timeout if self.timeout is not None else bus.timeout


def meter_problems(meter: ModbusMeterConfig, buses: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    problems: list[tuple[tuple[str | int, ...], str]] = []
    bus = buses.get(meter.bus)
    if bus is None:
        close = difflib.get_close_matches(meter.bus, list(buses), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        defined = ", ".join(sorted(buses)) or "none: add a buses: section"
        problems.append((("bus",), f"no bus named '{meter.bus}' ({hint}defined: {defined})"))
    elif bus.serialised and meter.unit not in SERIAL_UNITS:
        problems.append((("unit",), f"{meter.unit} is not a unit id on a serial line (expected 1 to 247)"))
    if meter.sunspec and meter.registers:
        problems.append((("registers",), "a SunSpec device describes its own registers: no inline registers with"
                                         " profile: sunspec (use another profile, or none, for inline registers)"))
    if meter.sunspec_model is not None and not meter.sunspec:
        problems.append((("sunspec_model",), "only for profile: sunspec"))
    if meter.profile is None and not meter.registers:
        problems.append((("profile",), "give a profile (see 'meter-gateway profiles') or registers, or both"))
    problems += _duplicate_quantities(meter.registers)
    return problems
