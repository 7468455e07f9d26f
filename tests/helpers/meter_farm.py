"""Simulated meters in a process of their own, for benchmarks whose meters must not share a core with the harness:

    python -m tests.helpers.meter_farm --buses 4 --meters-per-bus 32

serves ``buses`` Modbus TCP servers on loopback, each with units 1..``meters-per-bus`` (SDM630s holding the soak
site's values, which vary with time as a meter's do), prints one line with their ports separated by spaces, and
runs until its standard input closes (the parent exits or closes it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway.platforms.modbus.simulator import MeterServer, SimMeter
from tests.helpers.modbus import profiles
from tests.soak.site import PROFILE, meter_values


async def serve(buses: int, per_bus: int) -> None:
    points = profiles()[PROFILE].points
    servers = [await MeterServer([SimMeter(u, points, meter_values(u, False)) for u in range(1, per_bus + 1)])
               .start_tcp() for _ in range(buses)]
    print(" ".join(str(s.port) for s in servers), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent lets go
    for s in servers:
        await s.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--buses", type=int, default=1)
    ap.add_argument("--meters-per-bus", type=int, default=32)
    args = ap.parse_args()
    asyncio.run(serve(args.buses, args.meters_per_bus))


if __name__ == "__main__":
    main()
