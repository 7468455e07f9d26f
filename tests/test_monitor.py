"""The metrics and health listener: after a scripted run (a meter failing, a sink down then up, a bus going quiet),
``/metrics`` says what the peers saw happen, and ``/health`` goes 503 and back to 200 as conditions change."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import status
from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.errors import ConfigError
from gateway.platforms.modbus.simulator import MeterServer
from gateway.platforms.modbus.source import ModbusSource
from gateway.sdnotify import SdNotify
from gateway.timekeeper import TimeKeeper
from tests.helpers.mosquitto import free_port
from tests.helpers.wattics_emulator import WatticsEmulator
from tests.test_modbus_source import sim
from tests.test_time import Manual, Probe


@contextlib.asynccontextmanager
async def running(tmp_path: Path, text: str, keeper: TimeKeeper | None = None) -> AsyncIterator[Gateway]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    gw = Gateway(load_config(path), path, SdNotify(None), keeper)
    task = asyncio.create_task(gw.run())
    try:
        await until(lambda: gw.monitor is not None and gw.sources != [])
        yield gw
    finally:
        gw.stop()
        await asyncio.wait_for(task, 20)


def wattics_sink(emu: WatticsEmulator) -> str:
    """The sinks section's first lines for a Wattics sink on the emulator (its data points and tuning follow)."""
    return f"""sinks:
  - name: wattics
    type: wattics
    url: {emu.url}
    username: gateway
    password: s3cret-pass
    ca_file: {emu.ca_file}
"""


