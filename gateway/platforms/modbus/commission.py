"""Commissioning a meter over Modbus: its serial number, and changing its unit id or baud rate.

The commands ``set-address`` and ``set-baudrate`` (and, later, the technician's page) call these. A change is made
only when it is safe to make: the profile knows the setting's register; exactly one device answers at the old unit
id (two devices sharing an id garble each other's answers, and a write would go to both); that device is the
profile's model (its probe values are plausible); the new unit id is free. Without ``apply`` nothing is written:
the steps are described. After the write, the change is verified by reading the meter where it should now answer,
and, where the profile knows its serial number, that it is the same meter.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config.profiles import Profile
from gateway.errors import GatewayError, ModbusBadAnswer, ModbusBusError, ModbusError, ModbusTimeout
from gateway.platforms.modbus.bus import Bus, write
from gateway.platforms.modbus.config import (
    BusBase,
    IdentityRegister,
    SerialBus,
    SerialLine,
    SettingRegister,
    bus_where,
)
from gateway.platforms.modbus.plan import Block, plan
from gateway.platforms.modbus.registers import Point, decoder, registers_to_bytes
from gateway.quantities import Quantity

#: Reads of the probe at the old unit id before a change: all must answer, cleanly (a shared id garbles some).
CHECK_READS = 3
#: How long a meter is given to come back where it should answer after a change.
SETTLE_S = 3.0


@dataclass
class Outcome:
    """What was done (or would be), line by line, and whether the change is made and verified."""

    lines: list[str] = field(default_factory=list)
    done: bool = False


async def read_identity(bus: Bus, unit: int, profile: Profile) -> dict[str, str]:
    """The serial number and firmware version where the profile knows their registers (what answers of them)."""
    out: dict[str, str] = {}
    ident = profile.spec.identity
    for what, reg in (("serial", ident.serial_number), ("firmware", ident.firmware)):
        if reg is None:
            continue
        try:
            value = await _read_register(bus, unit, reg)
        except ModbusBusError:
            raise
        except ModbusError:
            continue
        if value is not None:
            out[what] = f"{value:g}" if what == "firmware" else str(int(value))
    return out


async def set_unit(bus_cfg: BusBase, profile: Profile, old: int, new: int, *, apply: bool,
                   say: Callable[[str], None] = lambda _: None) -> Outcome:
    """Give the meter at ``old`` the unit id ``new``."""
    reg = _setting(profile, "unit", "the unit id")
    if old == new:
        raise GatewayError(f"the meter is already at unit {old}")
    if bus_cfg.serialised and not 1 <= new <= 247:
        raise GatewayError(f"{new} is not a unit id on a serial line (expected 1 to 247)")
    words = _encode(reg, new)
    bus = Bus(bus_cfg)
    out = Outcome()
    try:
        identity = await _one_meter_at(bus, old, profile, say)
        out.lines.append(f"unit {old} on {bus_where(bus_cfg)}: one meter answers, {_who(profile, identity)}")
        if await _anyone_at(bus, new, profile):
            raise GatewayError(f"unit {new} is taken: a device answers there already (choose a free unit id;"
                               " 'meter-gateway scan' lists the ones in use)")
        out.lines.append(f"unit {new}: free")
        step = f"write {new} to holding register 0x{reg.address:04X} ({reg.type}) of unit {old}"
        if not apply:
            out.lines += [f"would {step}", "nothing written: run again with --yes to make the change"]
            return out
        say(step)
        await _write(bus, old, reg, words)
        out.lines.append(f"written: {step}")
        await _verify(bus, profile, new, identity, out, f"unit {new}")
        if await _anyone_at(bus, old, profile):
            raise GatewayError(f"a device still answers at unit {old}: was another meter sharing that unit id?")
        out.lines.append(f"unit {old}: no longer answers")
        out.done = True
        return out
    finally:
        bus.close()


async def set_baudrate(bus_cfg: SerialBus, profile: Profile, unit: int, rate: int, *, apply: bool,
                       say: Callable[[str], None] = lambda _: None) -> Outcome:
    """Give the meter at ``unit`` the baud rate ``rate``, then read it at that rate."""
    reg = _setting(profile, "baudrate", "the baud rate")
    code = reg.encoded(rate)
    if code is None:
        known = ", ".join(str(c.rate) for c in sorted(reg.codes or [], key=lambda c: c.rate))
        raise GatewayError(f"a {profile.title} cannot be set to {rate} baud (it knows: {known})")
    if rate == bus_cfg.baudrate:
        raise GatewayError(f"the line is already at {rate} baud")
    bus = Bus(bus_cfg)
    out = Outcome()
    try:
        identity = await _one_meter_at(bus, unit, profile, say)
        out.lines.append(f"unit {unit} at {bus_cfg.baudrate} baud: one meter answers, {_who(profile, identity)}")
        step = f"write code {code} ({rate} baud) to holding register 0x{reg.address:04X} ({reg.type}) of unit {unit}"
        if not apply:
            out.lines += [f"would {step}",
                          f"the other meters on this line stay at {bus_cfg.baudrate} baud: every meter of a line and"
                          " the bus's baudrate must match",
                          "nothing written: run again with --yes to make the change"]
            return out
        say(step)
        await _write(bus, unit, reg, _encode(reg, code))
        out.lines.append(f"written: {step}")
    finally:
        bus.close()
    moved = Bus(bus_cfg.model_copy(update={"baudrate": rate}))
    try:
        await _verify(moved, profile, unit, identity, out, f"unit {unit} at {rate} baud",
                      hint="some meters take a new baud rate only after a restart: power-cycle it, then"
                           f" 'meter-gateway read' with the bus at {rate} baud")
    finally:
        moved.close()
    out.lines.append(f"set the bus's baudrate to {rate} in the configuration (and every meter of this line to it)")
    out.done = True
    return out


# ---------------------------------------------------------------- the checks


def _setting(profile: Profile, key: str, what: str) -> SettingRegister:
    reg: SettingRegister | None = getattr(profile.spec.settings, key)
    if reg is None:
        raise GatewayError(f"profile {profile.name} knows no register for {what}: set it on the meter itself"
                           " (its buttons or display menu)")
    return reg


def _who(profile: Profile, identity: dict[str, str]) -> str:
    return profile.title + (f", serial {identity['serial']}" if "serial" in identity else "")


async def _one_meter_at(bus: Bus, unit: int, profile: Profile, say: Callable[[str], None]) -> dict[str, str]:
    """Exactly one device of the profile's model answers at ``unit``: its identity, or GatewayError why not."""
    say(f"checking unit {unit} ...")
    blocks, ranges = probe_plan(profile)
    serials: set[str] = set()
    identity: dict[str, str] = {}
    for _ in range(CHECK_READS):
        try:
            values = await read_blocks(bus, unit, blocks)
        except ModbusTimeout:
            raise GatewayError(f"no meter answers at unit {unit} (check the unit id, the wiring and the line's"
                               " baud rate and parity)") from None
        except ModbusBadAnswer as e:
            raise GatewayError(f"answers at unit {unit} are garbled ({e}): two devices may share this unit id;"
                               " disconnect all but one, or set the id on the meter itself") from None
        except ModbusBusError:
            raise
        except ModbusError as e:
            raise GatewayError(f"the device at unit {unit} does not read as a {profile.title}: {e}") from None
        wrong = [f"{q.value}={v:g}" for q, v in values.items() if not ranges[q][0] <= v <= ranges[q][1]]
        if wrong or set(values) != set(ranges):
            raise GatewayError(f"the device at unit {unit} does not read as a {profile.title}"
                               f" ({', '.join(wrong) or 'values missing'}): check the profile")
        identity = await read_identity(bus, unit, profile)
        if "serial" in identity:
            serials.add(identity["serial"])
    if len(serials) > 1:
        raise GatewayError(f"two serial numbers answer at unit {unit} ({', '.join(sorted(serials))}): two meters"
                           " share this unit id; disconnect all but one")
    return identity


