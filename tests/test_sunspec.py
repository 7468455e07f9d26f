"""SunSpec devices: discovered, not listed. A meter with scale factors, an inverter and a float meter, each a
simulator built from the SunSpec Alliance's model definitions, read by the gateway's own Modbus stack over TCP."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config import load_config_text
from gateway.errors import ConfigError
from gateway.platforms.modbus import sunspec
from gateway.platforms.modbus.bus import Bus
from gateway.platforms.modbus.config import ModbusMeterConfig, TcpBus
from gateway.platforms.modbus.plan import Block
from gateway.platforms.modbus.registers import Point
from gateway.platforms.modbus.simulator import MeterServer, SimMeter, SunSpecSim
from gateway.platforms.modbus.source import SunSpecPoller, poller_for
from gateway.platforms.modbus.tools import parse_units, render_scan, scan
from gateway.quantities import Quantity as Q
from tests.helpers.modbus import profiles

COMMON = {"Mn": "Acme Energy", "Md": "AM-3", "Vr": "2.1.7", "SN": "SN0001"}
#: Scale factors as a meter stores them: volts in tenths, amps in hundredths, hertz in hundredths, power factor in
#: tenths of a percent, energy in tens of Wh.
METER_SF = {"A_SF": -2, "V_SF": -1, "Hz_SF": -2, "W_SF": 0, "VA_SF": 0, "VAR_SF": 0, "PF_SF": -1, "TotWh_SF": 1}
METER = {"AphA": 5.12, "AphB": 4.88, "AphC": 6.0, "PhVphA": 230.4, "PhVphB": 229.8, "PhVphC": 231.1,
         "PhVphAB": 399.2, "Hz": 50.02, "W": 1972.0, "WphA": 1104.0, "VA": 3690.0, "VAR": 190.0, "PF": 93.6,
         "TotWhImp": 12_345_670.0, "TotWhExp": 1_234_560.0}
INVERTER_SF = {"A_SF": -1, "V_SF": -1, "W_SF": 1, "Hz_SF": -2, "VA_SF": 1, "VAr_SF": 1, "PF_SF": -1, "WH_SF": 0,
               "DCA_SF": -2, "DCV_SF": -1, "DCW_SF": 1}
INVERTER = {"AphA": 12.3, "PhVphA": 231.0, "W": 8420.0, "Hz": 49.98, "WH": 45_678_901.0, "DCA": 21.45, "DCV": 612.5,
            "DCW": 8790.0, "PF": 99.5}
FLOAT_METER = {"PhVphA": 230.5, "AphA": 1.25, "W": 287.5, "PF": 0.95, "Hz": 50.0, "TotWhImp": 987_654.5}


def meter(unit: int, **extra: object) -> ModbusMeterConfig:
    m = ModbusMeterConfig.model_validate({"name": f"ss{unit}", "type": "modbus", "bus": "b", "unit": unit,
                                          "profile": "sunspec", **extra})
    return m.resolved((), None)


def devices() -> list[SunSpecSim]:
    return [
        SunSpecSim(1, 40000, COMMON, [(203, METER)], METER_SF),
        SunSpecSim(126, 50000, {**COMMON, "Md": "INV-10K", "SN": "INV42"}, [(103, INVERTER)], INVERTER_SF),
        SunSpecSim(2, 0, {**COMMON, "Md": "FM-1"}, [(213, FLOAT_METER)]),
    ]


async def read(port: int, m: ModbusMeterConfig) -> tuple[SunSpecPoller, dict[Q, float] | None]:
    bus = Bus(TcpBus(name="b", type="tcp", host="127.0.0.1", port=port, timeout="500ms"))
    try:
        poller = poller_for(m, bus, report_health=False)
        assert isinstance(poller, SunSpecPoller)
        reading = await poller.poll()
    finally:
        bus.close()
    return poller, (dict(reading.values) if reading else None)


def test_the_model_table_is_the_sunspec_alliances() -> None:
    pytest.importorskip("sunspec2", reason="pysunspec2 is in the test extra")
    from gateway.platforms.modbus.sunspec_generate import TABLE, generate

    assert TABLE.read_text() == generate(), "python -m gateway.platforms.modbus.sunspec_generate"
    # Offsets counted by hand from the specification's model 203 (after ID and L): A 0, AphA..C 1-3, A_SF 4,
    # PhV 5, PhVphA..C 6-8, PPV 9, PhVphAB..CA 10-12, V_SF 13, Hz 14, Hz_SF 15, W 16.
    spec = sunspec.models()[203].points
    assert [spec[n][0] for n in ("A", "AphA", "A_SF", "PhVphA", "V_SF", "Hz", "Hz_SF", "W")] == \
        [0, 1, 4, 6, 13, 14, 15, 16]


async def test_a_meter_an_inverter_and_a_float_meter_are_discovered_and_read() -> None:
    server = await MeterServer(devices()).start_tcp()  # type: ignore[arg-type]
    try:
        # The words on the wire, worked out by hand: model 203's body starts after "SunS" (2), model 1's header and
        # body (2 + 66) and its own header (2): 40072. PhVphA (offset 6) holds 2304, V_SF (13) holds -1.
        bus = Bus(TcpBus(name="b", type="tcp", host="127.0.0.1", port=server.port))
        try:
            probe = Point(Q.VALUE, 40072, "holding", "uint16")
            words = await bus.read(1, Block("holding", 40072, 16, (probe,)))
        finally:
            bus.close()
        assert words[6] == 2304 and words[13] == 0xFFFF

        poller, got = await read(server.port, meter(1))
        assert poller.device is not None and poller.device.base == 40000
        assert [m for m, _, _ in poller.device.chain] == [1, 203]
        assert poller.device.identity == {"manufacturer": "Acme Energy", "model": "AM-3", "version": "2.1.7",
                                          "serial": "SN0001"}
        # Each value: the raw integer times ten to its scale factor; the power factor from percent.
        assert got == {Q.CURRENT_L1: 5.12, Q.CURRENT_L2: 4.88, Q.CURRENT_L3: 6.0, Q.VOLTAGE_L1: 230.4,
                       Q.VOLTAGE_L2: 229.8, Q.VOLTAGE_L3: 231.1, Q.VOLTAGE_L1_L2: 399.2, Q.FREQUENCY: 50.02,
                       Q.POWER_ACTIVE_TOTAL: 1972.0, Q.POWER_ACTIVE_L1: 1104.0, Q.POWER_APPARENT_TOTAL: 3690.0,
                       Q.POWER_REACTIVE_TOTAL: 190.0, Q.POWER_FACTOR_TOTAL: 0.936,
                       Q.ENERGY_IMPORT_TOTAL: 12_345_670.0, Q.ENERGY_EXPORT_TOTAL: 1_234_560.0}
        assert poller.health()["device"]["serial"] == "SN0001"  # type: ignore[index]

        poller, got = await read(server.port, meter(126))
        assert poller.device is not None and poller.device.base == 50000 and poller.device.model is not None
        assert poller.device.model[0] == 103
        assert got == {Q.CURRENT_L1: 12.3, Q.VOLTAGE_L1: 231.0, Q.POWER_ACTIVE_TOTAL: 8420.0, Q.FREQUENCY: 49.98,
                       Q.ENERGY_EXPORT_TOTAL: 45_678_901.0, Q.DC_CURRENT: 21.45, Q.DC_VOLTAGE: 612.5,
                       Q.DC_POWER: 8790.0, Q.POWER_FACTOR_TOTAL: 0.995}

        poller, got = await read(server.port, meter(2, quantities=["voltage_l1", "energy_import_total",
                                                                   "power_factor_total"]))
        assert poller.device is not None and poller.device.base == 0
        assert got == {Q.VOLTAGE_L1: 230.5, Q.ENERGY_IMPORT_TOTAL: 987_654.5, Q.POWER_FACTOR_TOTAL: 0.95}
    finally:
        await server.stop()


async def test_scan_finds_sunspec_devices_at_the_installers_unit_ids() -> None:
    assert parse_units("sunspec") == [1, 2, 126, 200, 201, 202, 203, 204, 240]
    sdm = profiles()["eastron_sdm630"]
    other = SimMeter(200, sdm.points, {pt.quantity: 230.0 if pt.quantity is Q.VOLTAGE_L1 else 50.0
                                       for pt in sdm.points}, holes=True)
    server = await MeterServer([*devices(), other]).start_tcp()  # type: ignore[list-item]
    try:
        bus = TcpBus(name="b", type="tcp", host="127.0.0.1", port=server.port, timeout="300ms")
        hits = await scan(bus, parse_units("sunspec"), profiles())
    finally:
        await server.stop()
    by_unit = {h.unit: h for h in hits}
    assert set(by_unit) == {1, 2, 126, 200}
    assert by_unit[1].fits[0][0] == "sunspec" and by_unit[1].identity["serial"] == "SN0001"
    assert "models 1, 203; reads model 203" in by_unit[1].titles["sunspec"]
    assert by_unit[126].identity["model"] == "INV-10K"
    assert by_unit[200].fits[0][0] != "sunspec"
    text = render_scan(hits, bus, 9)
    assert "unit 126: answers; fits sunspec (SunSpec at 50000: manufacturer Acme Energy, model INV-10K" in text
    assert "profile: sunspec" in text


async def test_what_a_lying_sunspec_device_says_never_becomes_a_value() -> None:
    # Scale factors not implemented (0x8000) or outside -10..10: no value, never one scaled by a guess.
    bad_sf = SunSpecSim(3, 40000, COMMON, [(203, METER)], {**METER_SF, "V_SF": -0x8000, "Hz_SF": 20})
    # A model longer than the address space left: refused before anything is read from it.
    too_long = SunSpecSim(4, 40000, COMMON, [(203, METER)], METER_SF, length_of={203: 0xFFFF})
    # A marker that is not "SunS", and a device that is no SunSpec device at all (an SDM630).
    not_marker = SunSpecSim(5, 40000, COMMON, [(203, METER)], METER_SF)
    not_marker.words[0] = 0x5375
    not_marker.words[1] = 0x0000
    sdm = SimMeter(6, profiles()["eastron_sdm630"].points, {Q.VOLTAGE_L1: 230.0}, holes=True)
    # A meter model declared empty: said, not a meter that silently gives nothing. A model 1 declared empty: the
    # device is read all the same, unnamed.
    empty = SunSpecSim(7, 40000, COMMON, [(203, METER)], METER_SF, length_of={203: 0})
    unnamed = SunSpecSim(8, 40000, COMMON, [(203, METER)], METER_SF, length_of={1: 0})
    server = await MeterServer([bad_sf, too_long, not_marker, sdm, empty, unnamed]).start_tcp()  # type: ignore[list-item]
    try:
        _, got = await read(server.port, meter(3))
        assert got is not None and Q.VOLTAGE_L1 not in got and Q.FREQUENCY not in got
        assert got[Q.ENERGY_IMPORT_TOTAL] == 12_345_670.0  # the others are read
        poller, got = await read(server.port, meter(8))
        assert got is not None and got[Q.VOLTAGE_L1] == 230.4 and poller.device is not None
        assert poller.device.identity == {} and [m for m, _, _ in poller.device.chain] == [1, 203]
        for unit, why in ((4, "runs past the last register"), (5, "no 'SunS' marker"), (6, "no 'SunS' marker"),
                          (7, "SunSpec model 203 of 0 registers holds none of the values read")):
            poller, got = await read(server.port, meter(unit))
            assert got is None and poller.device is None
            assert [p.kind for p in poller.last_problems] == ["bad_answer"], unit
            assert why in str(poller.last_problems[0])
    finally:
        await server.stop()


def test_a_sunspec_meter_in_the_configuration(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        buses: [{name: b, type: tcp, host: 127.0.0.1}]
        meters:
          - {name: inverter, type: modbus, bus: b, unit: 126, profile: sunspec, sunspec_model: 103}
        sinks: [{name: out, type: stdout}]
        """)
    m = load_config_text(text, "c.yaml").meters[0]
    assert isinstance(m, ModbusMeterConfig) and m.sunspec and m.points == () and m.sunspec_model == 103
    bad = text.replace("sunspec_model: 103}", "registers: [{quantity: value, address: 1, function: input,"
                       " type: int16}], value_unit: degC}")
    with pytest.raises(ConfigError) as e:
        load_config_text(bad, "c.yaml")
    assert "c.yaml:3: meters[inverter].registers: a SunSpec device describes its own registers" in e.value.problems[0]
