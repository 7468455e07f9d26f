"""The technician's commands as a technician runs them: ``read``, ``scan``, ``profiles``, ``check``, ``demo``.

Each runs as its own process against simulated meters served by the test's event loop (or a pseudo-terminal).
"""

from __future__ import annotations

import asyncio
import json
import sys
import termios
from pathlib import Path

import pytest

from gateway.platforms.modbus.simulator import MeterServer, SimMeter
from gateway.platforms.simulated.source import three_phase
from gateway.quantities import Quantity as Q
from tests.helpers.modbus import RateCheckedLine, profiles, pty_pair


async def cli(*args: str, within: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--log-format", "json", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), within)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def config(tmp_path: Path, port: int, extra_meters: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"""\
state_dir: {tmp_path / 'state'}
buses:
  - {{name: cabinet, type: tcp, host: 127.0.0.1, port: {port}, timeout: 500ms}}
meters:
  - {{name: incomer, type: modbus, bus: cabinet, unit: 1, profile: eastron_sdm630}}
  - {{name: temp, type: modbus, bus: cabinet, unit: 5, profile: xy_md02}}
{extra_meters}sinks:
  - {{name: out, type: stdout}}
""")
    return path


def fixed(profile: str, values: dict[Q, float], unit: int) -> SimMeter:
    return SimMeter(unit, profiles()[profile].points, values)


async def test_read_prints_each_meters_values_with_units(tmp_path: Path) -> None:
    sdm = SimMeter(1, profiles()["eastron_sdm630"].points, {Q.VOLTAGE_L1: 230.4, Q.ENERGY_IMPORT_TOTAL: 1234.5e3})
    temp = fixed("xy_md02", {Q.VALUE: 21.7}, 5)
    server = await MeterServer([sdm, temp]).start_tcp()
    try:
        path = config(tmp_path, server.port)
        rc, out, err = await cli("read", "-c", str(path))
        assert rc == 0, err
        assert "incomer  (eastron_sdm630, unit 1 on cabinet: 127.0.0.1:" in out
        assert "  voltage_l1                        230.4 V\n" in out
        assert "  energy_import_total           1234500.0 Wh\n" in out
        assert "  value                              21.7 degC\n" in out
        rc, out, err = await cli("read", "-c", str(path), "--meter", "temp", "--json")
        assert rc == 0, err
        (result,) = json.loads(out)
        assert result["meter"] == "temp" and result["ok"] and result["reading"]["values"] == {"value": 21.7}
        assert result["requests"] == 1
    finally:
        await server.stop()


async def test_read_raw_shows_the_words_read_every_way(tmp_path: Path) -> None:
    # A technician writing registers for a new device guesses float32 high word first; the device holds its float
    # low word first. 'read --raw' shows the words, the absurd value as configured, and 230.4 under the right order.
    from gateway.platforms.modbus.registers import Point

    held = Point(Q.VOLTAGE_L1, 0x10, "input", "float32", "little", 1.0, 0.0, frozenset())
    server = await MeterServer([SimMeter(9, [held], {Q.VOLTAGE_L1: 230.4})]).start_tcp()
    try:
        path = config(tmp_path, server.port, extra_meters="  - {name: new, type: modbus, bus: cabinet, unit: 9,"
                      " registers: [{quantity: voltage_l1, address: 0x10, function: input, type: float32}]}\n")
        rc, out, err = await cli("read", "-c", str(path), "--meter", "new", "--raw")
        assert rc == 0, err
        row = next(line for line in out.splitlines() if line.startswith("  voltage_l1") and "0x6666 0x4366" in line)
        assert "FC4 0x0010 (16)" in row
        assert "float32 big * 2.71" in row  # the configured order: an absurd voltage
        assert "float32 little 230.4" in row
        assert "uint32 big 1717977958" in row and "int32 little 1130784358" in row
        rc, out, err = await cli("read", "-c", str(path), "--meter", "new", "--raw", "--json")
        (result,) = json.loads(out)
        (reg,) = result["registers"]
        assert reg["words"] == ["0x6666", "0x4366"] and reg["every_way"]["float32 little"] == 230.4
        assert reg["other_order"] == 230.4
    finally:
        await server.stop()


async def test_read_says_which_meter_does_not_answer_and_exits_1(tmp_path: Path) -> None:
    server = await MeterServer([fixed("eastron_sdm630", {Q.VOLTAGE_L1: 230.0}, 1)]).start_tcp()
    try:
        rc, out, err = await cli("read", "-c", str(config(tmp_path, server.port)))
    finally:
        await server.stop()
    assert rc == 1
    assert "voltage_l1" in out  # the meter that answers is shown
    assert "temp  (xy_md02, unit 5 on cabinet: 127.0.0.1:" in out and ": no reading" in out
    assert "! timeout: unit 5 input 0x0001 x1: no answer within 0.5s" in out
    assert "Traceback" not in out + err


async def test_read_on_a_serial_line_the_daemon_holds_says_the_port_is_busy(tmp_path: Path) -> None:
    import serial

    with pty_pair(tmp_path) as (_, gateway_end):
        path = tmp_path / "config.yaml"
        path.write_text(f"""\
buses: [{{name: rs485, type: serial, port: {gateway_end}}}]
meters: [{{name: incomer, type: modbus, bus: rs485, unit: 1, profile: eastron_sdm630}}]
sinks: [{{name: out, type: stdout}}]
""")
        held = serial.Serial(gateway_end, exclusive=True)  # as the running daemon holds it
        try:
            rc, out, err = await cli("read", "-c", str(path))
        finally:
            held.close()
    assert rc == 1
    assert f"serial port {gateway_end} is busy: the gateway service (or another program) has it open" in out
    assert "Traceback" not in out + err


async def test_scan_finds_the_units_on_a_line_and_the_profiles_that_fit(tmp_path: Path) -> None:
    meters = [
        SimMeter(1, profiles()["eastron_sdm630"].points, three_phase),
        SimMeter(3, profiles()["carlo_gavazzi_em24"].points, three_phase),
        SimMeter(4, profiles()["abb_b23"].points, three_phase),
        fixed("xy_md02", {Q.VALUE: 21.7}, 6),
    ]
    server = await MeterServer(meters).start_tcp()
    try:
        rc, out, err = await cli("scan", "--host", "127.0.0.1", "--port", str(server.port), "--units", "1-7",
                                 "--timeout", "200ms")
    finally:
        await server.stop()
    assert rc == 0, err
    lines = out.splitlines()
    assert any(x.startswith("unit 1: answers; fits eastron_sdm630") for x in lines), out
    assert any(x.startswith("unit 3: answers; fits carlo_gavazzi_em24") for x in lines), out
    assert any(x.startswith("unit 4: answers; fits abb_b23") for x in lines), out
    assert any(x.startswith("unit 6: answers; fits xy_md02") for x in lines), out
    assert not any(x.startswith(("unit 2", "unit 5", "unit 7")) for x in lines)
    assert "  - {name: meter-3, type: modbus, bus: modbus-tcp, unit: 3, profile: carlo_gavazzi_em24, interval: 1m}" \
        in lines


async def test_scan_of_an_empty_line_says_what_to_check(tmp_path: Path) -> None:
    server = await MeterServer([]).start_tcp()
    try:
        rc, out, _ = await cli("scan", "--host", "127.0.0.1", "--port", str(server.port), "--units", "1-3",
                               "--timeout", "100ms")
    finally:
        await server.stop()
    assert rc == 1
    assert "no unit answered" in out and "A/B swapped?" in out


async def test_scan_refuses_a_bad_argument_in_one_line() -> None:
    rc, _, err = await cli("scan", "--host", "127.0.0.1", "--timeout", "3")
    assert rc == 1 and err.strip() == "meter-gateway: scan --timeout: '3' is not a duration such as 500ms, 30s, 5m," \
                                      " 1h or 1h30m"
    rc, _, err = await cli("scan", "--host", "127.0.0.1", "--units", "1-300")
    assert rc == 1 and "unit ids are 0 to 255" in err


async def test_profiles_lists_the_built_in_ones_and_shows_one() -> None:
    rc, out, _ = await cli("profiles")
    assert rc == 0
    for name in ("eastron_sdm630", "eastron_sdm120", "eastron_sdm72dm_v2", "carlo_gavazzi_em24",
                 "carlo_gavazzi_em340", "abb_b23", "janitza_b23", "siemens_pac2200", "xy_md02"):
        assert name in out
    rc, out, _ = await cli("profiles", "abb_b23")
    assert rc == 0
    assert "manual:  ABB B-series EQ meters user manual" in out
    assert "energy_import_total    holding   0x5000 (20480) uint64   big          10 Wh n/a=0xFFFFFFFFFFFFFFFF" in out
    # A model name (a rebadge too) finds the profile that reads it, written any which way.
    rc, out, _ = await cli("profiles", "Kostal KEM-P")
    assert rc == 0 and out.startswith("eastron_sdm630: Eastron SDM630") and "Kostal KEM-P" in out
    rc, out, _ = await cli("profiles", "abb b24")
    assert rc == 0 and out.startswith("abb_b23: ABB B23")
    rc, _, err = await cli("profiles", "abb_b99")
    assert rc == 1 and "no profile or model named 'abb_b99'" in err


async def test_check_shows_the_planned_requests_of_each_meter(tmp_path: Path) -> None:
    rc, out, err = await cli("check", "-c", str(config(tmp_path, 1502)))
    assert rc == 0, err
    assert "cabinet              tcp 127.0.0.1:1502, timeout 500ms" in out
    assert "3 requests per poll for 35 values" in out
    assert "FC4 0x0000 x76 (25 values; 26 unused registers read across): voltage_l1" in out


@pytest.mark.parametrize("seconds", [4])
async def test_demo_reads_simulated_modbus_meters_and_prints_their_readings(tmp_path: Path, seconds: int) -> None:
    rc, out, err = await cli("demo", "--duration", str(seconds), "--interval", "1s", "--state-dir",
                             str(tmp_path / "demo"), within=30)
    assert rc == 0, err
    assert "simulated SDM630 on 127.0.0.1:" in err
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    readings = [r for r in lines if "meter" in r]
    main = [r for r in readings if r["meter"] == "demo-main"]
    gas = [r for r in readings if r["meter"] == "demo-gas"]
    assert len(main) >= seconds - 1 and len(gas) >= seconds - 1
    assert len(main[0]["values"]) == len(profiles()["eastron_sdm630"].points)
    assert 200 < main[0]["values"]["voltage_l1"] < 260
    assert gas[-1]["values"]["value"] >= gas[0]["values"]["value"] > 0
    # What each platform would receive, built by the real sinks (dry run).
    posts = [r for r in lines if r.get("sink") == "wattics"]
    elec = next(p["body"] for p in posts if p["body"]["id"] == "demo-electrical")
    assert set(elec) >= {"id", "tsISO8601", "aP_1", "aP_2", "aP_3", "v_1", "c_1", "pC_1", "v_12"}
    assert any(p["body"]["id"] == "demo-gas-volume" and set(p["body"]) == {"id", "tsISO8601", "value"}
               for p in posts)
    event = next(r for r in lines if r.get("sink") == "voltaware")
    assert event["would"] == "PUBLISH" and event["topic"] == "meters/0001/events" and event["qos"] == 2
    same = next(r for r in main if r["ts"] == event["payload"]["timestamp"])
    assert event["payload"]["voltage_v"] == same["values"]["voltage_l1"]
    assert event["payload"]["active_power_w"] == same["values"]["power_active_total"]
    # The archive sink gets the same readings (those still queued at the stop go at the next start).
    archived = [json.loads(line) for line in (tmp_path / "demo" / "archive.jsonl").read_text().splitlines()]
    printed = {(r["meter"], r["ts_ms"]) for r in readings}
    assert archived and all((r["meter"], r["ts_ms"]) in printed for r in archived)


async def test_scan_on_a_serial_line(tmp_path: Path) -> None:
    with pty_pair(tmp_path) as (meter_end, gateway_end):
        server = await MeterServer([SimMeter(2, profiles()["eastron_sdm630"].points, three_phase)]).start_serial(
            meter_end)
        try:
            rc, out, err = await cli("scan", "--serial", gateway_end, "--units", "1-3", "--timeout", "200ms")
        finally:
            await server.stop()
    assert rc == 0, err
    assert out.startswith("unit 2: answers; fits eastron_sdm630"), out
    assert f"  - {{name: rs485, type: serial, port: {gateway_end}, baudrate: 9600, parity: N, stopbits: 1}}" in out


async def test_scan_through_an_rtu_over_tcp_converter() -> None:
    meters = [SimMeter(5, profiles()["carlo_gavazzi_em340"].points, three_phase)]
    server = await MeterServer(meters).start_tcp(framer="rtu")
    try:
        rc, out, err = await cli("scan", "--host", "127.0.0.1", "--port", str(server.port), "--rtu-over-tcp",
                                 "--units", "4-6", "--timeout", "200ms")
    finally:
        await server.stop()
    assert rc == 0, err
    assert out.startswith("unit 5: answers; fits carlo_gavazzi_em340"), out
    assert f"  - {{name: converter, type: rtu_over_tcp, host: 127.0.0.1, port: {server.port}}}" in out


# ---------------------------------------------------------------- commissioning


def eastron(unit: int, profile: str, serial: int) -> SimMeter:
    p = profiles()[profile]
    return SimMeter(unit, p.points, lambda t: three_phase(t, unit), profile=p.spec, serial=serial, holes=True)


async def test_set_address_checks_then_changes_and_verifies_the_meter(tmp_path: Path) -> None:
    with pty_pair(tmp_path) as (meter_end, gateway_end):
        server = await MeterServer([eastron(1, "eastron_sdm630", 12345678), eastron(5, "eastron_sdm120", 777),
                                    fixed("xy_md02", {Q.VALUE: 21.7}, 7)]).start_serial(meter_end)
        line = ("--serial", gateway_end, "--timeout", "300ms")
        try:
            # Without --yes: the checks, and what it would do; nothing written.
            rc, out, err = await cli("set-address", *line, "--unit", "1", "--to", "9", "--profile", "Kostal KEM-P")
            assert rc == 0, err
            assert "unit 1 on " in out and "one meter answers, Eastron SDM630, serial 12345678" in out
            assert "would write 9 to holding register 0x0014 (float32) of unit 1" in out
            assert "nothing written: run again with --yes" in out and server.renumbered == {}
            # A unit id in use, a device of another kind, a model without the register, a dead unit: refused.
            rc, _, err = await cli("set-address", *line, "--unit", "1", "--to", "5", "--profile", "eastron_sdm630",
                                   "--yes")
            assert rc == 1 and "unit 5 is taken: a device answers there already" in err
            rc, _, err = await cli("set-address", *line, "--unit", "7", "--to", "8", "--profile", "eastron_sdm630")
            assert rc == 1 and "the device at unit 7 does not read as a Eastron SDM630" in err
            rc, _, err = await cli("set-address", *line, "--unit", "7", "--to", "8", "--profile", "xy_md02")
            assert rc == 1 and "knows no register for the unit id: set it on the meter itself" in err
            rc, _, err = await cli("set-address", *line, "--unit", "3", "--to", "8", "--profile", "eastron_sdm630")
            assert rc == 1 and "no meter answers at unit 3" in err
            server.wrong_function.add(5)  # answers that do not match the request: two devices on one id look so
            rc, _, err = await cli("set-address", *line, "--unit", "5", "--to", "8", "--profile", "eastron_sdm120")
            assert rc == 1 and "answers at unit 5 are garbled" in err and "two devices may share" in err
            server.wrong_function.clear()
            # With --yes: written, and verified where it now answers, as the same meter; the old id is silent.
            rc, out, err = await cli("set-address", *line, "--unit", "1", "--to", "9", "--profile", "eastron_sdm630",
                                     "--yes")
            assert rc == 0, err
            assert "written: write 9 to holding register 0x0014 (float32) of unit 1" in out
            assert "verified: the meter answers at unit 9 (serial 12345678, the same)" in out
            assert "unit 1: no longer answers" in out
            assert server.renumbered == {9: 1}
            # scan finds it there, with its serial number.
            rc, out, err = await cli("scan", *line, "--units", "1,5,9")
            assert rc == 0, err
            assert "unit 9: answers; fits eastron_sdm630" in out and "serial 12345678" in out
            # (the SDM230 reads the very same registers as the SDM120: either may come first)
            assert "unit 5: answers; fits eastron_sdm" in out and "serial 777" in out
            assert "unit 1:" not in out
        finally:
            await server.stop()


async def test_set_baudrate_writes_the_models_code_and_reads_the_meter_back(tmp_path: Path) -> None:
    # A line that carries bytes only between ends at one speed: the meter is verified at its new rate for real.
    link = RateCheckedLine(tmp_path)
    sdm630, sdm120 = eastron(1, "eastron_sdm630", 4242), eastron(2, "eastron_sdm120", 99)
    server = await MeterServer([sdm630, sdm120]).start_serial(link.meter)
    line = ("--serial", link.gateway, "--timeout", "300ms")
    try:
        rc, out, err = await cli("set-baudrate", *line, "--unit", "2", "--to", "19200", "--profile",
                                 "eastron_sdm120", "--yes")
        assert rc == 1 and "cannot be set to 19200 baud (it knows: 1200, 2400, 4800, 9600)" in err
        rc, out, err = await cli("set-baudrate", *line, "--unit", "1", "--to", "19200", "--profile",
                                 "eastron_sdm630")
        assert rc == 0 and "would write code 3 (19200 baud)" in out and "other meters on this line stay" in out
        assert sdm630.baud_code_written is None and link.dropped == 0
        rc, out, err = await cli("set-baudrate", *line, "--unit", "1", "--to", "19200", "--profile",
                                 "eastron_sdm630", "--yes")
        assert rc == 0, err
        assert sdm630.baud_code_written == 3  # the SDM630's code for 19200 (its manual's table)
        assert link.speeds()[0] == termios.B19200  # the meter's end of the line changed speed
        assert "verified: the meter answers at unit 1 at 19200 baud (serial 4242, the same)" in out
        assert "set the bus's baudrate to 19200 in the configuration" in out
        # At the old rate the meter is gone (what reaches it is noise); at the new one, it is found.
        rc, out, err = await cli("scan", *line, "--units", "1")
        assert "unit 1: answers" not in out and link.dropped > 0
        rc, out, err = await cli("scan", *line, "--baudrate", "19200", "--units", "1")
        assert rc == 0 and "unit 1: answers; fits eastron_sdm630" in out, out + err
        rc, _, err = await cli("set-baudrate", "--host", "127.0.0.1", "--rtu-over-tcp", "--unit", "1", "--to",
                               "19200", "--profile", "eastron_sdm630")
        assert rc == 1 and "serial-to-TCP converter" in err
    finally:
        await server.stop()
        link.close()


async def test_a_meter_that_takes_its_new_rate_only_after_a_restart_is_told_apart(tmp_path: Path) -> None:
    link = RateCheckedLine(tmp_path)
    meter = eastron(1, "eastron_sdm630", 4242)
    meter.switches_rate = False
    server = await MeterServer([meter]).start_serial(link.meter)
    line = ("--serial", link.gateway, "--timeout", "300ms")
    try:
        rc, out, err = await cli("set-baudrate", *line, "--unit", "1", "--to", "19200", "--profile",
                                 "eastron_sdm630", "--yes")
        assert rc == 1 and meter.baud_code_written == 3
        assert "accepted the change but does not answer at unit 1 at 19200 baud" in err and "power-cycle it" in err
        assert link.speeds()[0] == termios.B9600 and link.dropped > 0
        rc, out, err = await cli("scan", *line, "--units", "1")  # still there at the old rate
        assert rc == 0 and "unit 1: answers; fits eastron_sdm630" in out, out + err
    finally:
        await server.stop()
        link.close()
