"""The queue's journal: a reading handed to the queue survives a SIGKILL, although its commit waits for
``commit_interval``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import structlog

from gateway.quantities import Quantity as Q
from gateway.queue import DiskQueue, MeterCount, QueueCount, QueueStore
from gateway.queue.counters import queue_key
from gateway.queue.journal import Journal, encode, header
from gateway.reading import Reading

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent("""
    import asyncio, sys, time
    from pathlib import Path
    from gateway.queue import DiskQueue, QueueStore
    from gateway.reading import Reading
    from gateway.quantities import Quantity as Q

    async def main() -> None:
        q = DiskQueue(QueueStore(Path(sys.argv[1])), lazy_commit=60.0)  # nothing is committed before the kill
        await q.start()
        await q.configure({"s": ["m", "h"]})  # as the daemon does at its start: a stream wants both meters
        pending = set()
        base = int(sys.argv[2])
        for i in range(1, 201):
            r = Reading("m", base + i * 1000, {Q.ENERGY_IMPORT_TOTAL: 1000.0 + i / 8, Q.VOLTAGE_L1: 230.1})
            held = Reading("h", base + i * 1000, {Q.VALUE: float(i)}, clock_synced=False, mono_ms=5_000 + i)
            task = asyncio.ensure_future(q.append([r, held], prompt=False))
            pending.add(task)
            await asyncio.sleep(0)  # the append has started: the readings are in the journal
            print(i, flush=True)
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
""")


def readings_of(path: Path, meter: str) -> list[Reading]:
    store = QueueStore(path)
    store.open(repair=False)
    try:
        return store.read(meter, -1, 10_000)
    finally:
        store.close()


def test_a_sigkill_before_the_commit_loses_no_reading_handed_to_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    base = int(time.time()) * 1000 - 3_600_000
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(base)], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout is not None
    handed = []
    for line in child.stdout:
        if line.strip() == "ready":
            break
        handed.append(int(line))
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert handed == list(range(1, 201))
    assert readings_of(path, "m") == [], "nothing was committed: the journal alone holds the readings"

    async def reopen() -> None:
        store = QueueStore(path)
        q = DiskQueue(store, lazy_commit=0.01)
        with structlog.testing.capture_logs() as logs:
            await q.start()
        await q.configure({"s": ["m", "h"]})
        got = await q.read("m", -1, 1000)
        assert [r.ts_ms for r in got] == [base + i * 1000 for i in handed]
        assert [r.values for r in got] == [{Q.ENERGY_IMPORT_TOTAL: 1000.0 + i / 8, Q.VOLTAGE_L1: 230.1} for i in handed]
        snapshot = await q.snapshot({})
        assert snapshot.held == 200, "readings taken before the clock was trusted are held again, dated by their boot"
        counters = await q.counters()
        assert counters.values[queue_key(QueueCount.REPLAYED)] == 400
        assert counters.meter("m", MeterCount.REFUSED) == 0
        await q.stop()
        assert list(tmp_path.glob("queue.db.journal.*")) == [], "a clean stop leaves no journal"
        assert not any("write-ahead log" in e.get("event", "") for e in logs), \
            "reading the file after a crash is no loss"

        # Replayed once only: a second start finds nothing to put back.
        q = DiskQueue(QueueStore(path), lazy_commit=0.01)
        await q.start()
        assert len(await q.read("m", -1, 1000)) == 200 and (await q.snapshot({})).held == 200
        await q.stop()

    asyncio.run(reopen())


async def test_a_replay_skips_what_is_already_queued_and_a_damaged_tail(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    store = QueueStore(path, boot="boot-1")
    q = DiskQueue(store, lazy_commit=0.01)
    await q.start()
    b = int(time.time() * 1000)
    await q.append([Reading("m", b + t, {Q.VALUE: t}) for t in (1, 2, 3)])
    await q.append([Reading("h", b + 5, {Q.VALUE: 5.0}, clock_synced=False, mono_ms=50)])
    await q.stop()
    # What a crash could leave: readings already committed, then new ones, then a record torn by a power cut.
    data = header("boot-1") + encode([Reading("m", b + t, {Q.VALUE: t}) for t in (2, 3, 4, 5)])
    data += encode([Reading("h", b + 5, {Q.VALUE: 5.0}, clock_synced=False, mono_ms=50)])
    data += encode([Reading("m", b + 6, {Q.VALUE: 6.0})])[:-3] + b"\0" * 40
    (tmp_path / "queue.db.journal.7").write_bytes(data)

    q = DiskQueue(QueueStore(path, boot="boot-1"), lazy_commit=0.01)
    await q.start()
    await q.configure({"s": ["m", "h"]})
    assert [r.ts_ms - b for r in await q.read("m", -1, 100)] == [1, 2, 3, 4, 5]
    assert (await q.snapshot({})).held == 1, "a held reading already kept is not held twice"
    counters = await q.counters()
    assert counters.values[queue_key(QueueCount.REPLAYED)] == 2
    assert counters.meter("m", MeterCount.REFUSED) == 0, "already queued is no refusal"
    await q.stop()


async def test_segments_go_once_their_readings_are_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.queue.journal.ROTATE_AFTER", 0.05)
    path = tmp_path / "queue.db"
    q = DiskQueue(QueueStore(path), lazy_commit=0.01)
    await q.start()
    base = int(time.time() * 1000)
    for t in range(1, 50):
        await q.append([Reading("m", base + t, {Q.VALUE: t})], prompt=t % 2 == 0)
        await asyncio.sleep(0.01)
    assert len(list(tmp_path.glob("queue.db.journal.*"))) <= 2, "segments go as their readings are committed"
    await asyncio.sleep(0.1)
    await q.flush()  # a transaction after the last append rotates the segment it went to, which then goes
    left = sorted(tmp_path.glob("queue.db.journal.*"))
    assert len(left) == 1 and Journal.read(left)[0][1] == [], f"only an empty segment being written stays: {left}"
    await q.stop()
    assert list(tmp_path.glob("queue.db.journal.*")) == []


async def test_a_full_disk_at_start_puts_the_journal_back_once_space_returns(tmp_path: Path) -> None:
    """The soak found it: a crash, then a start on a full disk. The gateway starts all the same, new readings are
    dropped and counted while the disk is full, and the readings the crash left go back in first when space
    returns, so they stay in order."""
    path = tmp_path / "queue.db"
    store = QueueStore(path, boot="boot-1")
    q = DiskQueue(store, lazy_commit=0.01)
    await q.start()
    await q.configure({"s": ["m"]})
    b = int(time.time() * 1000)
    await q.append([Reading("m", b + 1, {Q.VALUE: 1.0})])
    await q.stop()
    (tmp_path / "queue.db.journal.3").write_bytes(
        header("boot-1") + encode([Reading("m", b + t, {Q.VALUE: float(t)}) for t in range(2, 200)]))

    pages = QueueStore(path)
    pages.open(repair=False)
    full = [int(pages.conn.execute("PRAGMA page_count").fetchone()[0])]  # the file may not grow by one page
    pages.close()
    with structlog.testing.capture_logs() as logs:
        q = DiskQueue(QueueStore(path, boot="boot-1", page_cap=lambda: full[0]), lazy_commit=0.01)
        await q.start()
    assert any("disk is full" in e["event"] for e in logs), logs
    assert (tmp_path / "queue.db.journal.3").exists(), "kept until it can go back in"
    dropped = await q.append([Reading("m", b + 500, {Q.VALUE: 500.0})])
    assert dropped.dropped == 1
    full[0] = 0  # space returns
    later = await q.append([Reading("m", b + 600, {Q.VALUE: 600.0})])
    assert later.accepted == 1
    assert [r.ts_ms - b for r in await q.read("m", -1, 1000)] == [*range(1, 200), 600]
    assert not (tmp_path / "queue.db.journal.3").exists()
    await q.stop()
