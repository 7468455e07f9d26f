"""meter-gateway against the programs its users would otherwise choose, on one machine and one site: 32 simulated
SDM630 meters on Modbus TCP read every second (the footprint benchmark's site), one platform over HTTPS and one over
MQTT with TLS, everything on loopback.

    python tests/bench/peers/peers_bench.py                # installs the peers once, then A B C C B A, 120 s each
    python tests/bench/peers/peers_bench.py --seconds 60   # shorter windows
    python tests/bench/peers/peers_bench.py --only gateway,node-red --order once

The peers are installed under ``--prefix`` (default /var/tmp/meter-gateway-peers): the ThingsBoard IoT Gateway
from PyPI into a virtual environment, Node-RED and node-red-contrib-modbus from npm (versions pinned in
``programs.py``). Each program runs in turn, alone, in the order A B C C B A (the machine is shared: what drifts
over the run weighs on every program alike), and is measured from /proc over its whole process tree after a
warm-up: CPU as % of one core, resident memory (median of one sample a second, and the highest sample), bytes it
wrote to storage per reading delivered. A reading counts when the platform received it: Wattics packets for
meter-gateway and Node-RED (one per reading), entries of ThingsBoard's telemetry messages on the broker.

Then ``--outage``: the platform each program delivers to is taken away for 30 s (Wattics answers 503; for the
ThingsBoard gateway the broker is stopped) and the readings of those 30 s that arrive once it is back are counted.
``--crash``: each program is killed (SIGKILL) and started again on the same files; a minute later, the gap in each
meter's series between the last reading delivered from before the kill and the kill counts the readings it had
taken and lost; then a SIGKILL 20 s into a 30 s outage of its platform, and the readings of the outage that
arrive once both are back.

Not part of CI (it installs two large programs). The last line is one JSON object.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.bench.peers.programs import PROGRAMS, Program, install, settle, tree
from tests.soak.site import Site, proc_stats


def sample(pids: list[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for pid in pids:
        try:
            s = proc_stats(pid)
        except (OSError, KeyError):
            continue
        for k, v in s.items():
            out[k] = out.get(k, 0) + v
    return out


def measure(program: Program, n: int, window: float) -> dict[str, Any]:
    tick = os.sysconf("SC_CLK_TCK")
    time.sleep(5.0)  # past the start
    pids = tree(program.pid)
    d0, s0, t0 = program.delivered(), sample(pids), time.monotonic()
    rss: list[int] = []
    while time.monotonic() - t0 < window:
        time.sleep(1.0)
        pids = tree(program.pid)
        rss.append(sample(pids)["rss_kb"])
    d1, s1, t1 = program.delivered(), sample(pids), time.monotonic()
    elapsed = t1 - t0
    delivered = d1 - d0
    written = (s1["write_bytes"] - s0["write_bytes"]) - (s1["cancelled_write_bytes"] - s0["cancelled_write_bytes"])
    return {
        "program": program.name, "window_s": round(elapsed), "processes": len(pids),
        "readings_per_s": round(delivered / elapsed, 1),
        "cpu_percent_of_one_core": round((s1["cpu_ticks"] - s0["cpu_ticks"]) / tick / elapsed * 100, 1),
        "rss_steady_mb": round(statistics.median(rss) / 1024, 1), "rss_peak_mb": round(max(rss) / 1024, 1),
        "bytes_written_per_reading": round(written / delivered) if delivered else None,
    }


def outage(program: Program, site: Site, key: str, n: int, seconds: float = 30.0,
           kill_at: float | None = None) -> dict[str, Any]:
    """Take the program's platform away for ``seconds``: how many of the readings taken meanwhile (stamped within
    the outage) reach the platform once it is back, a minute later. With ``kill_at``, the program is also killed
    (SIGKILL) that many seconds into the outage and started again on its own files: what it had stored survives."""
    t0 = time.time() * 1000

    def wait() -> None:
        if kill_at is None:
            time.sleep(seconds)
            return
        time.sleep(kill_at)
        program.kill()
        time.sleep(2.0)
        program.relaunch()
        time.sleep(max(0.0, seconds - kill_at - 2.0))

    if key == "thingsboard":
        site.broker.stop()
        wait()
        site.broker.start()
    else:
        site.wattics.answer(503, times=10**9)
        wait()
        site.wattics.clear_faults()
    t1 = time.time() * 1000
    time.sleep(60.0)
    got = {r for r in program.received() if t0 + 1000 <= r[1] < t1 - 1000}  # a second's margin each side
    expected = n * (seconds - 2)
    return {"outage_s": seconds, "killed_at_s": kill_at, "readings_of_the_outage_delivered": len(got),
            "of": round(expected), "share": round(len(got) / expected, 2)}


def crash(program: Program, n: int) -> dict[str, Any]:
    """SIGKILL the program while it runs, start it again on the same files, and, a minute later, look at each
    meter's series at the platform: the readings it took in the moments before the kill that never arrived show as
    a gap between the last reading delivered from before the kill and the kill itself (at one reading a second,
    a gap of k whole seconds is k readings lost). A program that stores what it takes before sending it loses none."""
    time.sleep(15.0)
    killed_ms = time.time() * 1000
    program.kill()
    time.sleep(3.0)
    program.relaunch()
    time.sleep(60.0)
    last: dict[str, int] = {}
    for meter, ts in program.received():
        if ts < killed_ms and ts > last.get(meter, -1):
            last[meter] = ts
    lost = {m: max(0, int((killed_ms - ts) // 1000)) for m, ts in last.items()}
    return {"meters": len(last), "readings_lost": sum(lost.values()),
            "meters_with_a_loss": sum(1 for v in lost.values() if v), "worst_meter_s": max(lost.values(), default=0)}


def cell(row: dict[str, Any], base: dict[str, Any] | None, f: str, width: int) -> str:
    """A median, with its ratio to meter-gateway's."""
    v = row.get(f)
    if v is None:
        return f"{'-':>{width}}"
    ratio = f" ({v / base[f]:.1f}x)" if base and base.get(f) else ""
    return f"{v:g}{ratio}".rjust(width)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefix", type=Path, default=Path("/var/tmp/meter-gateway-peers"))
    ap.add_argument("--seconds", type=float, default=120.0, help="measured window per run")
    ap.add_argument("--only", default="gateway,thingsboard,node-red")
    ap.add_argument("--order", choices=["abccba", "once"], default="abccba")
    ap.add_argument("--outage", action="store_true", help="then a 30 s outage of each program's platform")
    ap.add_argument("--crash", action="store_true", help="then a SIGKILL of each program, started again")
    args = ap.parse_args()
    keys = args.only.split(",")
    install(args.prefix)
    order = keys + keys[::-1] if args.order == "abccba" else keys
    n = 32
    runs: list[dict[str, Any]] = []
    outages: dict[str, Any] = {}
    crashes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("FOOTPRINT_DIR", "/var/tmp")) as tmp, \
            Site(Path(tmp) / "site", tcp_meters=n, rtu_meters=0, ledger=False) as site:
        for i, key in enumerate(order):
            program = PROGRAMS[key](site, Path(tmp) / f"{key}-{i}", args.prefix)
            program.start()
            try:
                if not settle(program, n):
                    raise SystemExit(f"{program.name} delivered too little during warm-up\n{program.tail()}")
                r = measure(program, n, args.seconds) | {"key": key, "run": i}
                print(json.dumps(r), flush=True)
                runs.append(r)
                if args.outage and key not in outages:
                    outages[key] = outage(program, site, key, n)
                    print(json.dumps({"key": key, "outage": outages[key]}), flush=True)
                if args.crash and key not in crashes:
                    crashes[key] = crash(program, n) | {"during_an_outage": outage(program, site, key, n, 30.0, 20.0)}
                    print(json.dumps({"key": key, "crash": crashes[key]}), flush=True)
            finally:
                program.stop()
            time.sleep(3.0)
    table = {}
    for key in keys:
        mine = [r for r in runs if r["key"] == key]
        table[key] = {f: statistics.median(r[f] for r in mine) for f in
                      ("cpu_percent_of_one_core", "rss_steady_mb", "rss_peak_mb", "bytes_written_per_reading",
                       "readings_per_s") if all(r[f] is not None for r in mine)}
        table[key]["name"] = mine[0]["program"]
        table[key]["runs"] = len(mine)
    base = table.get("gateway")
    print(f"\n32 SDM630 meters on Modbus TCP at 1 s, {args.seconds:g} s per run, order {' '.join(order)};"
          " medians (ratio to meter-gateway)")
    print(f"{'':<38}{'CPU % core':>16}{'RSS steady MB':>18}{'RSS peak MB':>16}{'bytes/reading':>18}{'readings/s':>12}")
    for key, row in table.items():
        ref = base if key != "gateway" else None
        print(f"{row['name']:<38}{cell(row, ref, 'cpu_percent_of_one_core', 16)}"
              f"{cell(row, ref, 'rss_steady_mb', 18)}{cell(row, ref, 'rss_peak_mb', 16)}"
              f"{cell(row, ref, 'bytes_written_per_reading', 18)}{cell(row, ref, 'readings_per_s', 12)}")
    for key, o in outages.items():
        print(f"{table[key]['name']:<38} after a {o['outage_s']:g} s outage: {o['readings_of_the_outage_delivered']}"
              f" of {o['of']} readings of the outage delivered ({o['share']:.0%})")
    for key, c in crashes.items():
        o = c["during_an_outage"]
        print(f"{table[key]['name']:<38} SIGKILL: {c['readings_lost']} readings taken before the kill never"
              f" delivered ({c['meters_with_a_loss']} of {c['meters']} meters; worst {c['worst_meter_s']} s);"
              f" killed 20 s into a 30 s outage: {o['readings_of_the_outage_delivered']} of {o['of']} readings of the"
              f" outage delivered ({o['share']:.0%})")
    print(json.dumps({"bench": "peers", "order": order, "seconds": args.seconds, "table": table, "runs": runs,
                      "outages": outages, "crashes": crashes,
                      "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}))


if __name__ == "__main__":
    main()