async def _anyone_at(bus: Bus, unit: int, profile: Profile) -> bool:
    """Whether any device answers at ``unit`` (values or an exception reply)."""
    blocks, _ = probe_plan(profile)
    try:
        await bus.read(unit, blocks[0])
    except ModbusTimeout:
        return False
    except ModbusBusError:
        raise
    except ModbusError:
        return True
    return True


async def _verify(bus: Bus, profile: Profile, unit: int, before: dict[str, str], out: Outcome, where: str,
                  hint: str = "") -> None:
    """The meter answers at ``unit`` on ``bus`` within SETTLE_S, as the same meter (serial number) as before."""
    deadline = asyncio.get_running_loop().time() + SETTLE_S
    blocks, _ = probe_plan(profile)
    while True:
        try:
            await read_blocks(bus, unit, blocks)
            break
        except ModbusBusError:
            raise
        except ModbusError as e:
            if asyncio.get_running_loop().time() > deadline:
                raise GatewayError(f"the meter accepted the change but does not answer at {where} ({e})"
                                   + (f": {hint}" if hint else "")) from None
            await asyncio.sleep(0.3)
    after = await read_identity(bus, unit, profile)
    if "serial" in before and after.get("serial") != before["serial"]:
        raise GatewayError(f"a device answers at {where}, but with serial {after.get('serial', '(none)')}, not"
                           f" {before['serial']}: another meter? nothing more is changed")
    out.lines.append(f"verified: the meter answers at {where}"
                     + (f" (serial {after['serial']}, the same)" if "serial" in after else ""))


