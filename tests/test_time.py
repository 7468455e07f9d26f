"""Time on a machine without a real-time clock: readings held until the clock is synchronised and re-stamped from
the monotonic clock, restarts before sync, clock steps both ways, a daylight-saving change.

The clocks are injected: ``Manual`` for exact arithmetic, ``Flowing`` (real time plus an offset a test can step, as
NTP would) where the gateway's own loops must run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.platforms.modbus.simulator import MeterServer
from gateway.platforms.modbus.source import ModbusSource
from gateway.quantities import Quantity
from gateway.queue import DiskQueue, MeterCount, QueueStore
from gateway.reading import Reading, local_iso
from gateway.sdnotify import SdNotify
from gateway.timekeeper import TimeKeeper
from tests.helpers.daemon import Daemon, read_jsonl
from tests.test_modbus_source import sim

TRUE_NOW = 1_795_000_000.0  # 2026-11-19: what the clock should say
BOOT_CLOCK = 1_000_000.0  # 1970-01-12: what a Raspberry Pi without RTC may say at boot


class Manual:
    def __init__(self, wall: float, mono: float = 1000.0) -> None:
        self.w, self.m = wall, mono

    def wall(self) -> float:
        return self.w

    def mono(self) -> float:
        return self.m

    def advance(self, s: float) -> None:
        self.w += s
        self.m += s


class Flowing:
    """Real time, with a wall-clock offset a test can step."""

    def __init__(self, wall_at: float | None = None) -> None:
        self.offset = 0.0 if wall_at is None else wall_at - time.time()

    def wall(self) -> float:
        return time.time() + self.offset

    def mono(self) -> float:
        return time.monotonic()

    def step(self, s: float) -> None:
        self.offset += s


class Probe:
    def __init__(self, synced: bool | None = False) -> None:
        self.synced = synced

    def __call__(self) -> bool | None:
        return self.synced


def r(meter: str, stamp: Any, power: float) -> Reading:
    return Reading(meter, stamp.ts_ms, {Quantity.POWER_ACTIVE_TOTAL: power}, stamp.synced, stamp.mono_ms)


def wire(keeper: TimeKeeper, queue: DiskQueue, out: list[Any]) -> None:
    """As the daemon does: the release is queued synchronously when the clock becomes trusted."""
    keeper.on_trusted = lambda off: queue.release_held(off).add_done_callback(
        lambda f: out.append(f.result()))


# ---------------------------------------------------------------- held and re-stamped: exact arithmetic


async def test_readings_before_sync_are_held_then_restamped_from_the_monotonic_clock_in_order(
        queue: DiskQueue) -> None:
    clock, probe = Manual(BOOT_CLOCK), Probe(False)
    keeper = TimeKeeper("require", clock.wall, clock.mono, probe)
    released: list[Any] = []
    wire(keeper, queue, released)
    await queue.configure({"sink": ["m"]})
    keeper.check()
    assert keeper.state == "unsynchronised" and not keeper.trusted
    true_times = []
    for i in range(5):
        result = await queue.append([r("m", keeper.stamp(), float(i))])
        assert result.accepted == 1 and not result.refused  # confirmed on disk, held
        true_times.append(round((TRUE_NOW + i * 10) * 1000))
        clock.advance(10)
    late = keeper.stamp()  # taken before sync, appended after it: re-stamped on arrival
    assert await queue.read("m", -1, 100) == [], "nothing leaves before the clock is trusted"
    assert (await queue.snapshot({})).held == 5

    clock.w = TRUE_NOW + 50  # NTP steps the clock to the truth
    probe.synced = True
    with structlog.testing.capture_logs() as logs:
        keeper.check()
    await queue.append([r("m", late, 5.0)])
    clock.advance(10)
    await queue.append([r("m", keeper.stamp(), 6.0)])
    got = await queue.read("m", -1, 100)
    assert [x.ts_ms for x in got] == [*true_times, round((TRUE_NOW + 50) * 1000), round((TRUE_NOW + 60) * 1000)]
    assert [x.values[Quantity.POWER_ACTIVE_TOTAL] for x in got] == [0, 1, 2, 3, 4, 5, 6]
    assert all(x.clock_synced for x in got)
    assert released[0].restamped == {"m": 5}
    step = next(e for e in logs if "stepped" in e["event"])
    assert step["event"] == "system clock stepped forward" and step["step_s"] == pytest.approx(TRUE_NOW - BOOT_CLOCK,
                                                                                                abs=1)
    counters = await queue.counters()
    assert counters.meter("m", MeterCount.HELD) == 5 and counters.meter("m", MeterCount.RESTAMPED) == 6
    assert (await queue.snapshot({})).held == 0


async def test_a_restart_before_sync_in_the_same_boot_still_restamps(tmp_path: Path) -> None:
    clock = Manual(BOOT_CLOCK)
    store = QueueStore(tmp_path / "q.db", clock=clock.wall, boot="boot-1")
    store.open()
    store.begin()
    store.configure({"sink": ["m"]})
    keeper = TimeKeeper("require", clock.wall, clock.mono, Probe(False))
    keeper.check()
    for i in range(3):
        store.append([r("m", keeper.stamp(), float(i))])
        clock.advance(1)
    store.commit()
    store.close()  # the gateway stops (or is killed) before the clock is synchronised; the machine keeps running

    store = QueueStore(tmp_path / "q.db", clock=clock.wall, boot="boot-1")
    store.open()
    store.begin()
    store.configure({"sink": ["m"]})
    assert store.release_held(None).held == 3, "same boot: kept for re-stamping"
    offset = round(TRUE_NOW * 1000) - round(clock.mono() * 1000)
    out = store.release_held(offset)
    store.commit()
    assert out.restamped == {"m": 3}
    assert [x.ts_ms for x in store.read("m", -1, 10)] == [round((TRUE_NOW - 3 + i) * 1000) for i in range(3)]
    store.close()


async def test_held_readings_of_an_earlier_boot_are_reported_never_sent_with_a_wrong_time(tmp_path: Path) -> None:
    clock = Manual(BOOT_CLOCK)
    store = QueueStore(tmp_path / "q.db", clock=clock.wall, boot="boot-1")
    store.open()
    store.begin()
    store.configure({"wattics": ["m"], "archive": ["m"]})
    keeper = TimeKeeper("require", clock.wall, clock.mono, Probe(False))
    keeper.check()
    store.append([r("m", keeper.stamp(), 1.0), r("m", (clock.advance(1), keeper.stamp())[1], 2.0)])
    store.commit()
    store.close()

    store = QueueStore(tmp_path / "q.db", clock=clock.wall, boot="boot-2")  # the machine rebooted
    store.open()
    store.begin()
    store.configure({"wattics": ["m"], "archive": ["m"]})
    out = store.release_held(None)
    store.commit()
    assert out.unstampable == {"m": 2}
    assert store.read("m", -1, 10) == [], "never queued for sending"
    letters = store.dead_letters()
    assert sorted(d.sink for d in letters) == ["archive", "archive", "wattics", "wattics"]
    assert all("earlier boot" in d.reason and "1970-01-12" in d.reason for d in letters)
    assert store.counters.meter("m", MeterCount.UNSTAMPABLE) == 2
    store.begin()
    assert store.mark_dead_letters(None, "retry") == 0, "a reading without a true time cannot be retried"
    store.commit()
    store.close()


async def test_held_readings_are_bounded_by_the_queue_size_when_the_clock_never_syncs(tmp_path: Path) -> None:
    clock = Manual(BOOT_CLOCK)
    store = QueueStore(tmp_path / "q.db", clock=clock.wall, max_size=300_000)
    store.open()
    keeper = TimeKeeper("require", clock.wall, clock.mono, Probe(False))
    keeper.check()
    for _ in range(40):
        store.begin()
        clock.advance(1)
        big = Reading("m2", 0, {q: 1.0 for q in Quantity if q is not Quantity.VALUE}, False,
                      round(clock.mono() * 1000))
        store.append([r("m", keeper.stamp(), 1.0), *[big] * 50])
        store.commit()
    lost: dict[str, int] = {}
    for _ in range(3):  # every 10 s in the daemon
        store.begin()
        for k, v in store.enforce_bounds().items():
            lost[k] = lost.get(k, 0) + v
        store.commit()
    held, _ = store.held_status()
    assert lost["held"] > 0 and held + lost["held"] == 40 * 51, "every held reading is kept or counted"
    assert store.counters.meter("m2", MeterCount.HELD_EVICTED) + store.counters.meter("m", MeterCount.HELD_EVICTED) == lost["held"]
    assert store.used_bytes() <= 300_000
    store.close()


async def test_time_sync_modes_decide_what_is_trusted() -> None:
    clock = Manual(TRUE_NOW)
    ignore = TimeKeeper("ignore", clock.wall, clock.mono, Probe(False))
    assert ignore.stamp().synced, "ignore: trusted from the start, whatever the probes say"
    auto = TimeKeeper("auto", clock.wall, clock.mono, Probe(None))
    auto.check()
    assert auto.trusted and auto.state == "trusted", "auto, nothing to ask: the clock is taken as it is"
    require = TimeKeeper("require", clock.wall, clock.mono, Probe(False))
    require.check()
    assert not require.stamp().synced and require.state == "unsynchronised"
    clock.advance(120)
    assert require.unsynced_for() == 120


# ---------------------------------------------------------------- the whole gateway, in process, clock injected


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, keeper: TimeKeeper, meters: str, extra: str = "") -> AsyncIterator[Gateway]:
    path = tmp_path / "config.yaml"
    path.write_text(f"""\
