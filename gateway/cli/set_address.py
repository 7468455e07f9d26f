"""``meter-gateway set-address``: give a meter another Modbus unit id, over the line (for the models that allow it)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

from gateway.cli.common import EXIT_OK, EXIT_RUNTIME
from gateway.cli.scan import line_arguments, line_bus
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from gateway.config.profiles import Profile
    from gateway.platforms.modbus.commission import Outcome

HELP = "give a meter another unit id over Modbus (only with --yes; one meter at the old id; verified after)"
CONFIGURED = False  # takes no configuration file


def arguments(p: argparse.ArgumentParser) -> None:
    commission_arguments(p, unit="the meter's unit id now", to="the unit id to give it")


def main(args: argparse.Namespace) -> int:
    from gateway.platforms.modbus.commission import set_unit

    bus = line_bus(args, "set-address")
    return finish(args, set_unit(bus, profile_named(args.profile, args.profiles_dir), args.unit, args.to,
                                 apply=args.yes, say=lambda line: print(line, file=sys.stderr)))


def commission_arguments(p: argparse.ArgumentParser, unit: str, to: str) -> None:
    """The line, the meter, its profile and --yes: as set-address and set-baudrate take them."""
    line_arguments(p, timeout="500ms")
    p.add_argument("--unit", type=int, required=True, help=unit)
    p.add_argument("--to", type=int, required=True, help=to)
    p.add_argument("--profile", required=True, help="the meter's profile (or model name): where its setting is")
    p.add_argument("--yes", action="store_true", help="make the change (without it: check and say what it would do)")


def finish(args: argparse.Namespace, change: Coroutine[Any, Any, Outcome]) -> int:
    """Run the change, print what was done; exit 1 when --yes was given and it was not done."""
    outcome = asyncio.run(change)
    print("\n".join(outcome.lines))
    return EXIT_OK if outcome.done or not args.yes else EXIT_RUNTIME


def profile_named(name: str, profiles_dir: str | None) -> Profile:
    from pathlib import Path

    from gateway.config import profiles

    found, problems = profiles.load_all(Path(profiles_dir) if profiles_dir else None)
    for line in problems:
        print(line, file=sys.stderr)
    matches = [found[name]] if name in found else profiles.find(name, found)
    if len(matches) != 1:
        which = f" (it could be: {', '.join(p.name for p in matches)})" if matches else ""
        raise GatewayError(f"--profile {name}: no single profile by that name{which}; 'meter-gateway profiles'"
                           " lists them")
    return matches[0]
