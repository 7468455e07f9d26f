"""Meter profiles against simulated meters: what the gateway reads is what the meter holds.

Two independent checks: every built-in profile against a pymodbus server whose registers were encoded by pymodbus'
own codec from known values; and spot checks with register words worked out by hand from each manual's data types
and word order (so a profile and the decoder cannot agree on a wrong word order unnoticed).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.config import load_config_text
from gateway.config.profiles import meter_for
from gateway.errors import ConfigError
from gateway.platforms.modbus.bus import Bus
from gateway.platforms.modbus.config import ModbusMeterConfig, TcpBus
from gateway.platforms.modbus.registers import Point
from gateway.platforms.modbus.simulator import MeterServer, SimMeter
from gateway.platforms.modbus.source import MeterPoller
from gateway.quantities import Quantity as Q
from tests.helpers.modbus import ServerThread, profiles

#: Typical values per quantity; each profile's meter holds them rounded to what its registers can carry.
TYPICAL: dict[Q, float] = {
    Q.VOLTAGE_L1: 230.4, Q.VOLTAGE_L2: 229.8, Q.VOLTAGE_L3: 231.1, Q.VOLTAGE_L1_L2: 399.2, Q.VOLTAGE_L2_L3: 398.7,
    Q.VOLTAGE_L3_L1: 400.1, Q.CURRENT_L1: 5.123, Q.CURRENT_L2: 4.876, Q.CURRENT_L3: 6.001, Q.CURRENT_N: 0.412,
    Q.POWER_ACTIVE_L1: 1104.25, Q.POWER_ACTIVE_L2: -512.5, Q.POWER_ACTIVE_L3: 1380.75, Q.POWER_ACTIVE_TOTAL: 1972.5,
    Q.POWER_REACTIVE_L1: 120.5, Q.POWER_REACTIVE_L2: -80.25, Q.POWER_REACTIVE_L3: 150.0, Q.POWER_REACTIVE_TOTAL: 190.25,
    Q.POWER_APPARENT_L1: 1180.0, Q.POWER_APPARENT_L2: 1120.5, Q.POWER_APPARENT_L3: 1390.25,
    Q.POWER_APPARENT_TOTAL: 3690.75, Q.POWER_FACTOR_L1: 0.936, Q.POWER_FACTOR_L2: -0.457, Q.POWER_FACTOR_L3: 0.993,
    Q.POWER_FACTOR_TOTAL: 0.534, Q.FREQUENCY: 50.02, Q.ENERGY_IMPORT_TOTAL: 12_345_600.0,
    Q.ENERGY_IMPORT_L1: 4_115_200.0, Q.ENERGY_IMPORT_L2: 4_000_100.0, Q.ENERGY_IMPORT_L3: 4_230_300.0,
    Q.ENERGY_EXPORT_TOTAL: 1_234_500.0, Q.ENERGY_EXPORT_L1: 400_000.0, Q.ENERGY_EXPORT_L2: 411_100.0,
    Q.ENERGY_EXPORT_L3: 423_400.0, Q.VALUE: 21.7,
}


def held(point: Point) -> float:
    """What a meter of this profile holds for the typical value: rounded to the register's resolution, and
    non-negative where the register is unsigned."""
    v = TYPICAL[point.quantity]
    if point.type.startswith("uint"):
        v = abs(v)
    if point.type.startswith(("int", "uint")):
        v = round(v / point.scale) * point.scale
    return v


def close(read: float, expected: float, point: Point) -> bool:
    # float32 carries about 7 significant digits; integers are exact to the register's resolution.
    rel = 1e-6 if point.type == "float32" else 1e-12
    return math.isclose(read, expected, rel_tol=rel, abs_tol=abs(point.scale) * 1e-9)


async def read_once(server: MeterServer | int, unit: int, meter: ModbusMeterConfig) -> dict[Q, float]:
    port = server if isinstance(server, int) else server.port
    bus = Bus(TcpBus(name="b", type="tcp", host="127.0.0.1", port=port))
    try:
        reading = await MeterPoller(meter, bus, report_health=False).poll()
    finally:
        bus.close()
    assert reading is not None
    return dict(reading.values)


def meter(profile: str, unit: int = 7, quantities: Iterable[Q] | None = None) -> ModbusMeterConfig:
    return meter_for(profiles()[profile], "m", unit, bus="b", quantities=quantities)


#: Every built-in profile on one simulated line (a server thread for the module): at unit i+1 a device holding the
#: typical values; at unit 101+i one holding "not available" (NaN, or the register's pattern) for half its values.
NAMES = sorted(profiles())
HELD, NOT_AVAILABLE = 1, 101


@pytest.fixture(scope="module")
def every_model() -> Iterator[int]:
    sims = []
    for i, name in enumerate(NAMES):
        points = profiles()[name].points
        sims.append(SimMeter(HELD + i, points, {pt.quantity: held(pt) for pt in points}))
        sims.append(SimMeter(NOT_AVAILABLE + i, points, _not_available_values(points)))
    with ServerThread(sims) as server:
        yield server.port


@pytest.mark.parametrize("name", NAMES)
async def test_every_profile_reads_what_the_meter_holds(name: str, every_model: int) -> None:
    p = profiles()[name]
    values = {pt.quantity: held(pt) for pt in p.points}
    unit = HELD + NAMES.index(name)
    got = await read_once(every_model, unit, meter(name, unit))
    assert set(got) == set(values), f"{name}: read {sorted(got)} but the meter holds {sorted(values)}"
    wrong = {q.value: (got[q], values[q]) for q in values if not close(got[q], values[q], _point(p.points, q))}
    assert not wrong, f"{name}: read != held: {wrong}"


def _point(points: tuple[Point, ...], q: Q) -> Point:
    return next(p for p in points if p.quantity is q)


class RawMeter:
    """A device whose registers are given word by word, as a manual's example would show them."""

    def __init__(self, unit: int, holding: dict[int, list[int]] | None = None,
                 inputs: dict[int, list[int]] | None = None) -> None:
        self.unit = unit
        self.holding = holding or {}
        self.inputs = inputs or {}

    def device(self) -> SimDevice:
        def blocks(regs: dict[int, list[int]]) -> list[SimData]:
            if not regs:
                return [SimData(0, count=1, datatype=DataType.INVALID)]
            return [SimData(a, values=list(w), datatype=DataType.REGISTERS) for a, w in sorted(regs.items())]

        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        return SimDevice(self.unit, simdata=(bits, list(bits), blocks(self.holding), blocks(self.inputs)))


