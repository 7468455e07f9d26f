"""The knee of one box: the footprint site (SDM630s, full map, read every second over Modbus TCP, delivered to
Wattics and Voltaware) at growing sizes, until the gateway stops keeping every tick or the platforms fall behind.

    python tests/bench/capacity_bench.py                          # 32 to 1024 meters, 120 s measured each
    python tests/bench/capacity_bench.py --quick                  # 32 and 128 meters, 20 s each (CI)
    python tests/bench/capacity_bench.py --sizes 256,512 --seconds 60

Each meter is a Modbus TCP device of its own (a bus of the gateway, one connection), as Modbus TCP meters are
installed; ``--shared-endpoint`` puts 32 behind each endpoint read over 4 connections instead (the footprint site's
layout: a Modbus TCP gateway with meters behind it). The peers run in processes of their own so that they are not
the limit within the gateway's process: the meters 32 to a server port, four ports to a process, each a lean Modbus TCP
responder (``tests/helpers/meter_farm.py --lean``: pymodbus's server costs about a millisecond of CPU a request, and
a thousand meters polled at the same second would measure the simulators; ``--pymodbus`` uses it); the Wattics emulator
(HTTPS, ``--light``: it keeps counts, not packets); a TLS mosquitto for Voltaware with a subscriber in this process.
They still share this machine's cores with the gateway, so the peers' CPU is printed too: where the box, not the
gateway, is the limit, the table says so.

Per size, over the measured window (after a warm-up that waits for both platforms to receive):

- the gateway's CPU (% of one core, all threads), RSS steady (median) and peak, bytes written per reading;
- readings per second, ticks skipped (a poll still running at the next tick: a reading not taken), read errors;
- per platform: deliveries per second, delivery lag (arrival at the platform less the reading's time) p50 / p99,
  and the backlog left at the end;
- "keeps up": no tick skipped, no read error, both platforms delivering as fast as readings come (their backlog at
  the end at most 10 s of readings: a platform slower than the meters ends further behind), and a p99 lag under
  10 s (readings are sent once committed, every ``commit_interval``: 5 s by default).

Readings are counted when committed, so the window runs from just after one commit to just after another.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.helpers.daemon import Daemon  # noqa: E402
from tests.helpers.mosquitto import Mosquitto, free_port  # noqa: E402
from tests.soak.site import PROFILE, Watcher, proc_stats, wait  # noqa: E402

PER_BUS = 32
#: Keeping up: a platform's p99 delivery lag under this. Forwarders send what is committed (every commit_interval,
#: 5 s by default), so a lag of up to 5 s is the design; more means a backlog.
MAX_LAG_S = 10.0
BUSES_PER_FARM = 4
TICK = os.sysconf("SC_CLK_TCK")


def metrics(port: int) -> dict[str, float]:
    """Sums over labels of the gateway's counters and gauges that the table uses."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + ("{" + s.labels["sink"] + "}" if "sink" in s.labels else "")
            out[key] = out.get(key, 0.0) + s.value
    return out


