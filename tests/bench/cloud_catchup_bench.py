"""Catching up a cloud: 30 days of 15-minute Intellimeter reads for 20 meters, after an outage.

    python tests/bench/cloud_catchup_bench.py [--quick] [--days N] [--meters N] [--latency S]

The emulator (tests/helpers/intellimeter_emulator.py, over HTTPS, each answer delayed by ``--latency``, 100 ms by
default) holds the backlog; the daemon starts as a separate process with an empty queue, ``first_reach_back``
covering it, and a file sink. Measured: the time from the daemon's start until the file sink has written every
read, the requests it made, the largest answer, and the daemon's peak RSS (VmHWM), against a baseline: the same
daemon with one read per meter to take. Run twice: one request for every property, and one request per property
(``properties``: 4 properties of 5 meters). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.helpers.intellimeter_emulator import IntellimeterEmulator  # noqa: E402
from tests.helpers.wattzon_emulator import WattzonEmulator  # noqa: E402

PROPERTIES = 4


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def queued(state: Path) -> int:
    """Readings the queue accepted so far (its per-meter last timestamps say where each got to)."""
    try:
        db = sqlite3.connect(f"file:{state / 'queue.db'}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return 0
    try:
        rows = db.execute("SELECT name, last_ts FROM meters").fetchall()
    except sqlite3.Error:
        return -1
    finally:
        db.close()
    return len(rows)


def archived(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)


def run(days: float, meters: int, latency: float, split: bool, quick: bool) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="catchup-"))
    emu = IntellimeterEmulator(tmp / "certs", latency=latency).start()
    try:
        n = int(days * 96)
        start = emu.now_local() - timedelta(minutes=15 * n)
        for i in range(meters):
            emu.add_meter(f"M{i:03d}", f"SER-{i:03d}", f"p{i % PROPERTIES}")
            emu.add_series(f"M{i:03d}", start, 900.0, n, kwh0=1000.0 + i)
        total = n * meters
        props = "    properties: [" + ", ".join(f"p{k}" for k in range(PROPERTIES)) + "]\n" if split else ""
        meter_lines = "".join(f"  - {{name: m{i:03d}, type: intellimeter, cloud: im, meter_id: M{i:03d}}}\n"
                              for i in range(meters))
        cfg = tmp / "config.yaml"
        cfg.write_text(f"""\
site: {{name: bench, timezone: America/Toronto}}
state_dir: {tmp}/state
time_sync: ignore
queue: {{max_age: 90d}}
clouds:
  - type: intellimeter
    name: im
    url: {emu.url}
    client_id: im-client
    client_secret: im-s3cret
    ca_file: {emu.ca_file}
    interval: 1h
    first_reach_back: {int(days) + 1}d
    max_reach_back: {int(days) + 2}d
{props}meters:
{meter_lines}sinks:
  - {{name: archive, type: file, path: {tmp}/archive.jsonl}}
""")
        archived_s, peak, idle = watch([sys.executable, "-m", "gateway", "--log-format", "json", "run", "-c",
                                        str(cfg)], tmp / "archive.jsonl", total, quick)
        reads = emu.requests("/api/v1/read")
        largest = max((len(json.dumps(emu.read(q)[1])) for q in reads[:PROPERTIES + 1]), default=0)
        return {"meters": meters, "days": days, "reads": total, "per_property": split,
                "archived_s": None if archived_s is None else round(archived_s, 2),
                "read_requests": len(reads), "auth_requests": len(emu.grants),
                "peak_rss_mb": round(peak / 1024, 1), "after_rss_mb": round(idle / 1024, 1),
                "largest_answer_mb": round(largest / 1e6, 1)}
    finally:
        emu.stop()


def watch(cmd: list[str], out: Path, total: int, quick: bool) -> tuple[float | None, int, int]:
    """Start the daemon; (seconds until ``out`` has ``total`` lines, peak RSS kB, RSS kB afterwards)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    peak, done = 0, None
    deadline = t0 + (120 if quick else 900)
    while time.monotonic() < deadline:
        time.sleep(0.05)
        peak = max(peak, rss_kb(proc.pid, "VmRSS"))
        if archived(out) >= total:
            done = time.monotonic() - t0
            break
    peak = max(peak, rss_kb(proc.pid, "VmHWM"))
    time.sleep(2)
    after = rss_kb(proc.pid, "VmRSS")
    proc.terminate()
    proc.wait(30)
    return done, peak, after