# Register words from the manuals' data types, worked out by hand (not by any codec in this repository).
SPOT_CHECKS = [
    # Eastron: IEEE 754 float32, high word first. 230.4 = 0x43666666; 1234.5 kWh = 0x449A5000.
    ("eastron_sdm630", RawMeter(1, inputs={0x0000: [0x4366, 0x6666], 0x0048: [0x449A, 0x5000]}),
     {Q.VOLTAGE_L1: 230.4, Q.ENERGY_IMPORT_TOTAL: 1_234_500.0}),
    ("eastron_sdm120", RawMeter(1, inputs={0x0000: [0x4366, 0x6666], 0x0046: [0x4248, 0x147B]}),
     {Q.VOLTAGE_L1: 230.4, Q.FREQUENCY: 50.02}),
    # Carlo Gavazzi: INT32 low word first. 2304 (230.4 V) = 0x00000900 -> [0x0900, 0x0000];
    # 123456 (12345.6 kWh) = 0x0001E240 -> [0xE240, 0x0001]; W L1 -15005 (-1500.5 W) = 0xFFFFC563 -> [0xC563, 0xFFFF].
    # The EM24's total is at 003Eh ("kWh (+) TOT"); 0042h, which one source reads, holds another counter (here a
    # different number, which must not be taken for the total).
    ("carlo_gavazzi_em24", RawMeter(1, inputs={0x0000: [0x0900, 0x0000], 0x0012: [0xC563, 0xFFFF],
                                               0x003E: [0xE240, 0x0001], 0x0042: [0x0001, 0x0000]}),
     {Q.VOLTAGE_L1: 230.4, Q.POWER_ACTIVE_L1: -1500.5, Q.ENERGY_IMPORT_TOTAL: 12_345_600.0}),
    ("carlo_gavazzi_em340", RawMeter(1, inputs={0x0000: [0x0900, 0x0000], 0x0034: [0xE240, 0x0001]}),
     {Q.VOLTAGE_L1: 230.4, Q.ENERGY_IMPORT_TOTAL: 12_345_600.0}),
    # ABB: unsigned/signed, high word first. 0x5B00 u32 2304 -> [0x0000, 0x0900]; 0x5B14 s32 -150025 (-1500.25 W)
    # = 0xFFFDB5F7; 0x5000 u64 1234567 (12345.67 kWh) = 0x12D687 -> [0, 0, 0x0012, 0xD687].
    ("abb_b23", RawMeter(1, holding={0x5000: [0, 0, 0x0012, 0xD687], 0x5B00: [0x0000, 0x0900],
                                     0x5B14: [0xFFFD, 0xB5F7]}),
     {Q.VOLTAGE_L1: 230.4, Q.POWER_ACTIVE_TOTAL: -1500.25, Q.ENERGY_IMPORT_TOTAL: 12_345_670.0}),
    # Janitza: float32 high word first, energy in Wh. 12345.5 Wh = 0x4640E600.
    ("janitza_b23", RawMeter(1, holding={0x4A38: [0x4366, 0x6666], 0x4A7C: [0x4640, 0xE600]}),
     {Q.VOLTAGE_L1: 230.4, Q.ENERGY_IMPORT_TOTAL: 12_345.5}),
    # Siemens PAC: float32 at odd offsets; energy float64 in Wh: 1234567.0 = 0x4132D68700000000.
    ("siemens_pac2200", RawMeter(1, holding={1: [0x4366, 0x6666], 801: [0x4132, 0xD687, 0, 0]}),
     {Q.VOLTAGE_L1: 230.4, Q.ENERGY_IMPORT_TOTAL: 1_234_567.0}),
    # XY-MD02: signed 16-bit tenths of a degree at input register 1. -5.3 degC = -53 = 0xFFCB.
    ("xy_md02", RawMeter(1, inputs={0x0001: [0xFFCB]}), {Q.VALUE: -5.3}),
    # Humidity: unsigned tenths of a percent at input register 2. 49.7 % = 497 = 0x01F1.
    ("xy_md02_humidity", RawMeter(1, inputs={0x0002: [0x01F1]}), {Q.VALUE: 49.7}),
    # The other Eastron models: the same float32 words at the same addresses (230.4 V, 1234.5 kWh).
    *[(name, RawMeter(1, inputs={0x0000: [0x4366, 0x6666], 0x0048: [0x449A, 0x5000]}),
       {Q.VOLTAGE_L1: 230.4, Q.ENERGY_IMPORT_TOTAL: 1_234_500.0})
      for name in ("eastron_sdm54", "eastron_sdm72dm_v2", "eastron_sdm220", "eastron_sdm230", "eastron_x96_1a")],
    ("eastron_sdm72d", RawMeter(1, inputs={0x0048: [0x449A, 0x5000]}), {Q.ENERGY_IMPORT_TOTAL: 1_234_500.0}),
    # Schneider iEM3000: float32 at register 3028 - 1; power in kW (1.25 = 0x3FA00000); energy INT64 Wh 1234567.
    ("schneider_iem3000", RawMeter(1, holding={0x0BD3: [0x4366, 0x6666], 0x0BF3: [0x3FA0, 0x0000],
                                               0x0C83: [0, 0, 0x0012, 0xD687]}),
     {Q.VOLTAGE_L1: 230.4, Q.POWER_ACTIVE_TOTAL: 1250.0, Q.ENERGY_IMPORT_TOTAL: 1_234_567.0}),
    # PM3200: the iEM3000's map (register - 1), plus the neutral current; energy INT64 Wh 1234567.
    ("schneider_pm3200", RawMeter(1, holding={3005: [0x3F40, 0x0000], 3027: [0x4366, 0x6666],
                                              3059: [0x3FA0, 0x0000], 3203: [0, 0, 0x0012, 0xD687]}),
     {Q.CURRENT_N: 0.75, Q.VOLTAGE_L1: 230.4, Q.POWER_ACTIVE_TOTAL: 1250.0, Q.ENERGY_IMPORT_TOTAL: 1_234_567.0}),
    ("schneider_pm5100", RawMeter(1, holding={2699: [0x449A, 0x5000], 3027: [0x4366, 0x6666],
                                              3059: [0x3FA0, 0x0000]}),
     {Q.VOLTAGE_L1: 230.4, Q.POWER_ACTIVE_TOTAL: 1250.0, Q.ENERGY_IMPORT_TOTAL: 1_234_500.0}),
    # Inepro and WAGO: float32 from 0x5000, power in kW, energy in kWh from 0x6000.
    ("inepro_pro380", RawMeter(1, holding={0x5002: [0x4366, 0x6666], 0x5012: [0x3FA0, 0x0000],
                                           0x600C: [0x449A, 0x5000]}),
     {Q.VOLTAGE_L1: 230.4, Q.POWER_ACTIVE_TOTAL: 1250.0, Q.ENERGY_IMPORT_TOTAL: 1_234_500.0}),
    ("wago_879_30x0", RawMeter(1, holding={0x5002: [0x4366, 0x6666], 0x600C: [0x449A, 0x5000]}),
     {Q.VOLTAGE_L1: 230.4, Q.ENERGY_IMPORT_TOTAL: 1_234_500.0}),
    # ORNO: WE-516 float32 (kW, kWh); WE-514 16-bit 0.01 V (23040 = 0x5A00) and INT32 W (-1500 = 0xFFFFFA24).
    ("orno_we516", RawMeter(1, holding={0x000E: [0x4366, 0x6666], 0x001C: [0x3FA0, 0x0000],
                                        0x0108: [0x449A, 0x5000]}),
     {Q.VOLTAGE_L1: 230.4, Q.POWER_ACTIVE_TOTAL: 1250.0, Q.ENERGY_IMPORT_TOTAL: 1_234_500.0}),
    ("orno_we514", RawMeter(1, holding={0x0131: [0x5A00], 0x0140: [0xFFFF, 0xFA24]}),
     {Q.VOLTAGE_L1: 230.4, Q.POWER_ACTIVE_TOTAL: -1500.0}),
    # Chint: DTSU666 float32 in 0.1 V (2304.0 = 0x45100000); DDSU666 in V and kW.
    ("chint_dtsu666", RawMeter(1, holding={0x101E: [0x449A, 0x5000], 0x2000: [0x4510, 0x0000]}),
     {Q.VOLTAGE_L1: 230.4, Q.ENERGY_IMPORT_TOTAL: 1_234_500.0}),
    ("chint_ddsu666", RawMeter(1, holding={0x2000: [0x4366, 0x6666], 0x2004: [0x3FA0, 0x0000],
                                           0x4000: [0x449A, 0x5000]}),
     {Q.VOLTAGE_L1: 230.4, Q.POWER_ACTIVE_TOTAL: 1250.0, Q.ENERGY_IMPORT_TOTAL: 1_234_500.0}),
    # Finder: float32 voltage at 2500; energy counter UINT32 Wh (1234567 = 0x0012D687) at 2752.
    *[(name, RawMeter(1, inputs={2500: [0x4366, 0x6666], 2752: [0x0012, 0xD687]}),
       {Q.VOLTAGE_L1: 230.4, Q.ENERGY_IMPORT_TOTAL: 1_234_567.0}) for name in ("finder_7m24", "finder_7m38")],
    # SBC ALE3: register 28 (address 27) UINT32 0.01 kWh (123456 = 0x0001E240); register 36 volts.
    ("sbc_ale3", RawMeter(1, holding={27: [0x0001, 0xE240], 35: [230]}),
     {Q.VOLTAGE_L1: 230.0, Q.ENERGY_IMPORT_TOTAL: 1_234_560.0}),
    # Lovato: UINT32 0.01 V at wire address 1; UINT64 0.01 kWh at 0x1B1F.
    ("lovato_dmg610", RawMeter(1, inputs={0x0001: [0x0000, 0x5A00], 0x1B1F: [0, 0, 0x0012, 0xD687]}),
     {Q.VOLTAGE_L1: 230.4, Q.ENERGY_IMPORT_TOTAL: 12_345_670.0}),
    # Socomec: UINT32 0.01 V, INT32 0.01 kW (-150 = 0xFFFFFF6A), UINT32 kWh (1234 = 0x04D2).
    ("socomec_countis_e", RawMeter(1, holding={0xC558: [0x0000, 0x5A00], 0xC568: [0xFFFF, 0xFF6A],
                                               0xC652: [0x0000, 0x04D2]}),
     {Q.VOLTAGE_L1: 230.4, Q.POWER_ACTIVE_TOTAL: -1500.0, Q.ENERGY_IMPORT_TOTAL: 1_234_000.0}),
    # Bernecker MPM3PM: UINT32 0.01 kWh at 0x02, 0.1 V at 0x08 (2304 = 0x0900).
    ("bernecker_mpm3pm", RawMeter(1, holding={0x02: [0x0001, 0xE240], 0x08: [0x0000, 0x0900]}),
     {Q.VOLTAGE_L1: 230.4, Q.ENERGY_IMPORT_TOTAL: 1_234_560.0}),
    # B+G WS100: UINT32 mV (230400 = 0x00038400), UINT32 0.01 kWh.
    ("bg_etech_ws100", RawMeter(1, holding={0x0100: [0x0003, 0x8400], 0x010E: [0x0001, 0xE240]}),
     {Q.VOLTAGE_L1: 230.4, Q.ENERGY_IMPORT_TOTAL: 1_234_560.0}),
    # Eltako: UINT32 0.01 V, INT32 W, UINT32 0.01 kWh.
    ("eltako_dsz15dzmod", RawMeter(1, inputs={0x0000: [0x0000, 0x5A00], 0x000C: [0xFFFF, 0xFA24],
                                              0x0048: [0x0001, 0xE240]}),
     {Q.VOLTAGE_L1: 230.4, Q.POWER_ACTIVE_L1: -1500.0, Q.ENERGY_IMPORT_TOTAL: 1_234_560.0}),
    # DZG: UINT32 0.01 V, UINT32 Wh.
    ("dzg_dvh4013", RawMeter(1, holding={0x0004: [0x0000, 0x5A00], 0x4000: [0x0012, 0xD687]}),
     {Q.VOLTAGE_L1: 230.4, Q.ENERGY_IMPORT_TOTAL: 1_234_567.0}),
    # Janitza UMG: float32 at 19000; energy float32 Wh (12345.5 = 0x4640E600) at 19068.
    ("janitza_umg96rm", RawMeter(1, inputs={19000: [0x4366, 0x6666], 19068: [0x4640, 0xE600]}),
     {Q.VOLTAGE_L1: 230.4, Q.ENERGY_IMPORT_TOTAL: 12_345.5}),
    # Carlo Gavazzi EM100 / EM270: INT32 low word first; 2304 -> [0x0900, 0x0000]; 123456 -> [0xE240, 0x0001].
    ("carlo_gavazzi_em111", RawMeter(1, inputs={0x0000: [0x0900, 0x0000], 0x0010: [0xE240, 0x0001]}),
     {Q.VOLTAGE_L1: 230.4, Q.ENERGY_IMPORT_TOTAL: 12_345_600.0}),
    ("carlo_gavazzi_em270", RawMeter(1, inputs={0x0000: [0x0900, 0x0000], 0x0018: [0xE240, 0x0001]}),
     {Q.VOLTAGE_L1: 230.4, Q.ENERGY_IMPORT_TOTAL: 12_345_600.0}),
]