def at_commit(port: int, timeout: float = 30.0) -> tuple[dict[str, float], float]:
    """The gateway's metrics just after a queue commit, and when: readings are counted when committed (every
    ``commit_interval``), so a rate taken between two commits is exact, one taken anywhere else is off by up to a
    commit's worth at each end."""
    before = metrics(port).get("meter_gateway_readings_total", 0.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = metrics(port)
        if now.get("meter_gateway_readings_total", 0.0) != before:
            return now, time.monotonic()
    return now, time.monotonic()


def cpu_ticks(pid: int, system_only: bool = False) -> int:
    """CPU ticks of a process, all threads (user + system, or system only: time in the kernel)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[12]) + (0 if system_only else int(fields[11]))
    except (OSError, IndexError):
        return 0


class Peers:
    """Meter farms, the Wattics emulator and a TLS mosquitto with a watching subscriber, for ``meters`` meters."""

    def __init__(self, workdir: Path, meters: int, lean: bool = True) -> None:
        self.dir = workdir
        self.meters = meters
        self.procs: list[subprocess.Popen[str]] = []
        self.ports: list[int] = []
        buses = -(-meters // PER_BUS)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for first in range(0, buses, BUSES_PER_FARM):
            n = min(BUSES_PER_FARM, buses - first)
            command = [sys.executable, "-m", "tests.helpers.meter_farm", "--buses", str(n),
                       "--meters-per-bus", str(PER_BUS), *(["--lean"] if lean else [])]
            farm = subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE)
            self.procs.append(farm)
        for farm in self.procs:
            assert farm.stdout is not None
            self.ports += [int(p) for p in farm.stdout.readline().split()]
        self.emulator = subprocess.Popen([sys.executable, "-m", "tests.helpers.wattics_emulator", str(workdir / "w"),
                                          "--light"], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE)
        assert self.emulator.stdout is not None
        self.wattics_port = int(self.emulator.stdout.readline())
        self.procs.append(self.emulator)
        self.broker = Mosquitto(workdir / "broker").start()
        self.watcher = Watcher(self.broker)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs] + ([self.broker.proc.pid] if self.broker.proc else [])

    def wattics(self, path: str) -> dict[str, Any]:
        return dict(httpx.get(f"https://127.0.0.1:{self.wattics_port}{path}",
                              verify=str(self.dir / "w" / "wattics-ca.pem"), timeout=30).json())

    def close(self) -> None:
        self.watcher.close()
        self.broker.stop()
        for p in self.procs:
            if p.stdin is not None:
                p.stdin.close()
            else:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def config(peers: Peers, monitor_port: int, per_meter: bool = False) -> str:
    """The site's configuration: 32 meters behind each Modbus TCP endpoint read over 4 connections (the footprint
    site's layout: a Modbus TCP gateway with meters behind it), or with ``per_meter`` a bus of one connection per
    meter (Modbus TCP meters, each at its own address)."""
    names = [f"m{i:04d}" for i in range(peers.meters)]
    if per_meter:
        buses = "".join(f"  - {{name: b{i}, type: tcp, host: 127.0.0.1, port: {peers.ports[i // PER_BUS]},"
                        f" timeout: 1s}}\n" for i in range(peers.meters))
    else:
        buses = "".join(f"  - {{name: b{b}, type: tcp, host: 127.0.0.1, port: {port}, max_parallel: 4,"
                        f" timeout: 1s}}\n" for b, port in enumerate(peers.ports))
    meters = "".join(f"  - {{name: {n}, type: modbus, bus: b{i if per_meter else i // PER_BUS},"
                     f" unit: {i % PER_BUS + 1}, profile: {PROFILE}, interval: 1s}}\n" for i, n in enumerate(names))
    points = "".join(f"      - {{id: e-{n}, meter: {n}, format: electrical}}\n" for n in names)
    devices = "".join(f"      - {{meter: {n}, device_id: {n}}}\n" for n in names)
    return f"""\
state_dir: {peers.dir}/state
time_sync: ignore
monitoring: {{enabled: true, port: {monitor_port}}}
buses:
{buses}meters:
{meters}sinks:
  - name: wattics
    type: wattics
    url: https://127.0.0.1:{peers.wattics_port}/measurements/v2/unifiedjson/
    username: gateway
    password: s3cret-pass
    ca_file: {peers.dir}/w/wattics-ca.pem
    data_points:
{points}  - name: voltaware
    type: voltaware
{peers.broker.sink_lines()}    client_id: capacity-gateway
    payload: {{device: "{{device_id}}", at: "{{ts_ms}}", v: "{{voltage_l1}}", e: "{{energy_import_total}}"}}
    devices:
{devices}"""


def voltaware_lag(events: list[tuple[float, dict[str, Any]]], since: float) -> dict[str, float]:
    lags = sorted(at - int(e["at"]) / 1000 for at, e in events if at >= since)
    if not lags:
        return {"n": 0}
    return {"n": len(lags), "p50": lags[len(lags) // 2], "p99": lags[min(len(lags) - 1, len(lags) * 99 // 100)],
            "max": lags[-1]}


def measure(size: int, window: float, workdir: Path, lean: bool = True, per_meter: bool = False) -> dict[str, Any]:
    peers = Peers(workdir, size, lean)
    gateway: Daemon | None = None
    try:
        port = free_port()
        cfg = workdir / "config.yaml"
        cfg.write_text(config(peers, port, per_meter))
        gateway = Daemon(cfg).start(timeout=120)
        assert gateway.proc is not None
        pid = gateway.proc.pid
        warm = wait(lambda: peers.wattics("/_stats")["packets"] >= 3 * size
                    and len(peers.watcher.events()) >= 3 * size, 180)
        if not warm:
            print(f"  {size}: the platforms received too little during the warm-up", file=sys.stderr)
        time.sleep(3.0)
        m0, t0 = at_commit(port)
        s0, w0, v0 = proc_stats(pid), peers.wattics("/_stats"), len(peers.watcher.events())
        sys0 = cpu_ticks(pid, system_only=True)
        peer_ticks0 = sum(cpu_ticks(p) for p in peers.pids) + cpu_ticks(os.getpid())
        wall0 = time.time()
        rss: list[int] = []
        while time.monotonic() - t0 < window:
            time.sleep(1.0)
            rss.append(proc_stats(pid)["rss_kb"])
        m1, t1 = at_commit(port)
        s1, w1, v1 = proc_stats(pid), peers.wattics("/_stats"), len(peers.watcher.events())
        sys1 = cpu_ticks(pid, system_only=True)
        peer_ticks1 = sum(cpu_ticks(p) for p in peers.pids) + cpu_ticks(os.getpid())
        elapsed = t1 - t0
        wl, vl = peers.wattics(f"/_lag?since={wall0}"), voltaware_lag(peers.watcher.events(), wall0)

        def delta(key: str) -> float:
            return m1.get(key, 0.0) - m0.get(key, 0.0)

        readings = delta("meter_gateway_readings_total")
        written = (s1["write_bytes"] - s0["write_bytes"]) - (s1["cancelled_write_bytes"] - s0["cancelled_write_bytes"])
        result: dict[str, Any] = {
            "meters": size,
            "window_s": round(elapsed),
            "readings_per_s": round(readings / elapsed, 1),
            "ticks_skipped": int(delta("meter_gateway_ticks_skipped_total")),
            "read_errors": int(delta("meter_gateway_read_errors_total")),
            "cpu_percent_of_one_core": round((s1["cpu_ticks"] - s0["cpu_ticks"]) / TICK / elapsed * 100, 1),
            "cpu_in_kernel_percent": round((sys1 - sys0) / max(1, s1["cpu_ticks"] - s0["cpu_ticks"]) * 100),
            "rss_steady_mb": round(statistics.median(rss) / 1024, 1),
            "rss_peak_mb": round(s1["hwm_kb"] / 1024, 1),
            "bytes_written_per_reading": round(written / readings) if readings else None,
            "wattics_per_s": round((w1["packets"] - w0["packets"]) / elapsed, 1),
            "wattics_lag_p50_s": round(wl.get("p50", float("nan")), 2),
            "wattics_lag_p99_s": round(wl.get("p99", float("nan")), 2),
            "wattics_backlog": int(m1.get("meter_gateway_queue_depth{wattics}", 0)),
            "voltaware_per_s": round((v1 - v0) / elapsed, 1),
            "voltaware_lag_p50_s": round(vl.get("p50", float("nan")), 2),
            "voltaware_lag_p99_s": round(vl.get("p99", float("nan")), 2),
            "voltaware_backlog": int(m1.get("meter_gateway_queue_depth{voltaware}", 0)),
            "peers_cpu_percent_of_one_core": round((peer_ticks1 - peer_ticks0) / TICK / elapsed * 100, 1),
        }
        rate = result["readings_per_s"]
        result["keeps_up"] = bool(
            result["ticks_skipped"] == 0 and result["read_errors"] == 0 and rate >= 0.95 * size
            # Delivering as fast as readings come: what is left to send stays within 10 s of readings (rates taken
            # over a short window are off by the commit's worth still to send when it closes).
            and max(result["wattics_backlog"], result["voltaware_backlog"]) <= MAX_LAG_S * size
            and max(result["wattics_lag_p99_s"], result["voltaware_lag_p99_s"]) < MAX_LAG_S)
        return result
    finally:
        if gateway is not None:
            gateway.stop()
        peers.close()


def calibration_ms() -> float:
    """A fixed piece of the gateway's kind of work in pure Python (dicts, JSON, struct, number formatting), best of
    five: the ratio of this figure on another machine to this one's scales the knee (one core, one thread)."""
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for i in range(5_000):
            d = {f"k{j}": (i + j) * 1.5 for j in range(30)}
            json.dumps(d)
            struct.pack("<30d", *d.values())
            f"{i / 7:.6g} {i / 3:.6g}"
        best = min(best, time.perf_counter() - t)
    return round(best * 1000, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="32 and 128 meters, 20 s each")
    ap.add_argument("--sizes", default=None, help="comma-separated meter counts (default 32,128,256,384,512,1024)")
    ap.add_argument("--seconds", type=float, default=None, help="measured window per size (default 120, quick 20)")
    ap.add_argument("--pymodbus", action="store_true",
                    help="meters on pymodbus's server (the tests' simulator) instead of the lean responder")
    ap.add_argument("--shared-endpoint", action="store_true",
                    help="32 meters behind each Modbus TCP endpoint, read over 4 connections (a Modbus TCP gateway"
                         " with meters behind it), instead of each meter a device of its own")
    args = ap.parse_args()
    sizes = [int(s) for s in (args.sizes or ("32,128" if args.quick else "32,128,256,384,512,1024")).split(",")]
    window = args.seconds or (20.0 if args.quick else 120.0)
    rows = []
    head = (f"{'meters':>6} {'read/s':>7} {'skipped':>7} {'errors':>6} {'CPU %':>6} {'RSS MB':>11} {'B/read':>6}"
            f" {'Wattics/s':>9} {'lag p50/p99 s':>13} {'Voltaware/s':>11} {'lag p50/p99 s':>13} {'peers CPU %':>11}"
            f" {'keeps up':>8}")
    calibration = calibration_ms()
    print(f"SDM630s (full map) over Modbus TCP at 1 s -> Wattics + Voltaware; {round(window)} s measured per size;"
          f" {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()};"
          f" calibration {calibration} ms")
    print(head)
    for size in sizes:
        with tempfile.TemporaryDirectory(dir=os.environ.get("CAPACITY_DIR", "/var/tmp")) as tmp:
            r = measure(size, window, Path(tmp), lean=not args.pymodbus, per_meter=not args.shared_endpoint)
        rows.append(r)
        print(f"{r['meters']:>6} {r['readings_per_s']:>7} {r['ticks_skipped']:>7} {r['read_errors']:>6}"
              f" {r['cpu_percent_of_one_core']:>6} {r['rss_steady_mb']:>5}/{r['rss_peak_mb']:<5}"
              f" {r['bytes_written_per_reading']!s:>6} {r['wattics_per_s']:>9}"
              f" {r['wattics_lag_p50_s']:>6}/{r['wattics_lag_p99_s']:<6} {r['voltaware_per_s']:>11}"
              f" {r['voltaware_lag_p50_s']:>6}/{r['voltaware_lag_p99_s']:<6} {r['peers_cpu_percent_of_one_core']:>11}"
              f" {'yes' if r['keeps_up'] else 'NO':>8}", flush=True)
    kept = [r["meters"] for r in rows if r["keeps_up"]]
    knee = max(kept) if kept else None
    print(f"largest size that keeps every tick with both platforms delivering: {knee}")
    print(json.dumps({"bench": "capacity", "window_s": round(window), "largest_keeping_up": knee, "sizes": rows,
                      "calibration_ms": calibration,
                      "meters_on": "pymodbus" if args.pymodbus else "lean",
                      "layout": "32 meters per endpoint, 4 connections" if args.shared_endpoint else "a bus per meter",
                      "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}))


if __name__ == "__main__":
    main()
