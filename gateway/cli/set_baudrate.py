"""``meter-gateway set-baudrate``: change a meter's baud rate over the line (for the models that allow it)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway.cli.common import EXIT_OK, EXIT_RUNTIME
from gateway.cli.scan import line_arguments, line_bus
from gateway.cli.set_address import profile_named

HELP = "change a meter's baud rate over Modbus (serial port; only with --yes; read back at the new rate)"
CONFIGURED = False  # takes no configuration file


def arguments(p: argparse.ArgumentParser) -> None:
    line_arguments(p, timeout="500ms")
    p.add_argument("--unit", type=int, required=True, help="the meter's unit id")
    p.add_argument("--to", type=int, required=True, help="the baud rate to give it (--baudrate: the line's now)")
    p.add_argument("--profile", required=True, help="the meter's profile (or model name): where its setting is")
    p.add_argument("--yes", action="store_true", help="make the change (without it: check and say what it would do)")


def main(args: argparse.Namespace) -> int:
    from gateway.platforms.modbus.commission import serial_only, set_baudrate

    bus = serial_only(line_bus(args, "set-baudrate"))
    profile = profile_named(args.profile, args.profiles_dir)
    outcome = asyncio.run(set_baudrate(bus, profile, args.unit, args.to, apply=args.yes,
                                       say=lambda line: print(line, file=sys.stderr)))
    print("\n".join(outcome.lines))
    return EXIT_OK if outcome.done or not args.yes else EXIT_RUNTIME
