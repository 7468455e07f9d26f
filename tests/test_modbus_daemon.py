"""The daemon reading Modbus meters as a deployed gateway does, killed with SIGKILL again and again.

Three meters on a Modbus TCP bus (an SDM630, an EM24 and a gas meter with an inline register), a file sink, the
daemon as its own process. While one meter goes silent and comes back, the daemon is killed at random moments and
restarted. Per meter the archive is in chronological order (a reading sent again after a kill repeats an earlier
one; nothing new ever comes out of order), and every tick of a meter that answered, while the daemon ran, is there.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway.config import load_config
from gateway.config.models import ModbusMeterConfig
from gateway.platforms.modbus.registers import Point
from gateway.platforms.modbus.simulator import SimMeter
from gateway.platforms.simulated.source import single_value, three_phase
from gateway.quantities import Quantity as Q
from tests.helpers.daemon import Daemon, read_jsonl
from tests.helpers.modbus import ServerThread, profiles

GAS_POINT = Point(Q.VALUE, 0, "holding", "uint32", "big", 0.001)


def write_config(tmp_path: Path, port: int, queue: str = "queue: {commit_interval: 1s}") -> Path:
    """``queue``: these runs last seconds, so readings reach the sinks within one, unless the test says otherwise."""
    path = tmp_path / "config.yaml"
    path.write_text(f"""\
state_dir: {tmp_path / 'state'}
{queue}
buses:
  - {{name: cabinet, type: tcp, host: 127.0.0.1, port: {port}, timeout: 300ms, retry_cap: 2s}}
meters:
  - {{name: incomer, type: modbus, bus: cabinet, unit: 1, profile: eastron_sdm630, interval: 500ms}}
  - {{name: feeder, type: modbus, bus: cabinet, unit: 2, profile: carlo_gavazzi_em24, interval: 500ms}}
  - name: gas
    type: modbus
    bus: cabinet
    unit: 3
    interval: 1s
    value_unit: m3
    registers: [{{quantity: value, address: 0, function: holding, type: uint32, scale: 0.001}}]
sinks:
  - {{name: archive, type: file, path: {tmp_path / 'archive.jsonl'}}}
