"""``meter-gateway profiles``: the built-in meter profiles, or one profile's registers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.cli.common import EXIT_OK, EXIT_RUNTIME
from gateway.errors import GatewayError

HELP = "the built-in meter profiles, or one profile's registers"
CONFIGURED = False  # takes no configuration file


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="a profile's name")
    p.add_argument("--profiles-dir", help="your own profiles too")


def main(args: argparse.Namespace) -> int:
    from gateway.config import profiles
    from gateway.platforms.modbus import tools

    found, problems = profiles.load_all(Path(args.profiles_dir) if args.profiles_dir else None)
    for line in problems:
        print(line, file=sys.stderr)
    if args.name:
        if args.name not in found:
            raise GatewayError(f"no profile named '{args.name}' (known: {', '.join(sorted(found))})")
        print(tools.render_profile(found[args.name]))
    else:
        print(tools.render_profiles(found))
    return EXIT_RUNTIME if problems else EXIT_OK
