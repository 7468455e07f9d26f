"""``meter-gateway future``: queued readings stamped in the future (a device clock that was wrong)."""

from __future__ import annotations

import argparse

from gateway.cli.common import EXIT_OK, load, open_beside
from gateway.reading import iso_utc

HELP = ("queued readings stamped in the future (a device clock that was wrong): list them, or move them to the dead"
        " letters so the meter's readings go again")


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--move", action="store_true",
                   help="move them to the dead letters (the daemon must be stopped: 'systemctl stop meter-gateway')")


def main(args: argparse.Namespace) -> int:
    """A reading stamped in 2099 that was queued (before the gateway refused such readings, or while its clock was
    not yet trusted) makes every later reading of its meter "not newer": this finds them and moves them aside."""
    import time

    from gateway.statelock import StateLock

    config = load(args)
    cutoff = int((time.time() + config.future_tolerance) * 1000)
    lock = StateLock(config.state_dir)
    if args.move:
        lock.acquire()  # the daemon keeps the meters' last timestamps in memory: it must not run meanwhile
    try:
        store = open_beside(config)
        if store is None:
            print("no queue yet: nothing stamped in the future")
            return EXIT_OK
        try:
            ahead = store.ahead_of(cutoff)
            if not ahead:
                print(f"no queued reading is stamped after {iso_utc(cutoff)} (now + future_tolerance)")
                return EXIT_OK
            for meter, stamps in ahead.items():
                shown = ", ".join(iso_utc(ts) for ts in stamps[:3]) + (" ..." if len(stamps) > 3 else "")
                print(f"{meter}: {len(stamps)} queued reading(s) stamped in the future: {shown}")
            if not args.move:
                print("stop the daemon and run this again with --move to move them to the dead letters"
                      " ('meter-gateway deadletter list' shows them then)")
                return EXIT_OK
            store.begin()
            cursors: dict[str, list[str]] = {}
            for stream in (st for sl in config.sink_streams().values() for st in sl):
                cursors.setdefault(stream.cursor, []).append(stream.meter)
            store.configure(cursors)
            moved = store.quarantine_after(cutoff, f"stamped in the future (after {iso_utc(cutoff)}): the"
                                                   " device's clock was wrong")
            store.commit()
        finally:
            store.close()
    finally:
        lock.release()
    for meter, n in moved.items():
        print(f"{meter}: {n} reading(s) moved to the dead letters; its readings are accepted again")
    return EXIT_OK
