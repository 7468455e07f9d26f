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
    p.add_argument("name", nargs="?", help="a profile's name, or a model name (rebadges included) to look up")
    p.add_argument("--profiles-dir", help="your own profiles too")
    p.add_argument("--markdown", action="store_true",
                   help="the supported-models page (docs/meters.md) generated from the profiles")


def main(args: argparse.Namespace) -> int:
    from gateway.config import profiles
    from gateway.platforms.modbus import catalog

    found, problems = profiles.load_all(Path(args.profiles_dir) if args.profiles_dir else None)
    for line in problems:
        print(line, file=sys.stderr)
    if args.markdown:
        print(catalog.render_markdown(found), end="")
    elif args.name:
        matches = [found[args.name]] if args.name in found else profiles.find(args.name, found)
        if not matches:
            raise GatewayError(f"no profile or model named '{args.name}' ('meter-gateway profiles' lists them all)")
        print("\n\n".join(catalog.render_profile(p) for p in matches))
    else:
        print(catalog.render_profiles(found))
    return EXIT_RUNTIME if problems else EXIT_OK
