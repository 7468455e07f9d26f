"""Meters that lie, stop mid-poll or refuse for a while, against a real pymodbus server.

For each fault, the four properties: the source keeps running, the other meters are unaffected, no wrong value is
queued (or sent: the partial poll goes all the way to the Wattics emulator), and the meter's health says what is
wrong.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gateway.platforms.modbus.plan as plan_module
from gateway.platforms.modbus.bus import Bus
from gateway.platforms.modbus.config import TcpBus
from gateway.platforms.modbus.source import MeterPoller, ModbusSource
from gateway.platforms.simulated.source import three_phase
from gateway.quantities import Quantity as Q
from gateway.queue import DiskQueue
from tests.helpers.lying_modbus import Lie, LyingDevice
from tests.helpers.modbus import profiles
from tests.helpers.rig import RigFactory, until
from tests.helpers.wattics_emulator import WatticsEmulator
from tests.test_modbus_source import SDM630, meter, serving, sim, tcp

#: The SDM630's per-phase import energies (0x15A..0x15F): one request of the profile's plan.
PHASE_ENERGY = 0x15A
PER_PHASE_ENERGY = {Q.ENERGY_IMPORT_L1, Q.ENERGY_IMPORT_L2, Q.ENERGY_IMPORT_L3}


def _offered() -> set[Q]:
    return {p.quantity for p in profiles()[SDM630].points}



async def test_a_poll_whose_per_phase_energy_fails_never_sends_the_total_under_a_phase_key(
        tmp_path: Path, rigs: RigFactory) -> None:
    """The meter stops answering one request mid-poll: the reading keeps its other values, each under its own
    quantity; Wattics receives no pC key at all for it (not the total energy in pC_1), and pC_1..3 again once
    the meter answers that request."""
    emu = WatticsEmulator(tmp_path / "certs").start()
    try:
        async with serving(sim(1)) as server:
            text = f"""\
buses: [{{name: b, type: tcp, host: 127.0.0.1, port: {server.port}, timeout: 300ms}}]
meters: [{{name: m, type: modbus, bus: b, unit: 1, profile: {SDM630}, interval: 500ms}}]
sinks:
  - {{name: wattics, type: wattics, url: "{emu.url}", username: gateway, password: s3cret-pass, ca_file: {emu.ca_file},
     backoff_base: 20ms, backoff_cap: 100ms, data_points: [{{id: e, meter: m}}]}}
