"""The capacity benchmark's lean Modbus responder answers what pymodbus's server answers for the same meter (it
stands in for the simulator only where the simulator, not the gateway, would be measured)."""

from __future__ import annotations

import asyncio

from pymodbus.client import AsyncModbusTcpClient

from gateway.platforms.modbus.simulator import MeterServer, SimMeter
from tests.helpers.meter_farm import LeanMeter, LeanServer
from tests.helpers.modbus import profiles
from tests.soak.site import PROFILE, meter_values


async def read_all(port: int, unit: int, blocks: list[tuple[int, int, int]]) -> list[object]:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    await client.connect()
    out: list[object] = []
    try:
        for code, address, count in blocks:
            read = client.read_input_registers if code == 4 else client.read_holding_registers
            rr = await read(address, count=count, device_id=unit)
            out.append(("exception", rr.exception_code) if rr.isError() else list(rr.registers))
    finally:
        client.close()
    return out


async def test_the_lean_responder_answers_as_the_pymodbus_server_does() -> None:
    points = profiles()[PROFILE].points
    frozen = meter_values(7, False)(1_790_000_123.0)
    meter = SimMeter(7, points, frozen)
    reference = await MeterServer([meter]).start_tcp()
    lean = await asyncio.get_running_loop().create_server(lambda: LeanServer({7: LeanMeter(meter)}), "127.0.0.1", 0)
    try:
        first = min(p.address for p in points if p.function == "input")
        last = max(p.end for p in points if p.function == "input")
        blocks = [(4, first, 40), (4, first + 40, 40), (4, last - 10, 10), (4, first, 2), (4, last, 4)]
        want = await read_all(reference.port, 7, blocks)
        got = await read_all(lean.sockets[0].getsockname()[1], 7, blocks)
        assert got == want
        assert all(isinstance(w, list) and any(w) for w in want[:4]), "the blocks hold values"
        assert want[4] == ("exception", 2), "past the map: illegal data address"
    finally:
        lean.close()
        await reference.stop()