@pytest.mark.parametrize(("name", "raw", "expected"), SPOT_CHECKS, ids=[s[0] for s in SPOT_CHECKS])
async def test_profile_decodes_the_manuals_words(name: str, raw: RawMeter, expected: dict[Q, float]) -> None:
    server = await MeterServer([raw]).start_tcp()  # type: ignore[list-item]
    try:
        got = await read_once(server, 1, meter(name, 1, quantities=expected))
    finally:
        await server.stop()
    assert got == pytest.approx(expected, rel=1e-9)


async def test_not_available_nan_and_infinite_values_are_left_out() -> None:
    # ABB: all bits set means "not available"; a float32 meter may hold NaN or infinity.
    abb = RawMeter(1, holding={0x5B00: [0xFFFF, 0xFFFF], 0x5B02: [0x0000, 0x08FC], 0x5B14: [0x7FFF, 0xFFFF]})
    sdm = RawMeter(2, inputs={0x0000: [0x7FC0, 0x0000], 0x0002: [0x7F80, 0x0000], 0x0004: [0x4366, 0x6666]})
    server = await MeterServer([abb, sdm]).start_tcp()  # type: ignore[list-item]
    try:
        abb_meter = meter("abb_b23", 1, quantities=(Q.VOLTAGE_L1, Q.VOLTAGE_L2, Q.POWER_ACTIVE_TOTAL))
        assert await read_once(server, 1, abb_meter) == {Q.VOLTAGE_L2: 230.0}
        sdm_meter = meter("eastron_sdm630", 2, quantities=(Q.VOLTAGE_L1, Q.VOLTAGE_L2, Q.VOLTAGE_L3))
        assert await read_once(server, 2, sdm_meter) == {Q.VOLTAGE_L3: 230.4}
    finally:
        await server.stop()


