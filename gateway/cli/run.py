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
    local = path = Path(args.config)
    # A configuration applied remotely (fleet broker, technician's page) runs instead of the local file (unless the
    # local file was edited since, or an apply was interrupted: see gateway/fleet/remote.py).
    import structlog

    from gateway.errors import ConfigError
    from gateway.fleet.remote import RemoteConfig, load_file

    chosen = RemoteConfig(local, config.state_dir).choose()
    if chosen != local:
        try:
            config, path = load_file(chosen, local), chosen
        except (ConfigError, OSError) as e:
            problems = e.problems if isinstance(e, ConfigError) else [str(e)]
            structlog.get_logger("gateway.fleet.remote").error(
                "the configuration applied remotely cannot be loaded; the local file runs", path=str(chosen),
                problems=problems)
    return asyncio.run(run_daemon(config, path, local_path=local))
