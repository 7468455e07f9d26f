"""``meter-gateway deadletter``: readings a platform refused for good: list them, mark them for the running daemon
to send again, or purge them."""

from __future__ import annotations

import argparse
import sys

from gateway.cli.common import EXIT_CONFIG, EXIT_OK, load, open_beside
from gateway.reading import iso_utc

HELP = "readings a platform refused: list, retry or purge them"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("list", "retry", "purge"))
    p.add_argument("--sink", help="only this sink's dead letters")
    p.add_argument("--id", type=int, nargs="+", dest="ids", help="only these dead letters")
    p.add_argument("--all", action="store_true", help="with purge: every dead letter (of --sink, if given)")


def main(args: argparse.Namespace) -> int:
    config = load(args)
    store = open_beside(config)
    if store is None:
        print("no dead letters (no queue yet)")
        return EXIT_OK
    try:
        if args.action == "list":
            letters = [d for d in store.dead_letters(args.sink) if not args.ids or d.id in args.ids]
            if not letters:
                print("no dead letters")
            for d in letters:
                print(f"#{d.id} sink={d.sink} meter={d.reading.meter} ts={iso_utc(d.reading.ts_ms)} state={d.state}"
                      f" attempts={d.attempts} reason={d.reason}")
            return EXIT_OK
        if args.action == "purge" and not (args.ids or args.all):
            print("meter-gateway: purge deletes readings for good: name them with --id, or give --all",
                  file=sys.stderr)
            return EXIT_CONFIG
        store.begin()
        if args.action == "retry":
            n = store.mark_dead_letters(args.ids, "retry", args.sink)
        else:
            n = store.purge_dead_letters(args.ids, args.sink)
        store.commit()
        verb = "marked for retry (the running daemon sends them within seconds)" if args.action == "retry" \
            else "purged"
        print(f"{n} dead letter{'s' if n != 1 else ''} {verb}")
        return EXIT_OK
    finally:
        store.close()
