"""``meter-gateway scan``: which Modbus unit ids answer on a line, and which profile fits each."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from gateway.cli.common import EXIT_OK, EXIT_RUNTIME
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.platforms.modbus.config import RtuOverTcpBus, SerialBus, TcpBus

HELP = "which Modbus unit ids answer on a line, and which built-in profile fits each"
CONFIGURED = False  # takes no configuration file


def line_arguments(p: argparse.ArgumentParser, timeout: str = "300ms") -> None:
    """Where the line is (a serial port, or a TCP host), as ``scan``, ``set-address`` and ``set-baudrate`` take it."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--serial", metavar="DEVICE", help="a serial port, e.g. /dev/ttyUSB0")
    where.add_argument("--host", help="a Modbus TCP device or an RTU-over-TCP converter")
    p.add_argument("--port", type=int, default=502, help="TCP port (default 502)")
    p.add_argument("--rtu-over-tcp", action="store_true", help="the host is a serial-to-TCP converter (RTU framing)")
    p.add_argument("--baudrate", type=int, default=9600)
    p.add_argument("--parity", choices=("N", "E", "O"), default="N")
    p.add_argument("--stopbits", type=int, choices=(1, 2), default=1)
    p.add_argument("--timeout", default=timeout, help=f"wait for each answer (default {timeout})")
    p.add_argument("--profiles-dir", help="your own profiles too")


def line_bus(args: argparse.Namespace, command: str) -> SerialBus | TcpBus | RtuOverTcpBus:
    from gateway.platforms.modbus.config import RtuOverTcpBus, SerialBus, TcpBus

    timeout = args.timeout
    try:
        if args.serial:
            return SerialBus(name="rs485", type="serial", port=args.serial, baudrate=args.baudrate,
                             parity=args.parity, stopbits=args.stopbits, timeout=timeout)
        if args.rtu_over_tcp:
            return RtuOverTcpBus(name="converter", type="rtu_over_tcp", host=args.host, port=args.port,
                                 timeout=timeout, baudrate=args.baudrate)
        return TcpBus(name="modbus-tcp", type="tcp", host=args.host, port=args.port, timeout=timeout)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        msg = str((err.get("ctx") or {}).get("error", err["msg"]))
        raise GatewayError(f"{command} --{str(err['loc'][0]).replace('_', '-')}: {msg}") from None


def arguments(p: argparse.ArgumentParser) -> None:
    line_arguments(p)
    p.add_argument("--units", default="1-247", help="unit ids to try: 1-247, 1-10, 1,2,5 (default 1-247)")


def main(args: argparse.Namespace) -> int:
    from gateway.config import profiles
    from gateway.platforms.modbus import tools

    units = tools.parse_units(args.units, '--units')
    bus = line_bus(args, "scan")
    found, problems = profiles.load_all(Path(args.profiles_dir) if args.profiles_dir else None)
    for line in problems:
        print(line, file=sys.stderr)
    print(f"scanning {len(units)} unit ids on {tools.describe_bus(bus)} ...", file=sys.stderr)
    hits = asyncio.run(tools.scan(bus, units, found))
    print(tools.render_scan(hits, bus, len(units)))
    return EXIT_OK if hits else EXIT_RUNTIME
