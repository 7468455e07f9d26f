"""What the technician's page costs the daemon: the footprint benchmark's site (32 Modbus TCP meters at 1 s, Wattics
and Voltaware), measured in three windows of the same length, A B A: the page closed, then open as a browser holds
it on the Meters tab (every meter's live values followed over server-sent events: the heaviest of the page's views;
the overview instead fetches its report every 5 s), then closed again. CPU (% of one core) and RSS of the gateway
process, from /proc.

    python tests/bench/page_bench.py            # 60 s windows
    python tests/bench/page_bench.py --quick    # 15 s windows

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.soak.site import Site, proc_stats, wait


def window(pid: int, seconds: float) -> dict[str, float]:
    tick = os.sysconf("SC_CLK_TCK")
    s0, t0 = proc_stats(pid), time.monotonic()
    rss = []
    while time.monotonic() - t0 < seconds:
        time.sleep(1.0)
        rss.append(proc_stats(pid)["rss_kb"])
    s1, t1 = proc_stats(pid), time.monotonic()
    return {"cpu_percent": round((s1["cpu_ticks"] - s0["cpu_ticks"]) / tick / (t1 - t0) * 100, 2),
            "rss_mb": round(statistics.median(rss) / 1024, 1), "rss_peak_mb": round(s1["hwm_kb"] / 1024, 1)}


class OpenPage:
    """A browser holding the page open on a meter: the event stream read as it comes, the page's fetches."""

    def __init__(self, port: int, meter: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.meter = meter
        self.stop = threading.Event()
        self.events = 0
        self.fetches = 0
        self.threads = [threading.Thread(target=self._follow, daemon=True),
                        threading.Thread(target=self._fetch, daemon=True)]

    def __enter__(self) -> OpenPage:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)

    def _follow(self) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as c, c.stream("GET", "/api/events") as s:
            for line in s.iter_lines():
                if line.startswith("data:"):
                    self.events += 1
                if self.stop.is_set():
                    return

    def _fetch(self) -> None:
        """What the Meters tab fetches besides the stream: the page itself and the list, once."""
        with httpx.Client(base_url=self.base, timeout=10) as c:
            for path in ("/", "/static/app.js", "/static/app.css", "/api/session", "/api/meters"):
                c.get(path).raise_for_status()
                self.fetches += 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--meters", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=None, help="each window (default 60, quick 15)")
    args = ap.parse_args()
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    with tempfile.TemporaryDirectory(dir=os.environ.get("FOOTPRINT_DIR", "/var/tmp")) as tmp, \
            Site(Path(tmp), tcp_meters=args.meters, rtu_meters=0, ledger=False) as site:
        d = site.start_gateway()
        assert d.proc is not None
        pid, n = d.proc.pid, args.meters
        if not wait(lambda: len(site.wattics_arrivals()) >= 3 * n and len(site.voltaware_arrivals()) >= 3 * n, 60):
            raise SystemExit("the platforms received too little during warm-up")
        time.sleep(2.0)
        meter = httpx.get(f"http://127.0.0.1:{site.monitor_port}/api/meters", timeout=10).json()["meters"][0]["name"]
        closed_1 = window(pid, seconds)
        with OpenPage(site.monitor_port, meter) as page:
            time.sleep(2.0)
            opened = window(pid, seconds)
            events, fetches = page.events, page.fetches
        time.sleep(2.0)
        closed_2 = window(pid, seconds)
        d.stop()
    closed_cpu = (closed_1["cpu_percent"] + closed_2["cpu_percent"]) / 2
    result = {"bench": "page", "meters": n, "window_s": seconds, "closed_before": closed_1, "open": opened,
              "closed_after": closed_2, "cpu_added_percent": round(opened["cpu_percent"] - closed_cpu, 2),
              "rss_added_mb": round(opened["rss_mb"] - closed_1["rss_mb"], 1), "events": events,
              "fetches": fetches}
    print(f"{n} meters at 1 s, both platforms; {seconds:g} s windows, page closed / open on the Meters tab / closed")
    for name, w in (("closed", closed_1), ("open", opened), ("closed again", closed_2)):
        print(f"  {name:<13} CPU {w['cpu_percent']:>5} % of one core   RSS {w['rss_mb']:>5} MB"
              f" (peak {w['rss_peak_mb']})")
    print(f"  the open page: {events} live updates, {fetches} requests; it added {result['cpu_added_percent']} % CPU"
          f" and {result['rss_added_mb']} MB")
    if events < seconds * 0.8:
        raise SystemExit("the open page got too few live updates")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
