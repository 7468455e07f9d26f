"""The Modbus source against real pymodbus servers: planning, faults, dead meters, lost connections, RTU links.

Readings go through the source's ``run`` into a real on-disk queue, as in the daemon, and the tests look at what
the queue holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway.config.profiles import meter_for
from gateway.platforms.modbus.bus import Bus
from gateway.platforms.modbus.config import BusBase, ModbusMeterConfig, RtuOverTcpBus, SerialBus, TcpBus
from gateway.platforms.modbus.plan import Planner, plan, wire_bytes
from gateway.platforms.modbus.registers import Point
from gateway.platforms.modbus.simulator import MeterServer, SimMeter
from gateway.platforms.modbus.source import MeterPoller, ModbusSource
from gateway.platforms.simulated.source import three_phase
from gateway.quantities import Quantity as Q
from gateway.queue import DiskQueue
from gateway.reading import Reading
from tests.helpers.modbus import profiles, pty_pair

SDM630 = "eastron_sdm630"


def meter(name: str, unit: int, profile: str = SDM630, bus: str = "b", interval: float = 1.0) -> ModbusMeterConfig:
    return meter_for(profiles()[profile], name, unit, bus=bus, interval=f"{interval}s")


def sim(unit: int, profile: str = SDM630, holes: bool = False, seed: int = 0, delay: float = 0.0) -> SimMeter:
    return SimMeter(unit, profiles()[profile].points, lambda t: three_phase(t, seed), holes=holes, delay=delay)


def tcp(server: MeterServer, **kw: Any) -> TcpBus:
    return TcpBus(name="b", type="tcp", host="127.0.0.1", port=server.port, **kw)


@contextlib.asynccontextmanager
async def serving(*meters: SimMeter, framer: str = "socket") -> AsyncIterator[MeterServer]:
    server = await MeterServer(list(meters)).start_tcp(framer=framer)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        await server.stop()


async def run_source(bus: BusBase, meters: list[ModbusMeterConfig], queue: DiskQueue, seconds: float,
                     during: Callable[[], Any] | None = None) -> ModbusSource:
    source = ModbusSource(bus, meters)
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(queue.append, stop))
    if during is not None:
        await during()
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 10)
    return source


async def queued(queue: DiskQueue, name: str) -> list[Reading]:
    return await queue.read(name, -1, 100_000)


# ---------------------------------------------------------------- planning


def pt(q: Q, address: int, type_: str = "float32", function: str = "input") -> Point:
    return Point(q, address, function, type_)  # type: ignore[arg-type]


def test_plan_reads_across_small_gaps_splits_at_large_ones_and_never_asks_for_more_than_125() -> None:
    points = [pt(Q.VOLTAGE_L1, 0), pt(Q.VOLTAGE_L2, 10), pt(Q.VOLTAGE_L3, 100), pt(Q.CURRENT_L1, 130),
              pt(Q.FREQUENCY, 5, "uint16", "holding")]
    blocks = plan(points, max_gap=8)
    assert [(b.function, b.address, b.count) for b in blocks] == [
        ("holding", 5, 1), ("input", 0, 12), ("input", 100, 2), ("input", 130, 2)]
    # With a large max_gap everything of one function merges, within 125 registers per request.
    wide = plan(points, max_gap=124)
    assert [(b.address, b.count) for b in wide if b.function == "input"] == [(0, 12), (100, 32)]
    far = [pt(Q.VOLTAGE_L1, 0), pt(Q.VOLTAGE_L2, 123), pt(Q.VOLTAGE_L3, 200)]
    assert all(b.count <= 125 for b in plan(far, max_gap=124))
    assert [(b.address, b.count) for b in plan(far, max_gap=124)] == [(0, 2), (123, 79)]


def test_a_full_sdm630_is_read_in_at_most_4_requests_on_a_9600_baud_line() -> None:
    bus = SerialBus(name="b", type="serial", port="/dev/null")
    blocks = plan(profiles()[SDM630].points, bus.default_max_gap())
    assert len(blocks) <= 4
    one_per_value = plan(profiles()[SDM630].points, max_gap=0, barriers=frozenset(
        ("input", p.address) for p in profiles()[SDM630].points))
    assert len(one_per_value) == len(profiles()[SDM630].points)
    assert wire_bytes(blocks) < wire_bytes(one_per_value) / 2


def test_a_refused_block_is_split_at_its_gaps_then_register_by_register_then_left_out() -> None:
    points = (pt(Q.VOLTAGE_L1, 0), pt(Q.VOLTAGE_L2, 2), pt(Q.VOLTAGE_L3, 6))
    planner = Planner(points, max_gap=10)
    (block,) = planner.blocks
    what, blocks, gap = planner.parts(block)
    assert "gap" in what and [(b.address, b.count) for b in blocks] == [(0, 4), (6, 2)]
    what, blocks, between = planner.parts(blocks[0])
    assert "register by register" in what and [(b.address, b.count) for b in blocks] == [(0, 2), (2, 2)]
    what, blocks, missing = planner.parts(blocks[1])
    assert "refused" in what and blocks == []
    # Splitting is for the poll at hand: the plan changes only with evidence, polls in a row over a minute.
    assert [(b.address, b.count) for b in planner.blocks] == [(0, 8)]
    evidence = gap + between + missing
    assert planner.observe(evidence, 0.0) == [] and planner.observe(evidence, 30.0) == []
    assert planner.observe(gap, 31.0) == []  # those registers answered this time: their evidence starts again
    assert planner.observe(evidence, 60.0) == ["reads split before input 0x0006"]  # four polls over 60 s
    assert [(b.address, b.count) for b in planner.blocks] == [(0, 4), (6, 2)]
    assert planner.observe(evidence, 90.0) == []
    assert planner.observe(evidence, 120.0) == ["reads split before input 0x0002", "input 0x0002 left out (voltage_l2)"]
    assert [(b.address, b.count) for b in planner.blocks] == [(0, 2), (6, 2)] and planner.left_out == ["voltage_l2"]
    # An hour after it learned, it asks again; refused once more, the register is left out again at once.
    assert planner.observe([], 60.0 + 3600) == [] and planner.left_out == []
    assert planner.observe(missing, 3700.0) and planner.left_out == ["voltage_l2"]


# ---------------------------------------------------------------- values and faults


async def test_readings_are_stamped_when_the_answer_arrives_and_aligned_to_the_clock(queue: DiskQueue) -> None:
    async with serving(sim(1)) as server:
        await run_source(tcp(server), [meter("m", 1, interval=0.5)], queue, 2.3)
    readings = await queued(queue, "m")
    assert len(readings) >= 4
    for r in readings:
        tick = round(r.ts_ms / 500) * 500
        assert 0 <= r.ts_ms - tick < 200, "read at the tick, stamped when the answer came"
        assert len(r.values) == len(profiles()[SDM630].points)


@pytest.mark.parametrize("code", [1, 2, 3, 4])
async def test_an_exception_reply_puts_no_value_in_the_queue(queue: DiskQueue, code: int) -> None:
    async with serving(sim(1)) as server:
        server.exceptions[1] = code
        with structlog.testing.capture_logs() as logs:
            await run_source(tcp(server), [meter("m", 1, interval=0.5)], queue, 1.6)
        assert await queued(queue, "m") == []
        warnings = [e for e in logs if e["event"].startswith("meter read failed")]
        if code not in (2, 3):
            assert len(warnings) == 1 and warnings[0]["kind"] == "exception", logs
        server.exceptions.clear()
        await run_source(tcp(server), [meter("m", 1, interval=0.5)], queue, 1.1)
    assert len(await queued(queue, "m")) >= 1


async def test_a_meter_that_does_not_answer_is_logged_once_backed_off_and_logged_back(queue: DiskQueue) -> None:
    async with serving(sim(1)) as server:
        bus = tcp(server, timeout="200ms", retry_cap="2s")
        m = meter("m", 1, interval=0.25)
        source = ModbusSource(bus, [m])
        stop = asyncio.Event()
        with structlog.testing.capture_logs() as logs:
            task = asyncio.create_task(source.run(queue.append, stop))
            await asyncio.sleep(1.0)
            server.silent.add(1)
            await asyncio.sleep(3.0)
            polls_while_dead = source.pollers[0].counts["polls"]
            requests_while_dead = source.bus.stats.by_unit[1]
            server.silent.clear()
            await asyncio.sleep(3.0)
            stop.set()
            await task
    events = [e["event"] for e in logs]
    assert events.count("meter read failed: no value from it is queued until it answers") == 1, events
    assert events.count("meter answering again") == 1, events
    back = next(e for e in logs if e["event"] == "meter answering again")
    assert 2.0 < back["down_s"] < 6.0
    # 12 ticks in the 3 s it was silent; backed off, it was asked far fewer times than that.
    counts = source.pollers[0].counts
    assert counts["timeout"] < 8, counts
    assert polls_while_dead < 4 + 12
    assert requests_while_dead > 0
    readings = await queued(queue, "m")
    gaps = [b.ts_ms - a.ts_ms for a, b in itertools.pairwise(readings)]
    assert max(gaps) >= 3000 and len(readings) >= 8


async def test_a_dead_meter_does_not_delay_the_live_ones_beyond_its_own_timeout(queue: DiskQueue) -> None:
    # Four meters on one RS-485 line behind an RTU-over-TCP converter: one request at a time. Unit 4 is dead.
    async with serving(sim(1), sim(2, seed=1), sim(3, seed=2), sim(4), framer="rtu") as server:
        server.silent.add(4)
        bus = RtuOverTcpBus(name="b", type="rtu_over_tcp", host="127.0.0.1", port=server.port, timeout="300ms",
                            gap="5ms")
        meters = [meter(f"m{u}", u, interval=1.0) for u in (1, 2, 3, 4)]
        await run_source(bus, meters, queue, 6.2)
    assert await queued(queue, "m4") == []
    for u in (1, 2, 3):
        readings = await queued(queue, f"m{u}")
        ticks = [r.ts_ms // 1000 for r in readings]
        assert len(readings) >= 5, (u, ticks)
        assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), f"m{u} missed a tick: {ticks}"
        # At worst it waited for the dead meter's one timeout (0.3 s) and the meters before it.
        assert max(r.ts_ms % 1000 for r in readings) < 300 + 3 * 150, [r.ts_ms % 1000 for r in readings]


async def test_eight_meters_on_a_9600_baud_line_keep_every_tick_with_one_dead(
        queue: DiskQueue, tmp_path: Path) -> None:
    # An RS-485 line at 9600 baud (a pseudo-terminal pair; each answer takes the time its frame would take on the
    # wire: 8 request + 9 answer bytes of 11 bits = 19.5 ms), 8 meters read every second, unit 8 dead. The dead
    # meter's own timeout (200 ms; the bus's is 1 s) is what it costs the line when it is tried, and it is tried
    # less and less often: the 7 others keep every tick.
    line_s = (8 + 9) * 11 / 9600
    with pty_pair(tmp_path) as (meter_end, gateway_end):
        sims = [sim(u, seed=u, delay=line_s) for u in range(1, 9)]
        server = await MeterServer(sims).start_serial(meter_end)
        server.silent.add(8)
        bus = SerialBus(name="b", type="serial", port=gateway_end, baudrate=9600, timeout="1s")
        meters = [meter_for(profiles()[SDM630], f"m{u}", u, bus="b", interval="1s",
                            quantities=[Q.ENERGY_IMPORT_TOTAL]) for u in range(1, 9)]
        meters[7] = meters[7].model_copy(update={"timeout": 0.2})
        try:
            source = await run_source(bus, meters, queue, 8.2)
        finally:
            await server.stop()
    assert await queued(queue, "m8") == []
    dead = source.pollers[7]
    assert 2 <= dead.counts["timeout"] <= 6, dead.counts  # tried at ticks 1 (and asked again), 2, 4, 8
    for u, poller in zip(range(1, 8), source.pollers, strict=False):
        ticks = [r.ts_ms // 1000 for r in await queued(queue, f"m{u}")]
        assert len(ticks) >= 7 and ticks == list(range(ticks[0], ticks[0] + len(ticks))), f"m{u} missed: {ticks}"
        assert poller.counts["skipped_ticks"] == 0
        # Its answer times, as status shows them: at least the frame's time on the wire.
        answers = poller.answer_ms()
        assert answers is not None and line_s * 1000 <= answers["p50"] <= answers["p99"] < 1000, answers
        assert answers["timeout"] == 1000
    assert dead.answer_ms() is None


async def test_a_meter_asked_again_as_many_times_as_its_retries(queue: DiskQueue) -> None:
    # Two meters that answered once, then stop: one with retries 0 (not asked again at that tick), one with 2.
    async with serving(sim(1), sim(2)) as server:
        bus = tcp(server, timeout="200ms")
        once, twice = (meter(f"m{u}", u).model_copy(update={"retries": r}) for u, r in ((1, 0), (2, 2)))
        source = ModbusSource(bus, [once, twice])
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(queue.append, stop))
        while not all(p.counts["readings"] for p in source.pollers):
            await asyncio.sleep(0.05)
        server.silent.update({1, 2})
        while not all(p.counts["timeout"] for p in source.pollers):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.6)  # the second one's two retries at that tick
        stop.set()
        await asyncio.wait_for(task, 10)
    first, second = source.pollers
    # Asked again only at the tick it first missed: later ticks are the backoff's, without retries.
    assert first.counts["retries"] == 0 and first.counts["timeout"] >= 1
    assert second.counts["retries"] == 2 and second.counts["timeout"] >= 3


async def test_a_bus_waits_its_connect_pause_before_the_first_request() -> None:
    async with serving(sim(1)) as server:
        bus = Bus(tcp(server, connect_pause="300ms"))
        block = plan(meter("m", 1).points, 0)[0]
        try:
            t0 = time.monotonic()
            await bus.read(1, block)
            first = time.monotonic() - t0
            t0 = time.monotonic()
            await bus.read(1, block)
            second = time.monotonic() - t0
        finally:
            bus.close()
    assert first >= 0.3 and second < 0.3, (first, second)


async def test_a_lost_connection_is_reopened_with_backoff_and_logged_once_each_way(queue: DiskQueue) -> None:
    server = await MeterServer([sim(1)]).start_tcp()
    port = server.port
    bus = TcpBus(name="b", type="tcp", host="127.0.0.1", port=port, timeout="300ms")
    source = ModbusSource(bus, [meter("m", 1, interval=0.25)])
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(source.run(queue.append, stop))
        await asyncio.sleep(1.0)
        await server.stop()
        await asyncio.sleep(2.5)
        server = await MeterServer([sim(1)]).start_tcp(port=port)
        await asyncio.sleep(3.0)
        stop.set()
        await task
    await server.stop()
    events = [e["event"] for e in logs]
    assert events.count("bus unavailable: meters on it are not read until it is back") == 1, events
    assert events.count("bus available again") == 1, events
    readings = await queued(queue, "m")
    assert readings[-1].ts_ms > (time.time() - 2) * 1000, "reading again after the server came back"


async def test_a_meter_that_refuses_reads_across_gaps_gets_split_reads_remembered(
        queue: DiskQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    # A meter whose gaps answer "illegal data address": every poll splits and reads everything; after three polls
    # in a row (the evidence; its minimum time is waived here) later polls use the split.
    import gateway.platforms.modbus.plan as plan_module

    monkeypatch.setattr(plan_module, "LEARN_AFTER_S", 0.0)
    async with serving(sim(1, holes=True)) as server:
        m = meter("m", 1)
        bus = Bus(tcp(server))
        poller = MeterPoller(m, bus)
        with structlog.testing.capture_logs() as logs:
            readings = []
            asked = []
            for _ in range(4):
                before = bus.stats.requests
                readings.append(await poller.poll())
                asked.append(bus.stats.requests - before)
        bus.close()
    assert all(r is not None and set(r.values) == {p.quantity for p in m.points} for r in readings)
    learned = [e for e in logs if e["event"].startswith("meter keeps refusing")]
    assert len(learned) == 1 and learned[0]["log_level"] == "info" and learned[0]["left_out"] is None
    assert asked[0] == asked[1] == asked[2] > asked[3] == len(poller.planner.blocks)
    assert poller.last_problems == [] and poller.health()["failing"] is False


async def test_a_register_the_meter_lacks_is_left_out_and_the_rest_is_read() -> None:
    p = profiles()[SDM630].points
    # The meter has no neutral current register (0x00E0) although the profile lists it.
    device = SimMeter(1, tuple(x for x in p if x.quantity is not Q.CURRENT_N), lambda t: three_phase(t), holes=True)
    async with serving(device) as server:
        bus = Bus(tcp(server))
        poller = MeterPoller(meter("m", 1), bus, report_health=False)
        reading = await poller.poll()
        again = await poller.poll()
        bus.close()
    assert reading is not None and again is not None
    assert Q.CURRENT_N not in reading.values and len(reading.values) == len(p) - 1
    assert poller.last_problems == []


async def test_an_answer_with_too_few_registers_puts_no_value_from_it() -> None:
    async with serving(sim(1)) as server:
        server.short.add(1)
        bus = Bus(tcp(server))
        poller = MeterPoller(meter("m", 1), bus, report_health=False)
        assert await poller.poll() is None
        assert {e.kind for e in poller.last_problems} == {"bad_answer"}
        bus.close()


async def test_a_tcp_bus_with_parallel_connections_reads_meters_at_once(queue: DiskQueue) -> None:
    # Four slow meters (3 requests of 0.1 s each per poll) behind one Modbus TCP gateway: one after the other they
    # would take 1.2 s per tick; on four connections at once, 0.3 s.
    async with serving(*(sim(u, delay=0.1) for u in range(1, 5))) as server:
        bus = tcp(server, max_parallel=4)
        meters = [meter(f"m{u}", u, interval=2.0) for u in range(1, 5)]
        await run_source(bus, meters, queue, 2.2)
    last = [(await queued(queue, f"m{u}"))[-1] for u in range(1, 5)]
    assert len({r.ts_ms // 2000 for r in last}) == 1, "all four read at the same tick"
    assert max(r.ts_ms % 2000 for r in last) < 600, [r.ts_ms % 2000 for r in last]


# ---------------------------------------------------------------- RTU on a serial line


async def test_rtu_over_a_serial_line_reads_what_the_meter_holds_and_survives_crc_errors(tmp_path: Path) -> None:
    with pty_pair(tmp_path) as (meter_end, gateway_end):
        device = sim(3)
        server = await MeterServer([device]).start_serial(meter_end)
        bus = Bus(SerialBus(name="b", type="serial", port=gateway_end, baudrate=9600, timeout="500ms"))
        try:
            poller = MeterPoller(meter("m", 3, bus="b"), bus, report_health=False)
            reading = await poller.poll()
            assert reading is not None
            for q, v in reading.values.items():
                assert v == pytest.approx(device.served.get(q, 0.0), rel=1e-6), q
            assert len(reading.values) == len(profiles()[SDM630].points)
            server.corrupt.add(3)  # line noise: every answer's CRC is wrong
            assert await poller.poll() is None
            assert {e.kind for e in poller.last_problems} == {"timeout"}
            server.corrupt.clear()
            assert await poller.poll() is not None
            assert bus.stats.requests >= 3
        finally:
            bus.close()
            await server.stop()
