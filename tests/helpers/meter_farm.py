"""Simulated meters in a process of their own, for benchmarks whose meters must not share a core with the harness:

    python -m tests.helpers.meter_farm --buses 4 --meters-per-bus 32 [--lean]

serves ``buses`` Modbus TCP servers on loopback, each with units 1..``meters-per-bus`` (SDM630s holding the soak
site's values, which vary with time as a meter's do), prints one line with their ports separated by spaces, and
runs until its standard input closes (the parent exits or closes it).

By default each server is pymodbus's (:class:`MeterServer`, what the tests use): about a millisecond of CPU a
request, so a thousand meters asked three times each at the same second take this machine's two cores for a second,
and the simulators, not the gateway, would be measured. ``--lean`` answers with a small Modbus TCP responder
instead (:class:`LeanServer`: MBAP framing, functions 3 and 4, each meter's registers laid out by the same
:func:`gateway.platforms.modbus.simulator.encode` once a second), for capacity runs; what the gateway reads is the
same.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time

from gateway.platforms.modbus.registers import Point
from gateway.platforms.modbus.simulator import MeterServer, SimMeter, encode
from tests.helpers.modbus import profiles
from tests.soak.site import PROFILE, meter_values

_MBAP = struct.Struct(">HHHB")
_REQUEST = struct.Struct(">BHH")
_FUNCTIONS = {3: "holding", 4: "input"}


class LeanMeter:
    """A meter's register images (holding, input), rebuilt from its values at most once a second."""

    def __init__(self, meter: SimMeter) -> None:
        self.meter = meter
        self.images: dict[int, tuple[int, list[int]]] = {}  # function code -> (first address, words)
        self.second = -1

    def read(self, code: int, address: int, count: int) -> list[int] | None:
        now = time.time()
        if int(now) != self.second:
            self.second = int(now)
            self._rebuild(now)
        first, words = self.images.get(code, (0, []))
        if address < first or address + count > first + len(words):
            return None
        return words[address - first:address - first + count]

    def _rebuild(self, now: float) -> None:
        values = self.meter.values(now)
        for code, function in _FUNCTIONS.items():
            points: list[Point] = [p for p in self.meter.points if p.function == function]
            if not points:
                continue
            first = min(p.address for p in points)
            words = [0] * (max(p.end for p in points) - first)
            for p in points:
                if p.quantity in values:
                    words[p.address - first:p.end - first] = encode(p, values[p.quantity])
            self.images[code] = (first, words)


class LeanServer(asyncio.Protocol):
    """Modbus TCP: an MBAP header, then function 3 or 4; an exception reply for anything else or out of range."""

    def __init__(self, meters: dict[int, LeanMeter]) -> None:
        self.meters = meters
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= _MBAP.size:
            tid, _, length, unit = _MBAP.unpack_from(self.buf)
            end = 6 + length
            if len(self.buf) < end:
                return
            pdu, self.buf = self.buf[_MBAP.size:end], self.buf[end:]
            meter = self.meters.get(unit)
            if meter is None:
                continue  # no such unit: no answer, as a gateway without it gives none
            code = pdu[0]
            words = meter.read(code, *_REQUEST.unpack_from(pdu)[1:]) if code in _FUNCTIONS and len(pdu) >= 5 else None
            answer = (bytes([code | 0x80, 2]) if words is None
                      else struct.pack(f">BB{len(words)}H", code, 2 * len(words), *words))
            assert self.transport is not None
            self.transport.write(_MBAP.pack(tid, 0, len(answer) + 1, unit) + answer)


async def serve(buses: int, per_bus: int, lean: bool = False) -> None:
    points = profiles()[PROFILE].points
    servers: list[MeterServer] = []
    ports: list[int] = []
    for _ in range(buses):
        meters = [SimMeter(u, points, meter_values(u, False)) for u in range(1, per_bus + 1)]
        if lean:
            lean_meters = {m.unit: LeanMeter(m) for m in meters}
            loop = asyncio.get_running_loop()
            server = await loop.create_server(lambda m=lean_meters: LeanServer(m), "127.0.0.1", 0)  # type: ignore[misc]
            ports.append(server.sockets[0].getsockname()[1])
        else:
            servers.append(await MeterServer(meters).start_tcp())
            ports.append(servers[-1].port)
    print(" ".join(str(p) for p in ports), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent lets go
    for s in servers:
        await s.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--buses", type=int, default=1)
    ap.add_argument("--meters-per-bus", type=int, default=32)
    ap.add_argument("--lean", action="store_true", help="a small Modbus TCP responder instead of pymodbus's server")
    args = ap.parse_args()
    asyncio.run(serve(args.buses, args.meters_per_bus, args.lean))


if __name__ == "__main__":
    main()
