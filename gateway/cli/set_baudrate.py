"""``meter-gateway set-baudrate``: change a meter's baud rate over the line (for the models that allow it)."""

from __future__ import annotations

import argparse
import sys

from gateway.cli.scan import line_bus
from gateway.cli.set_address import commission_arguments, finish, profile_named

HELP = "change a meter's baud rate over Modbus (serial port; only with --yes; read back at the new rate)"
CONFIGURED = False  # takes no configuration file


def arguments(p: argparse.ArgumentParser) -> None:
    commission_arguments(p, unit="the meter's unit id", to="the baud rate to give it (--baudrate: the line's now)")


def main(args: argparse.Namespace) -> int:
    from gateway.platforms.modbus.commission import serial_only, set_baudrate

    bus = serial_only(line_bus(args, "set-baudrate"))
    return finish(args, set_baudrate(bus, profile_named(args.profile, args.profiles_dir), args.unit, args.to,
                                     apply=args.yes, say=lambda line: print(line, file=sys.stderr)))
