"""Reading a full Eastron SDM630: requests, bytes and wire time per poll, and the gateway's CPU time per poll.

    python tests/bench/modbus_bench.py [--quick] [--polls N]

- requests per poll and bytes on the wire, measured on a real RTU link (a pymodbus serial server on one end of a
  pseudo-terminal pair, the gateway's serial bus on the other): the gateway's plan, against one request per value
  (how mbmd reads RS-485 meters);
- wire time at 9600 baud 8N1 from those bytes: 11 bits per character, plus the 3.5-character silence after every
  frame; against the least possible for the same registers, the plan that minimises exactly that wire time (every
  split and merge considered, at most 125 registers per request), and against the strict floor (each register read
  once, with the fewest requests that can carry them, no register read across a gap);
- CPU time per poll of the gateway process (planning, pymodbus framing, decoding, building the reading), over Modbus
  TCP on loopback, with the simulated meter in another process so its CPU is not counted.

Targets: a full SDM630 in at most 4 requests; poll wire time within 1.2x of the least possible.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.config.profiles import load_all, meter_for
from gateway.logs import configure
from gateway.platforms.modbus.bus import Bus
from gateway.platforms.modbus.config import ModbusMeterConfig, SerialBus, TcpBus
from gateway.platforms.modbus.plan import MAX_REGISTERS, Block, plan
from gateway.platforms.modbus.simulator import MeterServer, SimMeter
from gateway.platforms.modbus.source import MeterPoller
from gateway.platforms.simulated.source import three_phase

BAUD = 9600
CHAR_S = 11 / BAUD  # start bit, 8 data bits, parity-or-second-stop, stop: 11 bits per character in 8N1 framing
SILENCE_CHARS = 3.5
PROFILE = "eastron_sdm630"


def wire_seconds(requests: int, bytes_total: int) -> float:
    """Characters on the line plus the 3.5-character silence after each of the 2 frames of each exchange."""
    return (bytes_total + 2 * SILENCE_CHARS * requests) * CHAR_S


def rtu_bytes(blocks: list[Block]) -> int:
    return sum(8 + 5 + 2 * b.count for b in blocks)


def strict_floor(points: list) -> tuple[int, int]:  # type: ignore[type-arg]
    """(requests, bytes): each register once, in the fewest requests that can span them (125 registers each)."""
    by_fn: dict[str, list] = {}  # type: ignore[type-arg]
    for p in points:
        by_fn.setdefault(p.function, []).append(p)
    requests = 0
    for pts in by_fn.values():
        pts.sort(key=lambda p: p.address)
        start = None
        for p in pts:
            if start is None or p.end - start > MAX_REGISTERS:
                requests += 1
                start = p.address
    registers = sum(p.width for p in points)
    return requests, requests * 13 + 2 * registers


def meter(unit: int) -> ModbusMeterConfig:
    return meter_for(load_all()[0][PROFILE], "sdm630", unit, bus="b")


async def rtu_poll(per_value: bool) -> tuple[int, int, int, int]:
    """One poll over a real RTU link: (requests, bytes out, bytes in, values)."""
    socat = shutil.which("socat")
    if socat is None:
        raise SystemExit("socat is needed for the RTU link (apt-get install socat)")
    with tempfile.TemporaryDirectory() as tmp:
        a, b = f"{tmp}/meter", f"{tmp}/gateway"
        proc = subprocess.Popen([socat, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                                stderr=subprocess.DEVNULL)
        try:
            while not (os.path.exists(a) and os.path.exists(b)):
                await asyncio.sleep(0.02)
            m = meter(1)
            server = await MeterServer([SimMeter(1, m.points, three_phase)]).start_serial(a, BAUD)
            bus = Bus(SerialBus(name="b", type="serial", port=b, baudrate=BAUD, timeout="1s"))
            poller = MeterPoller(m, bus, report_health=False)
            if per_value:  # one request per value, as mbmd reads: a barrier before every register
                poller.planner.barriers.update((p.function, p.address) for p in m.points)
                poller.planner.max_gap = 0
            reading = await poller.poll()
            bus.close()
            await server.stop()
        finally:
            proc.terminate()
            proc.wait()
    assert reading is not None
    return bus.stats.requests, bus.stats.bytes_out, bus.stats.bytes_in, len(reading.values)


def serve(port_file: str) -> None:
    """Child process: the simulated meter on Modbus TCP, until killed."""

    async def run() -> None:
        m = meter(1)
        server = await MeterServer([SimMeter(1, m.points, three_phase)]).start_tcp()
        Path(port_file).write_text(str(server.port))
        await asyncio.Event().wait()

    asyncio.run(run())


async def cpu_per_poll(polls: int) -> tuple[float, float]:
    """(CPU seconds per poll of this process, wall seconds per poll) against a meter in another process."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = f"{tmp}/port"
        child = subprocess.Popen([sys.executable, __file__, "--serve", port_file])
        try:
            while not os.path.exists(port_file) or not Path(port_file).read_text():
                await asyncio.sleep(0.05)
            bus = Bus(TcpBus(name="b", type="tcp", host="127.0.0.1", port=int(Path(port_file).read_text())))
            poller = MeterPoller(meter(1), bus, report_health=False)
            await poller.poll()  # connect, warm up
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(polls):
                assert await poller.poll() is not None
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            bus.close()
        finally:
            child.kill()
            child.wait()
    return cpu / polls, wall / polls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="under 30 s")
    ap.add_argument("--polls", type=int, default=0)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
    configure("error", "json")
    polls = args.polls or (300 if args.quick else 3000)
    points = list(meter(1).points)
    serial = SerialBus(name="b", type="serial", port="/dev/null", baudrate=BAUD)

    planned = plan(points, serial.default_max_gap())
    least = plan(points, max_gap=10 - 0.5)  # a request costs exactly its 13 bytes + 7 silent characters = 10 regs
    floor_requests, floor_bytes = strict_floor(points)

    g_req, g_out, g_in, g_values = asyncio.run(rtu_poll(per_value=False))
    v_req, v_out, v_in, _ = asyncio.run(rtu_poll(per_value=True))
    assert g_req == len(planned) and g_out + g_in == rtu_bytes(planned), "measured bytes differ from the plan"
    cpu, wall = asyncio.run(cpu_per_poll(polls))

    g_wire = wire_seconds(g_req, g_out + g_in)
    v_wire = wire_seconds(v_req, v_out + v_in)
    least_wire = wire_seconds(len(least), rtu_bytes(least))
    floor_wire = wire_seconds(floor_requests, floor_bytes)

    print(f"{PROFILE}: {len(points)} values, {sum(p.width for p in points)} registers; 9600 baud 8N1,"
          f" {CHAR_S * 1000:.3f} ms per character")
    print(f"{'':<34} {'requests':>8} {'bytes':>7} {'wire ms':>9} {'x least':>8}")
    rows = [
        ("gateway plan (measured, RTU link)", g_req, g_out + g_in, g_wire),
        ("one request per value (measured)", v_req, v_out + v_in, v_wire),
        ("least possible (exact optimum)", len(least), rtu_bytes(least), least_wire),
        ("strict floor (unattainable)", floor_requests, floor_bytes, floor_wire),
    ]
    for label, r, b, w in rows:
        print(f"{label:<34} {r:>8} {b:>7} {w * 1000:>9.1f} {w / least_wire:>8.2f}")
    print(f"CPU per poll (gateway process, Modbus TCP loopback, {polls} polls): {cpu * 1e6:.0f} us;"
          f" wall {wall * 1000:.2f} ms")
    print("targets: <= 4 requests:", "met" if g_req <= 4 else "MISSED", "; wire <= 1.2x least:",
          "met" if g_wire <= 1.2 * least_wire else "MISSED")
    print(json.dumps({
        "bench": "modbus", "profile": PROFILE, "values": g_values, "requests": g_req, "bytes": g_out + g_in,
        "wire_ms": round(g_wire * 1000, 1), "per_value_requests": v_req, "per_value_bytes": v_out + v_in,
        "per_value_wire_ms": round(v_wire * 1000, 1), "least_requests": len(least),
        "least_wire_ms": round(least_wire * 1000, 1), "floor_wire_ms": round(floor_wire * 1000, 1),
        "wire_vs_least": round(g_wire / least_wire, 3), "wire_vs_per_value": round(g_wire / v_wire, 3),
        "cpu_us_per_poll": round(cpu * 1e6), "wall_ms_per_poll": round(wall * 1000, 2), "polls": polls,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }))


if __name__ == "__main__":
    main()