"""
            rig = await rigs(text, "wattics")
            (source_cfg,) = [m for m in rig.config.meters]
            source = ModbusSource(rig.config.buses[0], [source_cfg])  # type: ignore[list-item]
            stop = asyncio.Event()
            task = asyncio.create_task(source.run(rig.queue.append, stop))
            server.faults_at[(1, PHASE_ENERGY)] = 4  # "device failure" for that request only
            await until(lambda: len(emu.packets["e"]) >= 3)
            partial = list(emu.packets["e"])
            del server.faults_at[(1, PHASE_ENERGY)]
            await until(lambda: len(emu.packets["e"]) >= len(partial) + 3)
            stop.set()
            await asyncio.wait_for(task, 10)
            whole = emu.packets["e"][len(partial) + 1:]
    finally:
        emu.stop()
    assert all(not any(k.startswith("pC_") for k in p) for p in partial), partial[0]
    assert all("aP_1" in p and "v_3" in p for p in partial)  # the rest of the reading is sent
    assert all({"pC_1", "pC_2", "pC_3"} <= set(p) for p in whole)
    for p in whole:  # each key holds what the meter held for that phase when the reading was taken
        held = three_phase(datetime.fromisoformat(p["tsISO8601"]).timestamp())
        for i, q in enumerate((Q.ENERGY_IMPORT_L1, Q.ENERGY_IMPORT_L2, Q.ENERGY_IMPORT_L3), 1):
            assert math.isclose(p[f"pC_{i}"], held[q], rel_tol=1e-6), (i, p, held[q])
    assert source.health()["m"]["failing"] is False  # a meter that answers most of a poll is not down
    assert source.pollers[0].counts["exception"] >= 3


async def test_a_reading_is_stamped_when_its_values_were_taken_not_when_the_poll_timed_out(
        queue: DiskQueue) -> None:
    async with serving(sim(1)) as server:
        server.faults_at[(1, PHASE_ENERGY)] = "silent"  # the meter stops answering at its last request
        bus = Bus(tcp(server, timeout="1s"))
        poller = MeterPoller(meter("m", 1), bus, report_health=False)
        start = time.time()
        reading = await poller.poll()
        took = time.time() - start
        bus.close()
    assert reading is not None and took >= 1.0
    assert reading.ts_ms / 1000 - start < 0.3, "stamped at the first answer, not a timeout later"
    assert not PER_PHASE_ENERGY & set(reading.values) and Q.VOLTAGE_L1 in reading.values
    assert {p.kind for p in poller.last_problems} == {"timeout"}


async def test_a_meter_refusing_everything_for_a_while_loses_no_register() -> None:
    """Exception 2 to every request for a few polls (a gateway in front of the meter restarting): the meter is
    reported failing, nothing is learned, and every value is back when it answers again."""
    async with serving(sim(1)) as server:
        bus = Bus(tcp(server))
        poller = MeterPoller(meter("m", 1), bus)
        server.exceptions[1] = 2
        for _ in range(5):
            assert await poller.poll() is None
        health = poller.health()
        assert health["failing"] is True and "illegal data address" in str(health["last_problem"])
        del server.exceptions[1]
        reading = await poller.poll()
        bus.close()
    assert reading is not None and set(reading.values) == _offered()
    assert poller.planner.left_out == [] and poller.health()["failing"] is False


async def test_a_register_refused_briefly_is_asked_again_and_one_refused_for_good_is_reported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with serving(sim(1)) as server:
        bus = Bus(tcp(server))
        poller = MeterPoller(meter("m", 1), bus)
        server.faults_at[(1, PHASE_ENERGY)] = 2
        for _ in range(5):  # refused in five polls, within a minute: evidence, not yet proof
            reading = await poller.poll()
            # The refused read is split at once: only the register itself is missing from the reading.
            assert reading is not None and set(reading.values) == _offered() - {Q.ENERGY_IMPORT_L1}
        assert poller.planner.left_out == []
        del server.faults_at[(1, PHASE_ENERGY)]
        reading = await poller.poll()
        assert reading is not None and set(reading.values) == _offered()
        # Refused for good (over a minute: the clock is moved instead of waiting): left out and reported.
        server.faults_at[(1, PHASE_ENERGY)] = 2
        monkeypatch.setattr(plan_module, "LEARN_AFTER_S", 0.0)
        for _ in range(3):
            reading = await poller.poll()
        requests = bus.stats.requests
        assert await poller.poll() is not None
        assert bus.stats.requests - requests == len(poller.planner.blocks)  # no more refused requests
        bus.close()
    assert poller.planner.left_out == ["energy_import_l1"]
    assert poller.health()["left_out"] == poller.planner.left_out


@pytest.mark.parametrize("lie", ["wrong_function", "overlong"])
async def test_an_answer_that_does_not_match_its_request_is_never_a_value(
        lie: str, caplog: pytest.LogCaptureFixture) -> None:
    """A reply for the other function code, or a byte count beyond the data: a bad answer (counted, the meter
    reported), never a value; the other meter on the same device is read as before; no traceback is logged."""
    liar, honest = sim(1), sim(2, seed=5)
    async with serving(liar, honest) as server:
        getattr(server, lie).add(1)
        bus = Bus(tcp(server, timeout="500ms"))
        bad, good = MeterPoller(meter("liar", 1), bus), MeterPoller(meter("honest", 2), bus)
        with caplog.at_level(logging.DEBUG):
            for _ in range(3):
                assert await bad.poll() is None
                reading = await good.poll()
                assert reading is not None and set(reading.values) == _offered()
                assert math.isclose(reading.values[Q.VOLTAGE_L1], honest.served[Q.VOLTAGE_L1], rel_tol=1e-6)
        bus.close()
    assert bad.counts["bad_answer"] >= 3 and bad.counts["readings"] == 0
    health: dict[str, Any] = bad.health()
    assert health["failing"] is True and str(health["last_problem"]).find(
        "answered function 3 to a function 4 request" if lie == "wrong_function" else "cannot be decoded") > 0
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


# ---------------------------------------------------------------- generated lies


def _held() -> tuple[dict[Q, float], dict[tuple[int, int], int]]:
    """Values an SDM630 holds (constant, so every answer can be checked exactly) and its registers, word by word."""
    from gateway.platforms.modbus.simulator import encode

    values = three_phase(1_795_000_000.0, 3)
    points = profiles()[SDM630].points
    for i, p in enumerate(points):
        values.setdefault(p.quantity, 1000.5 + i)  # quantities the simulation has no curve for
    words: dict[tuple[int, int], int] = {}
    for p in points:
        for i, w in enumerate(encode(p, values[p.quantity])):
            words[(p.code, p.address + i)] = w
    return values, words


def _telling(lie: Lie) -> bool:
    """A lie the gateway must notice (every request of an SDM630 is function 4; trailing bytes after a correct
    answer, or a byte count shorter than the data, may still carry the right words; exception 2 makes the poller
    ask the block in parts, which answer)."""
    if lie.silent:
        return True
    if lie.exception is not None:
        return lie.exception != 2
    # A wrong register count with a byte count that hides it (pymodbus reads byte count / 2 registers, and keeps no
    # byte count to check) can still carry exactly the words asked: the values are checked above all the same.
    wrong_count = lie.count_delta != 0 and lie.byte_count_delta == 0
    return lie.function not in (None, 4) or wrong_count or lie.unit_delta != 0 or lie.tid_delta != 0


LIES = st.builds(
    Lie,
    function=st.sampled_from([None, None, 3, 4, 1, 0x83]),
    unit_delta=st.sampled_from([0, 0, 0, 1]),
    tid_delta=st.sampled_from([0, 0, 0, 1]),
    count_delta=st.sampled_from([0, 0, -1, 1, -2, 2]),
    byte_count_delta=st.sampled_from([0, 0, -1, 1, -2, 4, 100]),
    trailing=st.sampled_from([b"", b"", b"\xde\xad\xbe\xef", b"\x00"]),
    truncate=st.sampled_from([0, 0, 0, 1, 3]),
    exception=st.sampled_from([None, None, None, 2, 4, 0x7F]),
    silent=st.sampled_from([False, False, False, True]),
)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(lies=st.lists(LIES, min_size=1, max_size=8))
def test_no_lie_of_a_device_ever_becomes_a_value(lies: list[Lie]) -> None:
    """Whatever a device answers (hypothesis mangles function, unit, transaction, counts, byte count, trailing and
    missing bytes, exception codes, silence), every value that reaches a reading is what the meter holds for that
    quantity, the poller never raises, and a lie shows in the meter's counters."""
    asyncio.run(_polls_against(lies))


async def _polls_against(lies: list[Lie]) -> None:
    values, words = _held()
    device = await LyingDevice(lambda fc, a, n: [words.get((fc, a + i), 0) for i in range(n)], list(lies)).start()
    try:
        bus = Bus(TcpBus(name="b", type="tcp", host="127.0.0.1", port=device.port, timeout="150ms"))
        poller = MeterPoller(meter("m", 1), bus, report_health=False)
        readings = []
        for _ in range(len(lies) + 2):
            bus.next_connect = 0.0  # no reconnection backoff between the polls of a test
            readings.append(await poller.poll())
        bus.close()
    finally:
        await device.stop()
    for r in readings:
        for q, v in (r.values if r is not None else {}).items():
            assert math.isclose(v, values[q], rel_tol=1e-6), (q, v, values[q], lies)
    assert readings[-1] is not None and set(readings[-1].values) == _offered(), "honest again: read in full"
    if any(_telling(lie) for lie in lies):
        assert sum(v for k, v in poller.counts.items() if k not in ("polls", "readings", "retries")) > 0 \
            or any(r is None or set(r.values) != _offered() for r in readings), "a lie went unnoticed"
