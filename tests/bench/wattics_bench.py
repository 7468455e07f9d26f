"""Wattics backlog drain: 20 data points x N readings to the emulator over loopback HTTPS.

    python tests/bench/wattics_bench.py [--quick] [--readings N]

Runs twice: with no added latency, and with 20 ms added to every answer. Per data point, packets go one after the
other (the next only after the previous got its 200), so with 20 ms answers 20 data points allow at most
20 / 0.020 s = 1,000 packets/s: the 20 ms run reports the ratio to that limit. The emulator runs in its own
process, as a real platform would. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.config import load_config_text  # noqa: E402
from gateway.forwarder import Forwarder  # noqa: E402
from gateway.logs import configure  # noqa: E402
from gateway.platforms.simulated.source import three_phase  # noqa: E402
from gateway.platforms.wattics.sink import WatticsSink  # noqa: E402
from gateway.queue import DiskQueue, QueueStore  # noqa: E402
from gateway.reading import Reading  # noqa: E402

POINTS = 20


def config_text(url: str, ca: Path) -> str:
    meters = "".join(f"  - {{name: m{i}, type: simulated, interval: 1s}}\n" for i in range(POINTS))
    points = "".join(f"      - {{id: dp-{i}, meter: m{i}}}\n" for i in range(POINTS))
    return (f"meters:\n{meters}sinks:\n  - name: wattics\n    type: wattics\n    url: {url}\n"
            f"    username: gateway\n    password: s3cret-pass\n    ca_file: {ca}\n    data_points:\n{points}")


async def drain(d: Path, url: str, ca: Path, per_point: int) -> float:
    config = load_config_text(config_text(url, ca), "bench.yaml")
    sink_cfg = config.sinks[0]
    streams = config.sink_streams()["wattics"]
    q = DiskQueue(QueueStore(d / "queue.db"))
    await q.start()
    await q.configure({s.cursor: [s.meter] for s in streams})
    start = int(time.time() * 1000) - per_point * 1000
    values = three_phase(start / 1000)
    for i in range(POINTS):
        await q.append([Reading(f"m{i}", start + k * 1000, values) for k in range(per_point)])
    stats_url = url.split("/measurements")[0] + "/_stats"
    ctx = ssl.create_default_context(cafile=str(ca))
    fwd = Forwarder(WatticsSink(sink_cfg, config), sink_cfg, q, streams)
    async with httpx.AsyncClient(verify=ctx) as probe:
        t0 = time.time()
        await fwd.start()
        total = POINTS * per_point
        while (await probe.get(stats_url)).json()["packets"] < total:
            await asyncio.sleep(0.25)
        stats = (await probe.get(stats_url)).json()
        # The end is when the emulator accepted the last packet, not when the probe noticed it.
        elapsed = stats["last_accept_at"] - t0
    await fwd.stop(2)
    await q.stop()
    assert stats["out_of_order"] == 0 and stats["duplicates"] == 0, stats
    return elapsed


def run(latency: float, per_point: int) -> tuple[float, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        emu = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.wattics_emulator", str(d / "certs"), "--latency", str(latency)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        try:
            assert emu.stdout is not None
            port = int(emu.stdout.readline())
            url = f"https://127.0.0.1:{port}/measurements/v2/unifiedjson/"
            elapsed = asyncio.run(drain(d, url, d / "certs" / "wattics-ca.pem", per_point))
        finally:
            emu.terminate()
            emu.wait(10)
    return POINTS * per_point / elapsed, {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100 readings per data point (under 30 s)")
    ap.add_argument("--readings", type=int, help="readings per data point (default 1000)")
    args = ap.parse_args()
    per_point = args.readings or (100 if args.quick else 1000)
    configure("warning", "json")
    results: dict[str, object] = {"data_points": POINTS, "readings_per_point": per_point}
    print(f"{'added latency':<14} {'packets':>8} {'packets/s':>10} {'of the ordering limit':>22}")
    for latency in (0.0, 0.020):
        rate, _ = run(latency, per_point)
        key = f"latency_{round(latency * 1000)}ms"
        results[f"{key}_packets_per_s"] = round(rate)
        limit = POINTS / latency if latency else None
        share = f"{rate / limit:.2f}" if limit else "-"
        if limit:
            results[f"{key}_ratio_to_limit"] = round(rate / limit, 3)
        print(f"{round(latency * 1000):>11} ms {POINTS * per_point:>8} {rate:>10,.0f} {share:>22}")
    results["machine"] = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    print(json.dumps(results))


if __name__ == "__main__":
    main()