state_dir: {tmp_path}
queue: {{commit_interval: 1s}}  # these runs last seconds: readings reach the sinks within one
{extra}
meters:
{meters}
sinks:
  - {{name: archive, type: file, path: {tmp_path}/archive.jsonl}}
""")
    gw = Gateway(load_config(path), path, SdNotify(None), keeper)
    task = asyncio.create_task(gw.run())
    try:
        yield gw
    finally:
        gw.stop()
        await asyncio.wait_for(task, 20)


async def wait_for(pred: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_a_gateway_booted_at_1970_holds_readings_then_delivers_them_with_true_times(tmp_path: Path) -> None:
    clock, probe = Flowing(BOOT_CLOCK), Probe(False)
    keeper = TimeKeeper("require", clock.wall, clock.mono, probe)
    archive = tmp_path / "archive.jsonl"
    started = time.time()
    async with gateway(tmp_path, keeper, "  - {name: a, type: simulated, interval: 200ms}"):
        await asyncio.sleep(1.5)
        assert read_jsonl(archive) == [], "nothing is sent while the clock is not trusted"
        clock.step(-clock.offset)  # NTP: the wall clock is now the true time
        probe.synced = True
        await wait_for(lambda: len(read_jsonl(archive)) >= 10)
    rows = read_jsonl(archive)
    ts = [int(x["ts_ms"]) for x in rows]
    assert ts == sorted(set(ts)), "in order, no repeats"
    assert all(started * 1000 - 100 <= t <= time.time() * 1000 for t in ts), "every time is a true time"
    assert all(x["clock_synced"] for x in rows)
    gaps = [b - a for a, b in itertools.pairwise(ts)]
    assert all(150 <= g <= 260 for g in gaps[:5]), f"held readings keep their spacing: {gaps[:5]}"


async def test_clock_steps_never_reorder_readings_and_never_stall_a_meter(tmp_path: Path) -> None:
    clock = Flowing()
    keeper = TimeKeeper("ignore", clock.wall, clock.mono)
    archive = tmp_path / "archive.jsonl"
    async with contextlib.AsyncExitStack() as stack:
        server = await MeterServer([sim(1)]).start_tcp()
        stack.push_async_callback(server.stop)
        with structlog.testing.capture_logs() as logs:
            gw = await stack.enter_async_context(gateway(
                tmp_path, keeper,
                "  - {name: m, type: modbus, bus: b, unit: 1, profile: eastron_sdm630, interval: 500ms}",
                extra=f"buses: [{{name: b, type: tcp, host: 127.0.0.1, port: {server.port}}}]"))
            await wait_for(lambda: len(read_jsonl(archive)) >= 3)
            clock.step(3600)  # forward: the next tick is at once, the meter goes on
            n = len(read_jsonl(archive))
            await wait_for(lambda: len(read_jsonl(archive)) >= n + 3, 5)
            clock.step(-2.0)  # backward: readings refused (counted) until the clock is past the last queued
            await asyncio.sleep(3.5)
            n = len(read_jsonl(archive))
            await wait_for(lambda: len(read_jsonl(archive)) >= n + 2, 5)
            poller = next(s for s in gw.sources if isinstance(s, ModbusSource)).pollers[0]
            assert poller.counts["skipped_ticks"] == 0, "a clock step is not a late poll"
        counters = await gw.queue.counters()
    ts = [int(x["ts_ms"]) for x in read_jsonl(archive)]
    assert ts == sorted(set(ts)), "strictly in order at the platform"
    assert max(b - a for a, b in itertools.pairwise(ts)) > 3_500_000, "the forward step is in the data"
    assert counters.meter("m", MeterCount.REFUSED) >= 1, "the step back cost readings, counted"
    steps = [(e["event"], e["step_s"]) for e in logs if "stepped" in e["event"]]
    assert steps[0][0] == "system clock stepped forward" and steps[0][1] == pytest.approx(3600, abs=0.5)
    assert steps[1][0].startswith("system clock stepped backward") and steps[1][1] == pytest.approx(-2, abs=0.5)


async def test_a_daylight_saving_change_keeps_every_tick_and_the_local_offset_follows(tmp_path: Path) -> None:
    # Europe/Dublin leaves summer time at 2026-10-25 01:00 UTC: local 01:59:59 IST is followed by 01:00:00 GMT.
    change = 1_792_890_000.0
    clock = Flowing(change - 1.0)
    keeper = TimeKeeper("ignore", clock.wall, clock.mono)
    archive = tmp_path / "archive.jsonl"
    async with gateway(tmp_path, keeper, "  - {name: a, type: simulated, interval: 200ms}",
                       extra="site: {timezone: Europe/Dublin}"):
        await wait_for(lambda: len(read_jsonl(archive)) >= 12)
    ts = [int(x["ts_ms"]) for x in read_jsonl(archive)]
    assert all(b - a == 200 for a, b in itertools.pairwise(ts)), "a tick every 200 ms through the change"
    from zoneinfo import ZoneInfo

    local = [local_iso(t, ZoneInfo("Europe/Dublin")) for t in ts]
    before = [x for t, x in zip(ts, local, strict=True) if t < change * 1000]
    after = [x for t, x in zip(ts, local, strict=True) if t >= change * 1000]
    assert before and after
    assert before[-1].startswith("2026-10-25T01:59:59.8") and before[-1].endswith("+01:00")
    assert after[0] == "2026-10-25T01:00:00.000+00:00", "local time repeats the hour; UTC order is kept"


def test_the_daemon_holds_readings_until_sync_across_a_sigkill_then_sends_them_all(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"""\
state_dir: {tmp_path}
queue: {{commit_interval: 1s}}  # these runs last seconds: readings reach the sinks within one
time_sync: require
meters:
  - {{name: a, type: simulated, interval: 200ms}}