# ---------------------------------------------------------------- bad profile files


CONFIG = """\
profiles_dir: profiles
buses: [{name: plc, type: tcp, host: 127.0.0.1}]
meters: [{name: m, type: modbus, bus: plc, unit: 1, profile: mine}]
sinks: [{name: out, type: stdout}]
"""

GOOD_PROFILE = """\
manufacturer: Acme
model: X1
manual: Acme X1 manual, table 4
kind: three_phase
defaults: {function: input, type: float32}
probe: [{quantity: voltage_l1, min: 80, max: 300}]
registers:
  - {quantity: voltage_l1, address: 0}
  - {quantity: current_l1, address: 2}
"""


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        (GOOD_PROFILE.replace("  - {quantity: current_l1, address: 2}", "  - {quantity: current_l1, address: 2,"
                                                                         " type: float33}"),
         "mine.yaml:9: registers[current_l1].type: 'float33' is not allowed"),
        (GOOD_PROFILE.replace("current_l1, address: 2", "voltage_l1, address: 2"),
         "mine.yaml:9: registers[voltage_l1].quantity: 'voltage_l1' is already read by registers[0]"),
        (GOOD_PROFILE.replace("current_l1, address: 2", "curent_l1, address: 2"),
         "mine.yaml:9: registers[curent_l1].quantity: 'curent_l1' is not a quantity (did you mean 'current_l1'?"),
        (GOOD_PROFILE.replace("manual: Acme X1 manual, table 4\n", ""),
         "mine.yaml:1: manual: required key is missing"),
        (GOOD_PROFILE.replace("address: 2}", "address: 65535}"),
         "mine.yaml:9: registers[current_l1].address: 65535 + 2 registers of float32 runs past 65535"),
        (GOOD_PROFILE.replace("defaults: {function: input, type: float32}", "defaults: {type: float32}"),
         "mine.yaml:8: registers[voltage_l1].function: required key is missing"),
        (GOOD_PROFILE.replace("max: 300", "max: 50"), "mine.yaml:6: probe[voltage_l1].max: 50 is not above min 80"),
        (GOOD_PROFILE.replace("address: 2}", "address: 2, scale: 0}"),
         "mine.yaml:9: registers[current_l1].scale: must not be 0"),
        (GOOD_PROFILE + "  - {quantity: power_active_l1 address: 4}\n", "mine.yaml:10: YAML syntax error"),
        (GOOD_PROFILE.replace("model: X1\n", "model: X1\naliases: [X2, x-1]\n"),
         "mine.yaml:3: aliases[1]: 'x-1' is already a name of this profile"),
    ],
    ids=["type", "duplicate", "quantity", "manual", "address", "function", "probe", "scale", "syntax", "alias"],
)
def test_a_bad_profile_file_is_one_line_naming_file_line_and_register(
    tmp_path: Path, profile: str, expected: str
) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "mine.yaml").write_text(profile)
    with pytest.raises(ConfigError) as e:
        load_config_text(CONFIG, str(tmp_path / "config.yaml"), base_dir=tmp_path)
    lines = e.value.problems
    for line in lines:
        assert line.startswith(str(tmp_path / "profiles" / "mine.yaml") + ":"), line
        assert "\n" not in line and "Traceback" not in line
    assert any(expected in line for line in lines), lines


