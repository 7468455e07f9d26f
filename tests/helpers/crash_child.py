"""A process that appends readings and forwards them to a file sink, to be killed with SIGKILL by the test.

    python -m tests.helpers.crash_child DIR run     append and forward until killed
    python -m tests.helpers.crash_child DIR drain   forward what is left, then exit 0

After each append returns, the confirmed readings are written to DIR/confirmed.log: that is the promise the
queue makes (confirmed = on disk), which the test then checks against what reached DIR/out.jsonl.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from pathlib import Path

from gateway.config.models import GatewayConfig
from gateway.forwarder import Forwarder
from gateway.logs import configure
from gateway.platforms.file.config import FileConfig as FileSinkConfig
from gateway.platforms.file.sink import FileSink
from gateway.quantities import Quantity
from gateway.queue import DiskQueue, QueueStore
from gateway.reading import Reading

METERS = ["m1", "m2", "m3"]


async def main(d: Path, mode: str) -> int:
    configure("warning", "json")
    q = DiskQueue(QueueStore(d / "queue.db"), lazy_commit=0.02)
    await q.start()
    await q.configure({"out": METERS})
    raw = {"name": "out", "type": "file", "path": str(d / "out.jsonl"), "max_batch": 7, "backoff_base": "10ms"}
    sink_cfg = FileSinkConfig.model_validate(raw)
    gw = GatewayConfig.model_validate({"meters": [{"name": m, "type": "simulated"} for m in METERS], "sinks": [raw]})
    fwd = Forwarder(FileSink(sink_cfg, gw), sink_cfg, q, gw.sink_streams()["out"])
    await fwd.start()
    print("ready", flush=True)
    if mode == "drain":
        while True:
            depth = (await q.backlog("out", [("out", m) for m in METERS])).depth
            if depth == 0:
                break
            await asyncio.sleep(0.05)
        await fwd.stop(2)
        await q.stop()
        return 0
    queued = (await q.snapshot({})).last_ts
    last = {m: queued.get(m, -1) for m in METERS}
    fd = os.open(d / "confirmed.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    rng = random.Random()

    async def produce(meter: str) -> None:
        ts = max(last[meter], int(time.time() * 1000))
        while True:
            batch = []
            for _ in range(rng.randint(1, 20)):
                ts += rng.randint(1, 3)
                batch.append(Reading(meter, ts, {Quantity.ENERGY_IMPORT_TOTAL: float(ts)}))
            result = await q.append(batch)
            assert not result.refused and not result.dropped, result
            os.write(fd, "".join(f"{meter} {r.ts_ms}\n" for r in batch).encode())
            await asyncio.sleep(rng.random() * 0.01)

    await asyncio.gather(*(produce(m) for m in METERS))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1]), sys.argv[2])))