""")
    return path


def status(path: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "gateway", "status", "-c", str(path), "--json"],
                         capture_output=True, text=True, timeout=30, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def assert_every_tick(rows: list[dict[str, Any]], windows: list[tuple[float, float]],
                      logs: list[dict[str, Any]]) -> None:
    """Nothing lost: every 500 ms tick of the incomer while the daemon ran (after its first second, until one poll and
    its answers before the kill) is in the archive, or was reported skipped (a poll ran past it on this loaded 2-core
    machine: no reading was ever taken, and the daemon said so, with the tick). Counted per window, not tick by tick:
    a poll retried under load is stamped when its answer came, which can be in the next tick's slot (that tick then
    being reported skipped). A lost reading leaves the count short."""
    skipped = {e["first_skipped_ms"] + i * 500 for e in logs if e.get("meter") == "incomer" and "skipped" in e
               for i in range(e["skipped"])}
    incomer = {r["ts_ms"] for r in rows if r["meter"] == "incomer"}
    for ready, killed in windows:
        ticks = range(int((ready + 1.0) * 2) + 1, int((killed - 0.6) * 2))
        start, end = ticks.start * 500, ticks.stop * 500
        read = {ts for ts in incomer if start <= ts < end}
        skips = {ts for ts in skipped if start <= ts < end}
        assert len(read) + len(skips) >= len(ticks), (
            f"between {ready:.1f} and {killed:.1f}: {len(ticks)} ticks, {len(read)} readings, skipped {sorted(skips)}")


def test_modbus_readings_survive_sigkill_in_order_while_a_meter_fails_and_recovers(tmp_path: Path) -> None:
    rng = random.Random(8)
    meters = [
        SimMeter(1, profiles()["eastron_sdm630"].points, three_phase),
        SimMeter(2, profiles()["carlo_gavazzi_em24"].points, lambda t: three_phase(t, 1)),
        SimMeter(3, (GAS_POINT,), lambda t: single_value("gas", t)),
    ]
    windows: list[tuple[float, float]] = []  # when the daemon was up: (ready, killed)
    logs: list[dict[str, Any]] = []
    with ServerThread(meters) as server:
        path = write_config(tmp_path, server.port)
        gas = next(m for m in load_config(path).meters if m.name == "gas")
        assert isinstance(gas, ModbusMeterConfig) and gas.points == (GAS_POINT,)

        with Daemon(path).start() as d:
            ready = time.time()
            time.sleep(1.5)
            server.call(lambda s: s.silent.add(2))
            time.sleep(2.0)
            feeder = status(path)["meters"]["feeder"]
            assert feeder["failing"] and "no answer within 0.3s" in feeder["last_problem"], feeder
            assert feeder["read_errors"]["timeout"] >= 1
            windows.append((ready, time.time()))
            d.kill()
            logs += d.events()
        for i in range(6):
            with Daemon(path).start() as d:
                ready = time.time()
                if i == 2:
                    server.call(lambda s: s.silent.discard(2))
                time.sleep(rng.uniform(1.0, 2.5))
                windows.append((ready, time.time()))
                d.kill()
                logs += d.events()
        with Daemon(path).start() as d:
            ready = time.time()
            time.sleep(2.0)
            assert not status(path)["meters"]["feeder"]["failing"]
            windows.append((ready, time.time()))
            rc, _ = d.stop()
            assert rc == 0
            logs += d.events()

    rows = read_jsonl(tmp_path / "archive.jsonl")
    for name in ("incomer", "feeder", "gas"):
        ts = [r["ts_ms"] for r in rows if r["meter"] == name]
        seen: set[int] = set()
        newest = -1
        for t in ts:
            assert t > newest or t in seen, f"{name}: {t} is new yet older than {newest}: out of order"
            seen.add(t)
            newest = max(newest, t)
        assert len(ts) - len(seen) <= 4 * len(windows), f"{name}: {len(ts) - len(seen)} sent again"
    assert_every_tick(rows, windows, logs)
    assert all(len(r["values"]) == len(profiles()["eastron_sdm630"].points) for r in rows if r["meter"] == "incomer")
    # In time order (a re-sent reading after a kill repeats an earlier one in the file: at-least-once).
    gas = dict(sorted((r["ts_ms"], r["values"]["value"]) for r in rows if r["meter"] == "gas"))
    assert list(gas.values()) == sorted(gas.values()), "a counter never goes back"
    feeder_ts = sorted({r["ts_ms"] for r in rows if r["meter"] == "feeder"})
    assert feeder_ts and feeder_ts[-1] > windows[-1][0] * 1000, "the feeder is read again after it came back"


def test_a_sigkill_loses_no_reading_taken_at_the_default_commit_interval(tmp_path: Path) -> None:
    """Every run is killed before its first commit (5 s by default): what was read survives all the same, from the
    queue's journal (the kernel holds what the process wrote). The gap before a kill is one poll, not 5 s."""
    rng = random.Random(23)
    meters = [SimMeter(1, profiles()["eastron_sdm630"].points, three_phase),
              SimMeter(2, profiles()["carlo_gavazzi_em24"].points, lambda t: three_phase(t, 1)),
              SimMeter(3, (GAS_POINT,), lambda t: single_value("gas", t))]
    windows: list[tuple[float, float]] = []
    logs: list[dict[str, Any]] = []
    with ServerThread(meters) as server:
        path = write_config(tmp_path, server.port, queue="")
        for _ in range(4):
            with Daemon(path).start() as d:
                ready = time.time()
                time.sleep(rng.uniform(2.0, 4.0))
                windows.append((ready, time.time()))
                d.kill()
                logs += d.events()
        with Daemon(path).start() as d:
            ready = time.time()
            time.sleep(2.0)
            windows.append((ready, time.time()))
            rc, _ = d.stop()  # what it read since its last commit is committed at the stop, and delivered ...
            assert rc == 0
            logs += d.events()
        with Daemon(path).start() as d:  # ... by the next run
            time.sleep(3.0)
            rc, _ = d.stop()
            assert rc == 0
            logs += d.events()
    # Most kills leave readings not yet committed (a commit forced by a forwarder's prompt write may have taken all
    # of them just before a kill: then there is nothing to put back, and nothing lost either).
    assert any("put back from the queue's journal" in e.get("event", "") for e in logs)
    assert_every_tick(read_jsonl(tmp_path / "archive.jsonl"), windows, logs)


def test_a_reload_that_changes_only_a_bus_moves_its_meters_to_the_new_line(tmp_path: Path) -> None:
    import signal

    points = profiles()["eastron_sdm630"].points
    with ServerThread([SimMeter(1, points, {Q.VOLTAGE_L1: 230.0})]) as old, \
            ServerThread([SimMeter(1, points, {Q.VOLTAGE_L1: 240.0})]) as new:
        path = tmp_path / "config.yaml"
        text = f"""\
state_dir: {tmp_path / 'state'}
queue: {{commit_interval: 1s}}  # these runs last seconds: readings reach the sinks within one
buses: [{{name: cabinet, type: tcp, host: 127.0.0.1, port: PORT}}]
meters: [{{name: incomer, type: modbus, bus: cabinet, unit: 1, profile: eastron_sdm630, interval: 500ms}}]
sinks: [{{name: archive, type: file, path: {tmp_path / 'archive.jsonl'}}}]
"""
        path.write_text(text.replace("PORT", str(old.port)))
        with Daemon(path).start() as d:
            time.sleep(1.5)
            path.write_text(text.replace("PORT", str(new.port)))
            hup = time.monotonic()
            d.signal(signal.SIGHUP)
            d.wait_log(lambda e: e.get("event") == "configuration reloaded")
            reload_ms = (time.monotonic() - hup) * 1000
            time.sleep(1.5)
            rc, _ = d.stop()
            assert rc == 0
    volts = [r["values"]["voltage_l1"] for r in read_jsonl(tmp_path / "archive.jsonl")]
    assert volts[0] == 230.0 and volts[-1] == 240.0
    assert volts == sorted(volts), "no reading from the old line after the first from the new one"
    ts = [r["ts_ms"] for r in read_jsonl(tmp_path / "archive.jsonl")]
    # The meter is read until the reload begins and within one interval (500 ms) of its end: no hole beyond the
    # reload itself (about 0.1 s on a quiet machine, more on a loaded one) and two intervals.
    assert max(b - a for a, b in itertools.pairwise(ts)) < reload_ms + 1000 + 200, "the reload left no hole"
