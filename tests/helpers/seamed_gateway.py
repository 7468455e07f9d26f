"""``meter-gateway`` with test seams put in, for daemon tests that run it as a process of its own.

    python tests/helpers/seamed_gateway.py [--timesync-flag FILE] [--page-cap-file FILE] [--memory-report FILE] -- <args>

``--timesync-flag``: the clock counts as synchronised while FILE exists (neither this machine's kernel nor
timesyncd decides). ``--page-cap-file``: the queue file may grow to the number of pages FILE holds (absent or 0:
no cap), read at every transaction, so a test fills and frees a "disk" while the gateway runs. The seams are the
gateway's own constructor arguments (``TimeKeeper(probe=...)``, ``QueueStore(page_cap=...)``); production code reads
no test switch. ``--memory-report FILE``: trace allocations (tracemalloc) and, on SIGUSR2, write where the live
memory was allocated, by file, to FILE (tests/bench/memory_report.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import gateway.daemon
from gateway.cli import main
from gateway.config import GatewayConfig
from gateway.queue import open_store
from gateway.timekeeper import TimeKeeper


def _page_cap(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def install(timesync_flag: Path | None, page_cap_file: Path | None) -> None:
    real = gateway.daemon.run_daemon

    async def run_daemon(config: GatewayConfig, config_path: Path | None, notify: Any = None,
                         local_path: Path | None = None) -> int:
        keeper = TimeKeeper(config.time_sync, probe=timesync_flag.exists) if timesync_flag else None
        store = open_store(config, page_cap=lambda: _page_cap(page_cap_file)) if page_cap_file else None
        return await real(config, config_path, notify, keeper=keeper, store=store, local_path=local_path)

    gateway.daemon.run_daemon = run_daemon  # type: ignore[assignment]


def report_memory_on_signal(path: Path) -> None:
    import signal
    import tracemalloc

    tracemalloc.start(1)

    def dump(signum: int, frame: Any) -> None:
        snapshot = tracemalloc.take_snapshot()
        stats = snapshot.statistics("filename")
        lines = [f"{s.size}\t{s.count}\t{s.traceback[0].filename}" for s in stats]
        path.write_text("\n".join(lines) + "\n")

    signal.signal(signal.SIGUSR2, dump)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--timesync-flag", type=Path)
    parser.add_argument("--page-cap-file", type=Path)
    parser.add_argument("--memory-report", type=Path)
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    ns = parser.parse_args()
    install(ns.timesync_flag, ns.page_cap_file)
    if ns.memory_report:
        report_memory_on_signal(ns.memory_report)
    rest = ns.rest[1:] if ns.rest[:1] == ["--"] else ns.rest
    sys.exit(main(rest))
