"""Queue throughput: durable append + read + acknowledge, in readings per second, beside two baselines.

    python tests/bench/queue_bench.py [--quick] [--readings N] [--meters M]

- gateway:        the gateway's DiskQueue, M sources appending 100 readings per call concurrently, one consumer per
                  meter reading batches of 100 and acknowledging them (as forwarders do);
- gateway_single: the same with one reading per append call, as a meter polled live does: the cost per call
                  (a hand-off to the writer thread and back) rather than the cost of the disk;
- sqlite3 floor:  plain ``sqlite3``, ``executemany`` of 100 rows per transaction, then select + delete per 100;
- persist-queue:  ``SQLiteAckQueue`` (put, get, ack per reading), what a Python developer would otherwise pick.

All at equal durability (WAL, ``synchronous`` FULL, then NORMAL), on the same disk, with the same three-phase
reading (30 values). Bytes written to storage per reading come from /proc/self/io (``write_bytes`` less
``cancelled_write_bytes``). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sqlite3
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.logs import configure
from gateway.platforms.simulated.source import three_phase
from gateway.quantities import Quantity
from gateway.queue import DiskQueue, QueueStore
from gateway.queue.codec import encode_values, shortest_f32
from gateway.reading import Reading

VALUES = three_phase(1_800_000_000.0)
_F32 = struct.Struct("<f")


def meter_values(rng: random.Random) -> dict[Quantity, float]:
    """VALUES as a meter sends them from one reading to the next: each within 1 % of it, to 2 decimals, through
    a float32 register (read back as its shortest decimal, as the Modbus decoder does). Values that vary keep the
    per-value work honest: constant ones would be remembered."""
    return {q: shortest_f32(_F32.unpack(_F32.pack(round(v * rng.uniform(0.99, 1.01), 2)))[0])
            for q, v in VALUES.items()}
READ_BATCH = 100


def write_bytes() -> int:
    """Bytes this process sent toward the storage: pages dirtied (``write_bytes``) less those dropped before they
    were written back (``cancelled_write_bytes``: the queue's journal segments, deleted once committed)."""
    try:
        with open("/proc/self/io") as f:
            io = dict(line.split(": ") for line in f.read().splitlines())
        return int(io["write_bytes"]) - int(io["cancelled_write_bytes"])
    except (OSError, KeyError, ValueError):
        return 0


def bench_gateway(d: Path, durability: str, n: int, meters: int, batch: int) -> tuple[float, int]:
    async def run() -> None:
        q = DiskQueue(QueueStore(d / "gw.db", durability=durability, max_size=10**10))
        await q.start()
        names = [f"m{i}" for i in range(meters)]
        await q.configure({"sink": names})
        per_meter = n // meters
        base = 1_800_000_000_000
        rng = random.Random(1)

        # Readings are made before the clock starts: making them is the sources' work, not the queue's.
        batches = {
            m: [
                [Reading(m, base + i * 1000, meter_values(rng)) for i in range(start, min(start + batch, per_meter))]
                for start in range(0, per_meter, batch)
            ]
            for m in names
        }
        t0.append(time.perf_counter())
        w0.append(write_bytes())

        async def produce(m: str) -> None:
            for readings in batches[m]:
                res = await q.append(readings)
                assert res.accepted == len(readings)

        async def consume(m: str) -> None:
            pos, got = -1, 0
            ev = q.event("sink", m)
            while got < per_meter:
                ev.clear()
                batch = await q.read(m, pos, READ_BATCH)
                if not batch:
                    await ev.wait()
                    continue
                pos = batch[-1].ts_ms
                got += len(batch)
                q.ack("sink", m, pos, len(batch))

        await asyncio.gather(*(produce(m) for m in names), *(consume(m) for m in names))
        await q.stop()

    w0: list[int] = []
    t0: list[float] = []
    asyncio.run(run())
    return time.perf_counter() - t0[0], write_bytes() - w0[0]


def bench_sqlite_floor(d: Path, durability: str, n: int) -> tuple[float, int]:
    w0, t0 = write_bytes(), time.perf_counter()
    db = sqlite3.connect(d / "plain.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={durability.upper()}")
    db.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, meter TEXT, ts INTEGER, data BLOB)")
    blob = encode_values(VALUES)
    for start in range(0, n, 100):
        db.execute("BEGIN")
        db.executemany("INSERT INTO q (meter, ts, data) VALUES (?,?,?)",
                       [("m", start + i, blob) for i in range(100)])
        db.execute("COMMIT")
    while True:
        rows = db.execute("SELECT id, meter, ts, data FROM q ORDER BY id LIMIT 100").fetchall()
        if not rows:
            break
        db.execute("BEGIN")
        db.execute("DELETE FROM q WHERE id<=?", (rows[-1][0],))
        db.execute("COMMIT")
    db.close()
    return time.perf_counter() - t0, write_bytes() - w0


def bench_persist_queue(d: Path, durability: str, n: int) -> tuple[float, int]:
    from persistqueue import SQLiteAckQueue

    w0, t0 = write_bytes(), time.perf_counter()
    q = SQLiteAckQueue(str(d / "pq"), auto_commit=True, multithreading=False)
    q._conn.execute(f"PRAGMA synchronous={durability.upper()}")
    for i in range(n):
        q.put({"meter": "m", "ts": i, "values": {k.value: v for k, v in VALUES.items()}})
    for _ in range(n):
        item = q.get(block=False)
        q.ack(item)
    q.clear_acked_data(keep_latest=0, clear_ack_failed=True)
    return time.perf_counter() - t0, write_bytes() - w0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run (under 30 s)")
    ap.add_argument("--readings", type=int)
    ap.add_argument("--meters", type=int, default=32)
    args = ap.parse_args()
    n = args.readings or (6_400 if args.quick else 64_000)
    n -= n % (args.meters * 100) or 0
    n_single = max(args.meters * 10, n // 10)
    n_pq = max(200, n // 20)  # persist-queue commits per reading: a smaller run gives the same rate
    configure("warning", "json")
    results: dict[str, object] = {"readings": n, "meters": args.meters, "single_readings": n_single,
                                  "persist_queue_readings": n_pq}
    print(f"{'durability':<10} {'queue':<16} {'readings/s':>12} {'bytes written/reading':>22}")
    for durability in ("full", "normal"):
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
            d = Path(tmp)
            rows = {
                "gateway": (n, *bench_gateway(d, durability, n, args.meters, 100)),
                "gateway_single": (n_single, *bench_gateway(d / "single", durability, n_single, args.meters, 1)),
                "sqlite3_floor": (n, *bench_sqlite_floor(d, durability, n)),
                "persist_queue": (n_pq, *bench_persist_queue(d, durability, n_pq)),
            }
        for name, (count, secs, written) in rows.items():
            rate = count / secs
            results[f"{name}_{durability}_per_s"] = round(rate)
            results[f"{name}_{durability}_bytes_per_reading"] = round(written / count)
            print(f"{durability:<10} {name:<16} {rate:>12,.0f} {written / count:>22,.0f}")
        g = results[f"gateway_{durability}_per_s"]
        assert isinstance(g, int)
        results[f"vs_floor_{durability}"] = round(g / int(str(results[f"sqlite3_floor_{durability}_per_s"])), 2)
        results[f"vs_persist_queue_{durability}"] = round(g / int(str(results[f"persist_queue_{durability}_per_s"])), 1)
    results["machine"] = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    print(json.dumps(results))


if __name__ == "__main__":
    main()