# ---------------------------------------------------------------- registers


def probe_plan(profile: Profile) -> tuple[list[Block], dict[Quantity, tuple[float, float]]]:
    """The requests that read a profile's probe values (one per register run, nothing read across), and the
    plausible range of each: how 'scan' and the commissioning checks tell whether a device is of this model."""
    ranges = {pr.quantity: (pr.min, pr.max) for pr in profile.spec.probe}
    return plan([p for p in profile.points if p.quantity in ranges], max_gap=0), ranges


async def read_blocks(bus: Bus, unit: int, blocks: list[Block]) -> dict[Quantity, float]:
    """The values of ``blocks`` at ``unit``; any failed read raises its ModbusError."""
    values: dict[Quantity, float] = {}
    for b in blocks:
        values |= b.decode(await bus.read(unit, b))
    return values


async def _read_register(bus: Bus, unit: int, reg: IdentityRegister) -> float | None:
    point = Point(Quantity.VALUE, reg.address, reg.function, reg.type, reg.word_order)
    block = plan([point], max_gap=0)[0]
    words = await bus.read(unit, block)
    return decoder(point)(registers_to_bytes(words), 0)


def _encode(reg: SettingRegister, value: int) -> list[int]:
    fmt = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "int64": ">q", "uint64": ">Q",
           "float32": ">f", "float64": ">d"}[reg.type]
    raw = struct.pack(fmt, float(value) if reg.type.startswith("float") else value)
    words = [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]
    return words if reg.word_order == "big" else words[::-1]


async def _write(bus: Bus, unit: int, reg: SettingRegister, words: list[int]) -> None:
    async with bus.session() as conn:
        try:
            await write(conn, unit, reg.address, words)
        except ModbusTimeout:
            # Some meters switch before they answer: the verification says whether it took.
            pass
        except ModbusBusError:
            raise
        except ModbusError as e:
            raise GatewayError(f"the meter refused the write ({e}): some meters accept settings only in their"
                               " set-up mode (see its manual: a button held, a password)") from None


def serial_only(bus_cfg: BusBase) -> SerialBus:
    """``set-baudrate`` reads the meter back at the new rate: only a serial port of ours can change its rate."""
    if isinstance(bus_cfg, SerialBus):
        return bus_cfg
    if isinstance(bus_cfg, SerialLine):
        raise GatewayError("the baud rate of a meter behind a serial-to-TCP converter: change the meter's and the"
                           " converter's together (the gateway cannot change the converter's, nor verify the meter"
                           " at another rate through it)")
    raise GatewayError("a Modbus TCP device has no baud rate")