async def until(pred: Callable[[], Any], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def get(port: int, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as c:
        return await c.get(f"http://127.0.0.1:{port}{path}")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return m[(name, tuple(sorted(labels.items())))]


async def test_metrics_after_a_scripted_run_equal_what_the_peers_saw(tmp_path: Path) -> None:
    port = free_port()
    emu = WatticsEmulator(tmp_path / "certs").start()
    server = await MeterServer([sim(1), sim(2)]).start_tcp()
    server.exceptions[2] = 4  # the second meter answers every request with "server device failure"
    emu.answer(503, times=10**6)  # the platform is down from the start
    try:
        async with running(tmp_path, f"""\
state_dir: {tmp_path}
monitoring: {{enabled: true, port: {port}, sink_stalled_after: 1s}}
buses: [{{name: b, type: tcp, host: 127.0.0.1, port: {server.port}, timeout: 300ms}}]
meters:
  - {{name: good, type: modbus, bus: b, unit: 1, profile: eastron_sdm630, interval: 200ms}}
  - {{name: bad, type: modbus, bus: b, unit: 2, profile: eastron_sdm630, interval: 200ms}}
{wattics_sink(emu)}    backoff_base: 20ms
    backoff_cap: 200ms
    data_points: [{{id: elec-1, meter: good, format: electrical}}]
""") as gw:
            await until(lambda: bool(gw.forwarders) and gw.forwarders[0].last_error is not None)
            await asyncio.sleep(1.2)  # longer than sink_stalled_after since it started failing
            health = await get(port, "/health")
            assert health.status_code == 503
            problems = health.json()["problems"]
            assert [p["check"] for p in problems] == ["sink_stalled"], "one meter answering: the bus is not down"
            assert problems[0]["sink"] == "wattics" and "503" in problems[0]["detail"]

            emu.clear_faults()  # the platform is back
            await until(lambda: emu.count() >= 20)
            await until_healthy(port)

            server.silent = {1, 2}  # the bus goes quiet: no new reading, the backlog drains
            await asyncio.sleep(1.0)
            newest = (await gw.queue.snapshot({})).last_ts["good"]
            await until(lambda: gw.forwarders[0].last_sent.get("wattics#elec-1", {}).get("ts_ms") == newest)
            await asyncio.sleep(0.5)  # acknowledgements are committed lazily
            health = await get(port, "/health")
            assert health.status_code == 503
            assert [p["check"] for p in health.json()["problems"]] == ["bus_down"]
            text = (await get(port, "/metrics")).text
            m = samples(text)
            stats = emu.stats()
            assert value(m, "meter_gateway_sink_delivered_total", sink="wattics") == stats["packets"]
            assert value(m, "meter_gateway_sink_retried_total", sink="wattics") == stats["requests"] - stats["packets"]
            assert value(m, "meter_gateway_readings_total", meter="good") == stats["per_id"]["elec-1"]
            assert value(m, "meter_gateway_readings_total", meter="bad") == 0
            assert value(m, "meter_gateway_read_errors_total", meter="bad", kind="exception") \
                == server.exception_replies[2] > 0
            assert value(m, "meter_gateway_queue_depth", sink="wattics") == 0
            assert value(m, "meter_gateway_meter_failing", meter="good") == 1
            assert value(m, "meter_gateway_read_errors_total", meter="good", kind="timeout") >= 1
            # a silent meter's poll waits out its 300 ms timeout: longer than the 200 ms interval
            assert value(m, "meter_gateway_ticks_skipped_total", meter="good") >= 1
            assert value(m, "meter_gateway_dead_letters", sink="wattics") == 0
            assert value(m, "meter_gateway_clock_synchronised") == 1
            assert value(m, "meter_gateway_health_problems") == 1
            assert value(m, "process_resident_memory_bytes") > 10e6
            assert stats["duplicates"] == stats["out_of_order"] == 0

            server.silent = set()
            await until_healthy(port)
    finally:
        await server.stop()
        emu.stop()


async def test_health_says_when_meters_that_answer_skip_ticks(tmp_path: Path) -> None:
    """A meter that answers, but too slowly for its interval, loses readings without failing: /health says so
    (status and /metrics count them), and says nothing once its polls fit in the interval again."""
    port = free_port()
    slow, fine = sim(1), sim(2)
    slow.delay = 0.25  # three requests a poll: 0.75 s, past the next tick of a 500 ms interval
    server = await MeterServer([slow, fine]).start_tcp()
    try:
        async with running(tmp_path, f"""\
state_dir: {tmp_path}
monitoring: {{enabled: true, port: {port}, ticks_skipped_within: 2s}}
buses:
  - {{name: a, type: tcp, host: 127.0.0.1, port: {server.port}, timeout: 2s}}
  - {{name: b, type: tcp, host: 127.0.0.1, port: {server.port}, timeout: 2s}}
meters:
  - {{name: slow, type: modbus, bus: a, unit: 1, profile: eastron_sdm630, interval: 500ms, timeout: 400ms}}
  - {{name: fine, type: modbus, bus: b, unit: 2, profile: eastron_sdm630, interval: 500ms}}
sinks: [{{name: out, type: file, path: {tmp_path}/out.jsonl}}]
""") as gw:
            deadline = time.monotonic() + 15
            while (health := await get(port, "/health")).status_code != 503:
                assert time.monotonic() < deadline, "no problem reported while ticks are skipped"
                await asyncio.sleep(0.2)
            problems = health.json()["problems"]
            assert [p["check"] for p in problems] == ["ticks_skipped"]
            assert problems[0]["meters"] == ["slow"] and problems[0]["skipped"] >= 1
            m = samples((await get(port, "/metrics")).text)
            assert value(m, "meter_gateway_ticks_skipped_total", meter="slow") >= 1
            assert value(m, "meter_gateway_ticks_skipped_total", meter="fine") == 0
            assert value(m, "meter_gateway_meter_failing", meter="slow") == 0, "it answers: not failing"
            assert value(m, "meter_gateway_readings_total", meter="slow") > 0
            # status: how long each meter's answers take, and the slow one said slow (its answers take more than
            # half of its own 400 ms timeout).
            report = await gw.snapshot()
            assert report["meters"]["slow"]["answer_ms"]["p50"] >= 250
            assert report["meters"]["slow"]["answer_ms"]["timeout"] == 400
            assert report["meters"]["fine"]["answer_ms"]["p99"] < 250
            shown = status.render(report).splitlines()
            row = next(i for i, line in enumerate(shown) if line.startswith("slow "))
            assert " ms " in shown[row] and "answers slowly: 1 answer in 100 takes" in shown[row + 1], shown
            assert not any("answers slowly" in line for line in shown if line.startswith("fine "))

            slow.delay = 0.0  # its polls fit again: healthy once the last skip is older than 2 s
            await until_healthy(port)
    finally:
        await server.stop()


async def test_a_meter_slowed_by_a_silent_neighbour_is_not_blamed(tmp_path: Path) -> None:
    """Two meters on one line, one of them silent: the other waits out its neighbour's timeouts and skips ticks
    (counted), but /health does not call it too slow for its interval: the silent meter is the cause, and is
    reported failing. Found by CI: a meter that had just answered again was flagged for 15 minutes."""
    port = free_port()
    server = await MeterServer([sim(1), sim(2)]).start_tcp()
    server.silent = {2}
    try:
        async with running(tmp_path, f"""\
state_dir: {tmp_path}
monitoring: {{enabled: true, port: {port}}}
buses: [{{name: b, type: tcp, host: 127.0.0.1, port: {server.port}, timeout: 400ms, retry_cap: 200ms}}]
meters:
  - {{name: fine, type: modbus, bus: b, unit: 1, profile: eastron_sdm630, interval: 200ms}}
  - {{name: dead, type: modbus, bus: b, unit: 2, profile: eastron_sdm630, interval: 200ms}}
sinks: [{{name: out, type: file, path: {tmp_path}/out.jsonl}}]
""") as gw:
            source = gw.sources[0]
            assert isinstance(source, ModbusSource)
            fine = next(p for p in source.pollers if p.meter.name == "fine")
            # the dead meter's 400 ms timeouts hold the line past fine's next tick, again and again
            await until(lambda: fine.counts["skipped_ticks"] >= 3 and fine.counts["readings"] >= 3)
            m = samples((await get(port, "/metrics")).text)
            assert value(m, "meter_gateway_meter_failing", meter="dead") == 1
            assert value(m, "meter_gateway_meter_failing", meter="fine") == 0
            assert value(m, "meter_gateway_ticks_skipped_total", meter="fine") >= 3, "counted all the same"
            health = await get(port, "/health")
            assert "ticks_skipped" not in [p["check"] for p in health.json()["problems"]], health.json()
            assert fine.skipped_at_ms is None
    finally:
        await server.stop()


async def test_health_says_when_a_platform_delivers_more_slowly_than_readings_come(tmp_path: Path) -> None:
    """A platform that answers, but slowly: nothing stalls, yet readings wait longer and longer. /health says
    sink_behind (not sink_stalled), and nothing once it keeps up again."""
    port = free_port()
    emu = WatticsEmulator(tmp_path / "certs", latency=0.25).start()  # 4 packets a second at most, 10 readings come
    try:
        async with running(tmp_path, f"""\
state_dir: {tmp_path}
monitoring: {{enabled: true, port: {port}, sink_behind_after: 3s}}
meters: [{{name: m1, type: simulated, interval: 100ms}}]
{wattics_sink(emu)}    data_points: [{{id: e-1, meter: m1}}]
"""):
            deadline = time.monotonic() + 20
            while (health := await get(port, "/health")).status_code != 503:
                assert time.monotonic() < deadline, "no problem reported while readings wait longer and longer"
                await asyncio.sleep(0.2)
            (problem,) = health.json()["problems"]
            assert problem["check"] == "sink_behind" and problem["sink"] == "wattics"
            assert problem["oldest_age_s"] >= 3 and emu.count() > 0, "it delivers: not stalled"
            emu.latency = 0.0  # it keeps up again: the backlog drains
            await until_healthy(port, within=30)
    finally:
        emu.stop()


async def until_healthy(port: int, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while (r := await get(port, "/health")).status_code != 200:
        assert time.monotonic() < deadline, f"still unhealthy: {r.json()['problems']}"
        await asyncio.sleep(0.2)


async def test_health_follows_the_clock_and_the_queue_bound(tmp_path: Path) -> None:
    port = free_port()
    clock, probe = Manual(1_000_000.0), Probe(False)
    keeper = TimeKeeper("require", clock.wall, clock.mono, probe)
    async with running(tmp_path, f"""\
state_dir: {tmp_path}
monitoring: {{enabled: true, port: {port}, clock_unsynced_after: 10m}}
queue: {{max_size: 200kB}}
meters: [{{name: a, type: simulated, interval: 1h}}]
sinks: [{{name: archive, type: file, path: {tmp_path}/archive.jsonl}}]
""", keeper):
        assert (await get(port, "/health")).status_code == 200, "not synchronised, but not for long yet"
        clock.advance(601)
        r = await get(port, "/health")
        assert r.status_code == 503 and r.json()["problems"][0]["check"] == "clock_unsynchronised"
        probe.synced = True
        keeper.check()
        assert (await get(port, "/health")).status_code == 200
        # Fill the queue file towards its bound: readings nobody can deliver yet pile up.
        fill_queue_file(tmp_path)
        r = await get(port, "/health")
        assert r.status_code == 503 and [p["check"] for p in r.json()["problems"]] == ["queue_near_full"]
        head = await httpx.AsyncClient().head(f"http://127.0.0.1:{port}/health")
        assert head.status_code == 503 and head.content == b""
        assert (await get(port, "/nope")).status_code == 404


def fill_queue_file(tmp_path: Path) -> None:
    """Ballast in the queue file, written beside the daemon (WAL lets a second writer in between its commits)."""
    import sqlite3

    db = sqlite3.connect(tmp_path / "queue.db", timeout=10)
    db.execute("CREATE TABLE IF NOT EXISTS ballast (b BLOB)")
    db.execute("INSERT INTO ballast VALUES (zeroblob(190000))")
    db.commit()
    db.close()


def test_the_listener_stays_on_loopback_unless_asked(tmp_path: Path) -> None:
    base = f"state_dir: {tmp_path}\nmeters: [{{name: a, type: simulated}}]\nsinks: [{{name: o, type: stdout}}]\n"
    path = tmp_path / "c.yaml"
    path.write_text(base + "monitoring:\n  enabled: true\n  host: 0.0.0.0\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    (line,) = e.value.problems
    assert line.startswith(f"{path}:4: monitoring") and "not loopback" in line and "allow_remote: true" in line
    path.write_text(base + "monitoring: {enabled: true, host: 0.0.0.0, allow_remote: true}\n")
    assert load_config(path).monitoring.host == "0.0.0.0"
    path.write_text(base + "monitoring: {enabled: true, host: '::1'}\n")
    assert load_config(path).monitoring.host == "::1"


def test_a_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        path = tmp_path / "c.yaml"
        path.write_text(f"state_dir: {tmp_path}\nmonitoring: {{enabled: true, port: {port}}}\n"
                        "meters: [{name: a, type: simulated}]\nsinks: [{name: o, type: stdout}]\n")
        p = subprocess.run([sys.executable, "-m", "gateway", "run", "-c", str(path)], capture_output=True, text=True,
                           timeout=30)
    assert p.returncode != 0
    assert f"cannot listen for monitoring on 127.0.0.1:{port}" in p.stderr
    assert "Traceback" not in p.stderr