def run_wattzon(days: float, meters: int, latency: float, quick: bool) -> dict[str, object]:
    """WattzOn Link: ``meters`` interval meters of one profile, each with ``days`` of 15-minute intervals in
    monthly files (fetched one month at a time), no job started (the data is there)."""
    tmp = Path(tempfile.mkdtemp(prefix="catchup-wz-"))
    emu = WattzonEmulator(tmp / "certs", latency=latency).start()
    try:
        p = emu.profile(1)
        n = int(days * 96)
        start = int(time.time()) // 900 * 900 - n * 900
        for i in range(meters):
            rows_by_month: dict[str, list[dict[str, object]]] = {}
            for k in range(n):
                t = start + k * 900
                ym = time.strftime("%Y-%m", time.gmtime(t))
                rows_by_month.setdefault(ym, []).append({"start": t, "end": t + 900, "usage": 0.25 + k % 7 / 100})
            for ym, rows in rows_by_month.items():
                p.months[(f"M{i:03d}", ym)] = {"complete": True, "rows": rows}
        total = n * meters
        meter_lines = "".join(f"  - {{name: m{i:03d}, type: wattzon, cloud: wz, profile_id: 1, data: intervals,"
                              f" meter_id: M{i:03d}, interval: 15m}}\n" for i in range(meters))
        cfg = tmp / "config.yaml"
        cfg.write_text(f"""\
site: {{name: bench, timezone: UTC}}
state_dir: {tmp}/state
time_sync: ignore
queue: {{max_age: 90d}}
clouds:
  - type: wattzon
    name: wz
    url: {emu.url}
    cert_file: {emu.client_cert}
    key_file: {emu.client_key}
    ca_file: {emu.ca_file}
    start_jobs: false
meters:
{meter_lines}sinks:
  - {{name: archive, type: file, path: {tmp}/archive.jsonl}}
""")
        done, peak, after = watch([sys.executable, "-m", "gateway", "--log-format", "json", "run", "-c", str(cfg)],
                                  tmp / "archive.jsonl", total, quick)
        largest = max(len(json.dumps({"intervals": m["rows"]})) for m in p.months.values())
        return {"source": "wattzon", "meters": meters, "days": days, "reads": total,
                "archived_s": None if done is None else round(done, 2), "requests": len(emu.log),
                "peak_rss_mb": round(peak / 1024, 1), "after_rss_mb": round(after / 1024, 1),
                "largest_answer_mb": round(largest / 1e6, 2)}
    finally:
        emu.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="3 days instead of 30")
    p.add_argument("--days", type=float, default=None)
    p.add_argument("--meters", type=int, default=20)
    p.add_argument("--latency", type=float, default=0.1)
    a = p.parse_args()
    days = a.days or (3.0 if a.quick else 30.0)
    base = run(1 / 96, a.meters, a.latency, False, a.quick)  # one read per meter: the daemon with nothing to catch up
    print(f"baseline: {a.meters} meters, one read each: peak RSS {base['peak_rss_mb']} MB")
    results = [run(days, a.meters, a.latency, split, a.quick) for split in (False, True)]
    for r in results:
        how = f"one request per property ({PROPERTIES})" if r["per_property"] else "one request for every property"
        print(f"{r['meters']} meters x {r['days']:g} days of 15-min reads = {r['reads']:,} reads, {how}:"
              f" all archived in {r['archived_s']} s; {r['read_requests']} read request(s),"
              f" {r['auth_requests']} token request(s); largest answer {r['largest_answer_mb']} MB; peak RSS"
              f" {r['peak_rss_mb']} MB, {r['after_rss_mb']} MB afterwards")
    wz = run_wattzon(days, a.meters, a.latency, a.quick)
    print(f"WattzOn Link: {wz['meters']} interval meters x {wz['days']:g} days of 15-min intervals = {wz['reads']:,}"
          f" periods, one month per request: all archived in {wz['archived_s']} s; {wz['requests']} requests;"
          f" largest answer {wz['largest_answer_mb']} MB; peak RSS {wz['peak_rss_mb']} MB,"
          f" {wz['after_rss_mb']} MB afterwards")
    results.append(wz)
    print(json.dumps({"cloud_catchup": results, "baseline_peak_rss_mb": base["peak_rss_mb"]}))
    if any(r["archived_s"] is None for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
