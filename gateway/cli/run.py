"""``meter-gateway run``: the daemon (the systemd service runs this)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from gateway.cli.common import load

HELP = "run the gateway (the systemd service runs this)"


def arguments(p: argparse.ArgumentParser) -> None:
    return None


def main(args: argparse.Namespace) -> int:
    from gateway.daemon import run_daemon

    config = load(args)
    return asyncio.run(run_daemon(config, Path(args.config)))
