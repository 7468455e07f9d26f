"""Footprint of the gateway process: a site of 32 Modbus TCP meters read every second, feeding Wattics (HTTPS
emulator) and Voltaware (TLS mosquitto), everything on loopback, the gateway as ``meter-gateway run``.

Measured from /proc for the gateway process only (all its threads): CPU as % of one core, resident memory (steady:
the median of one sample a second; peak: the kernel's high-water mark), bytes written to storage per reading
(``write_bytes`` less ``cancelled_write_bytes``: what reaches the block device, the figure that wears an SD card;
the journal's segments, deleted before writeback, never do), and fsyncs per second (strace,
in a window of its own after the CPU window, since tracing slows the process). Readings per second come from the
gateway's own ``/metrics``.

    python tests/bench/footprint_bench.py            # full form: 5 minutes measured
    python tests/bench/footprint_bench.py --quick    # under 60 s in all
    python tests/bench/footprint_bench.py --long     # an hour measured: RSS at 5 minutes and at the end

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.wal_pages import follow, print_report
from tests.soak.site import Site, counting_fsyncs, device_written, proc_stats, wait

GB = 1e9


def readings_total(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "meter_gateway_readings_total")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--meters", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=None, help="measured window (default 300, quick 25)")
    ap.add_argument("--long", action="store_true",
                    help="an hour measured: is memory flat? (RSS at 5 minutes and at the end, and their ratio)")
    ap.add_argument("--commit-interval", default=None, help="queue.commit_interval (default: the gateway's)")
    ap.add_argument("--pages", action="store_true", help="then follow the queue's WAL: pages per commit, by table")
    args = ap.parse_args()
    window = args.seconds or (25.0 if args.quick else 3600.0 if args.long else 300.0)
    fsync_window = 6.0 if args.quick else 30.0
    tick = os.sysconf("SC_CLK_TCK")
    with tempfile.TemporaryDirectory(dir=os.environ.get("FOOTPRINT_DIR", "/var/tmp")) as tmp, \
            Site(Path(tmp), tcp_meters=args.meters, rtu_meters=0, ledger=False,
                 queue=f"commit_interval: {args.commit_interval}" if args.commit_interval else "") as site:
        d = site.start_gateway()
        assert d.proc is not None
        pid = d.proc.pid
        n = args.meters
        if not wait(lambda: len(site.wattics_arrivals()) >= 3 * n and len(site.voltaware_arrivals()) >= 3 * n, 60):
            raise SystemExit("the platforms received too little during warm-up")
        time.sleep(2.0)  # past the start: memory and caches settled
        r0, s0, t0 = readings_total(site.monitor_port), proc_stats(pid), time.monotonic()
        dev0 = device_written(Path(tmp))
        rss: list[int] = []
        anon: list[int] = []
        while time.monotonic() - t0 < window:
            time.sleep(1.0)
            sample = proc_stats(pid)
            rss.append(sample["rss_kb"])
            anon.append(sample["rss_anon_kb"])
        r1, s1, t1 = readings_total(site.monitor_port), proc_stats(pid), time.monotonic()
        dev1 = device_written(Path(tmp))
        with counting_fsyncs(pid) as fs:
            time.sleep(fsync_window)
        pages = follow(Path(tmp) / "state" / "queue.db", fsync_window) if args.pages else None
        w0, v0 = len(site.wattics_arrivals()), len(site.voltaware_arrivals())
        d.stop()
        elapsed = t1 - t0
        readings = r1 - r0
        cpu = (s1["cpu_ticks"] - s0["cpu_ticks"]) / tick / elapsed * 100
        # What reached the storage: pages dirtied less those dropped before writeback (the journal's segments,
        # deleted once committed; Linux counts them in cancelled_write_bytes).
        cancelled = s1["cancelled_write_bytes"] - s0["cancelled_write_bytes"]
        written = s1["write_bytes"] - s0["write_bytes"] - cancelled
        per_reading = written / readings if readings else float("nan")
        per_day = per_reading * n * 86400
        fsyncs = fs.get("fsyncs", -1) / fs["seconds"] if fs.get("seconds") else float("nan")
        result = {
            "bench": "footprint", "meters": n, "interval_s": 1, "window_s": round(elapsed),
            "readings": int(readings), "readings_per_s": round(readings / elapsed, 1),
            "delivered_wattics": w0, "delivered_voltaware": v0,
            "cpu_percent_of_one_core": round(cpu, 1),
            "rss_steady_mb": round(statistics.median(rss) / 1024, 1), "rss_peak_mb": round(s1["hwm_kb"] / 1024, 1),
            "rss_anon_steady_mb": round(statistics.median(anon) / 1024, 1),
            "bytes_written_per_reading": round(per_reading), "gb_written_per_day_32_meters_1s": round(per_day / GB, 2),
            "journal_bytes_dropped_per_reading": round(cancelled / readings) if readings else None,
            # Everything the device took meanwhile, from every process, file system metadata included: an upper
            # bound, noisy on a shared machine.
            "device_bytes_per_reading_upper_bound": round((dev1 - dev0) / readings) if readings and dev0 is not None
            and dev1 is not None else None,
            "fsyncs_per_s": round(fsyncs, 1), "commit_interval": args.commit_interval or "default",
            # Flat over the run? The median RSS of the minute after the fifth, and of the last minute.
            "rss_at_5_min_mb": round(statistics.median(rss[300:360]) / 1024, 1) if len(rss) >= 420 else None,
            "rss_at_end_mb": round(statistics.median(rss[-60:]) / 1024, 1) if len(rss) >= 420 else None,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        }
    print(f"{n} Modbus TCP meters (full SDM630 map, 35 values) at 1 s -> Wattics + Voltaware; {round(elapsed)} s"
          " measured")
    print(f"  readings/s             {result['readings_per_s']:>10}")
    print(f"  CPU, % of one core     {result['cpu_percent_of_one_core']:>10}   (target < 10)")
    print(f"  RSS steady / peak, MB  {result['rss_steady_mb']:>5} / {result['rss_peak_mb']:<5} (target < 80)")
    print(f"  of which anonymous, MB {result['rss_anon_steady_mb']:>10}   (the rest: mapped code, shared)")
    print(f"  bytes written/reading  {result['bytes_written_per_reading']:>10}   ->"
          f" {result['gb_written_per_day_32_meters_1s']} GB/day for 32 meters at 1 s (target < 1)")
    print(f"  fsyncs/s               {result['fsyncs_per_s']:>10}")
    if result["rss_at_5_min_mb"] is not None:
        growth = (result["rss_at_end_mb"] / result["rss_at_5_min_mb"] - 1) * 100
        result["rss_growth_percent"] = round(growth, 1)
        print(f"  RSS at 5 min / end, MB {result['rss_at_5_min_mb']:>5} / {result['rss_at_end_mb']:<5}"
              f" ({growth:+.1f} %; flat: within 5 %)")
    if pages is not None:
        print_report(pages)
        result["wal"] = pages
    print(json.dumps(result))


if __name__ == "__main__":
    main()
