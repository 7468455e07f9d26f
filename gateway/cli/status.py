"""``meter-gateway status``: queue depth, delivery and meters, read from the queue file (also while the daemon
runs)."""

from __future__ import annotations

import argparse
import json

from gateway.cli.common import EXIT_OK, EXIT_RUNTIME, load, open_beside

HELP = "queue depth, delivery and meters, also while the daemon runs"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.add_argument("--check", action="store_true",
                   help="exit 1 unless the daemon runs and no sink is failing (container HEALTHCHECK)")


def main(args: argparse.Namespace) -> int:
    from gateway import status

    config = load(args)
    store = open_beside(config)
    if store is None:
        from gateway.queue.watch import peek_marker

        lost = peek_marker(config.state_dir)
        if lost is not None:
            print(f"queue:  LOST: {lost.get('path')} was {lost.get('what', 'removed')} while the gateway (pid"
                  f" {lost.get('pid')}) ran; no reading is accepted; restart the service (and find out why the file"
                  " went)")
            return EXIT_RUNTIME
        print(f"daemon: not running; no queue yet at {config.state_dir / 'queue.db'}")
        return EXIT_RUNTIME if args.check else EXIT_OK
    try:
        report = status.collect(store.snapshot(status.backlog_streams(config)), config)
    finally:
        store.close()
    print(json.dumps(report, indent=2) if args.json else status.render(report))
    if args.check:
        healthy = report["daemon"]["running"] and not any(s["failing"] for s in report["sinks"].values())
        return EXIT_OK if healthy else EXIT_RUNTIME
    return EXIT_OK