sinks:
  - {{name: archive, type: file, path: {tmp_path}/archive.jsonl}}
""")
    archive = tmp_path / "archive.jsonl"
    seams = {"timesync_flag": flag}
    started = time.time()
    with Daemon(cfg, seams=seams).start() as d:
        d.wait_log(lambda e: e.get("event", "").startswith("clock not synchronised"))
        time.sleep(1.2)
        d.kill()  # before sync: the held readings stay in the queue
    with Daemon(cfg, seams=seams).start() as d:
        time.sleep(1.0)
        assert read_jsonl(archive) == []
        status = json.loads(subprocess.run([sys.executable, "-m", "gateway", "status", "--json", "-c", str(cfg)],
                                           capture_output=True, text=True).stdout)
        assert status["clock"]["state"] == "unsynchronised" and status["held"] >= 8
        flag.touch()
        d.wait_log(lambda e: e.get("event", "").startswith("held readings re-stamped"))
        deadline = time.monotonic() + 10
        while len(read_jsonl(archive)) < 14 and time.monotonic() < deadline:
            time.sleep(0.1)
        rc, _ = d.stop()
        assert rc == 0
    ts = [int(x["ts_ms"]) for x in read_jsonl(archive)]
    assert len(ts) >= 14
    assert ts == sorted(set(ts))
    assert all(started * 1000 - 100 <= t <= time.time() * 1000 for t in ts)