def test_a_good_own_profile_loads_and_replaces_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "mine.yaml").write_text(GOOD_PROFILE)
    config = load_config_text(CONFIG, "c.yaml", base_dir=tmp_path)
    meter = config.meters[0]
    assert isinstance(meter, ModbusMeterConfig)
    assert [p.quantity for p in meter.points] == [Q.VOLTAGE_L1, Q.CURRENT_L1]


def test_meter_registers_override_and_filter_the_profile(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        buses: [{name: plc, type: tcp, host: 127.0.0.1}]
        meters:
          - name: m
            type: modbus
            bus: plc
            unit: 1
            profile: eastron_sdm630
            quantities: [voltage_l1, energy_import_total]
            registers:
              - {quantity: energy_import_total, address: 0x0156, scale: 1000}
        sinks: [{name: out, type: stdout}]
        """)
    meter = load_config_text(text, "c.yaml").meters[0]
    assert isinstance(meter, ModbusMeterConfig)
    by_q = {p.quantity: p for p in meter.points}
    assert set(by_q) == {Q.VOLTAGE_L1, Q.ENERGY_IMPORT_TOTAL}
    # The inline register takes the profile's defaults (input, float32, high word first) and replaces its twin.
    assert by_q[Q.ENERGY_IMPORT_TOTAL] == Point(Q.ENERGY_IMPORT_TOTAL, 0x0156, "input", "float32", "big", 1000.0)


def test_every_profile_has_a_hand_worked_spot_check() -> None:
    # The simulator encodes with the profile's own addresses and types: only words worked out from the manual
    # catch a typo in an address or a type. Every built-in profile needs one.
    checked = {name for name, _, _ in SPOT_CHECKS}
    assert set(profiles()) - checked == set()


def _not_available_values(points: tuple[Point, ...]) -> dict[Q, float]:
    """Every other value that can be "not available" (a float, or an integer with a documented pattern) held as
    such (NaN: the simulator writes the pattern), the rest as typical values; a one-value device keeps its value
    (the typical-value test reads it, and a device with nothing to read gives no reading)."""
    values = {pt.quantity: held(pt) for pt in points}
    can = [pt for pt in points if pt.type.startswith("float") or pt.not_available]
    if len(can) < 2 and len(points) < 2:
        return values
    for pt in can[::2]:
        values[pt.quantity] = math.nan
    return values


@pytest.mark.parametrize("name", NAMES)
async def test_not_available_values_are_left_out(name: str, every_model: int) -> None:
    p = profiles()[name]
    values = _not_available_values(p.points)
    missing = {q for q, v in values.items() if math.isnan(v)}
    unit = NOT_AVAILABLE + NAMES.index(name)
    got = await read_once(every_model, unit, meter(name, unit)) if len(missing) < len(values) else {}
    assert set(got) == set(values) - missing, f"{name}: 'not available' must leave the value out"
    assert all(math.isfinite(v) for v in got.values())


async def test_scan_ranks_each_model_first_on_a_bus_of_every_model() -> None:
    # One simulated device per built-in profile on one line, each answering only its own registers (an exception
    # for the others, as meters do): 'scan' must put the right profile first, or tied first with a profile reading
    # the very same registers (a family sharing one map).
    from gateway.platforms.modbus.tools import scan

    every = profiles()
    names = sorted(every)
    sims = [SimMeter(unit, every[n].points, {pt.quantity: held(pt) for pt in every[n].points}, holes=True)
            for unit, n in enumerate(names, start=1)]
    server = await MeterServer(sims).start_tcp()
    try:
        bus = TcpBus(name="b", type="tcp", host="127.0.0.1", port=server.port, timeout="500ms")
        hits = await scan(bus, range(1, len(names) + 1), every)
    finally:
        await server.stop()
    by_unit = {h.unit: h for h in hits}
    wrong = {}
    for unit, name in enumerate(names, start=1):
        hit = by_unit.get(unit)
        if hit is None or not hit.fits:
            wrong[name] = "not recognised"
            continue
        top = hit.fits[0][0]
        same_map = {(pt.function, pt.address, pt.type) for pt in every[top].points} == \
            {(pt.function, pt.address, pt.type) for pt in every[name].points}
        if top != name and not same_map:
            wrong[name] = f"ranked {top} first (fits: {[f[0] for f in hit.fits]})"
    assert not wrong, wrong


def test_a_model_name_in_the_configuration_is_told_its_profile() -> None:
    text = textwrap.dedent("""\
        buses: [{name: plc, type: tcp, host: 127.0.0.1}]
        meters:
          - {name: m, type: modbus, bus: plc, unit: 1, profile: Kostal KEM-P}
          - {name: n, type: modbus, bus: plc, unit: 2, profile: eastron_sdm360}
        sinks: [{name: out, type: stdout}]
        """)
    with pytest.raises(ConfigError) as e:
        load_config_text(text, "c.yaml")
    assert e.value.problems == [
        "c.yaml:3: meters[m].profile: 'Kostal KEM-P' is a model name, read by profile 'eastron_sdm630' (Eastron"
        " SDM630): write that profile's name here",
        "c.yaml:4: meters[n].profile: no profile named 'eastron_sdm360' (did you mean eastron_sdm630 or"
        " eastron_sdm230? 'meter-gateway profiles' lists them with the models they read)"]


def test_the_supported_models_page_is_generated_from_the_profiles() -> None:
    from gateway.platforms.modbus.catalog import render_markdown

    page = Path(__file__).resolve().parent.parent / "docs" / "meters.md"
    assert page.read_text() == render_markdown(profiles()), (
        "docs/meters.md is out of date: meter-gateway profiles --markdown > docs/meters.md")
    assert len(profiles()) >= 35
