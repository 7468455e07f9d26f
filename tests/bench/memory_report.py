"""Where a running gateway's memory goes: the footprint site (32 SDM630s at 1 s, both platforms), the gateway run
with allocation tracing (tracemalloc), and its live Python allocations grouped by package after a few minutes.

    python tests/bench/memory_report.py [--seconds 180] [--meters 32]

tracemalloc sees what Python allocates (objects, buffers, SQLite's memory is not among them); the process's RSS
beside it says how much is outside Python's allocator: shared libraries, OpenSSL, SQLite's page cache. Tracing
slows the process: CPU figures of this run mean nothing (tests/bench/footprint_bench.py measures those).
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.soak.site import Site, proc_stats, wait


def group(filename: str) -> str:
    """The package a file belongs to: gateway.<part>, a library's name, or the standard library."""
    parts = Path(filename).parts
    if "gateway" in parts:
        i = len(parts) - 1 - parts[::-1].index("gateway")
        return "gateway/" + (parts[i + 1] if i + 2 < len(parts) else Path(filename).stem)
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].split(".")[0]
    if filename.startswith(("/usr", sys.base_prefix)):
        return "stdlib/" + ("/".join(parts[-2:]) if parts[-2] in ("asyncio", "json", "email", "http") else parts[-1])
    return filename


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--meters", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("FOOTPRINT_DIR", "/var/tmp")) as tmp:
        report = Path(tmp) / "memory.tsv"
        with Site(Path(tmp), tcp_meters=args.meters, rtu_meters=0, ledger=False,
                  seams={"memory_report": report}) as site:
            d = site.start_gateway()
            assert d.proc is not None
            n = args.meters
            if not wait(lambda: len(site.wattics_arrivals()) >= 3 * n and len(site.voltaware_arrivals()) >= 3 * n,
                        90):
                raise SystemExit("the platforms received too little during warm-up")
            time.sleep(args.seconds)
            rss = proc_stats(d.proc.pid)["rss_kb"] / 1024
            os.kill(d.proc.pid, signal.SIGUSR2)
            if not wait(report.exists, 60):
                raise SystemExit("no report from the gateway")
            time.sleep(1.0)
            d.stop()
            by: collections.Counter[str] = collections.Counter()
            for line in report.read_text().splitlines():
                size, _, filename = line.split("\t", 2)
                by[group(filename)] += int(size)
    traced = sum(by.values()) / 2**20
    print(f"{args.meters} meters at 1 s, both platforms, after {args.seconds:.0f} s: RSS {rss:.1f} MB, of which"
          f" {traced:.1f} MB traced Python allocations (tracing itself adds to RSS)")
    for name, size in by.most_common(20):
        print(f"  {size / 2**20:6.2f} MB  {name}")


if __name__ == "__main__":
    main()
