"""The queue as the daemon uses it: group commit, full disk, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from gateway.queue import DiskQueue, MeterCount, QueueStore, SinkCount
from tests.conftest import reading


async def test_appends_from_many_sources_share_commits(queue: DiskQueue) -> None:
    results = await asyncio.gather(*(queue.append([reading(f"m{i}", 1)]) for i in range(50)))
    assert all(r.accepted == 1 for r in results)
    await queue.flush()
    with contextlib.closing(sqlite3.connect(queue.path)) as db:
        rows = db.execute("SELECT count(*), sum(n) FROM readings").fetchone()
    assert rows == (50, 50), "one chunk per meter"


async def test_an_append_is_on_disk_when_it_returns(tmp_path: Path) -> None:
    q = DiskQueue(QueueStore(tmp_path / "q.db"))
    await q.start()
    await q.append([reading("m1", 1)])
    # Another connection (another process, in effect) sees it committed.
    db = sqlite3.connect(tmp_path / "q.db")
    assert db.execute("SELECT sum(n) FROM readings").fetchone()[0] == 1
    db.close()
    await q.stop()


async def test_a_full_disk_drops_appends_cleanly_and_the_queue_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    store = QueueStore(tmp_path / "q.db", page_cap=lambda: 40)
    q = DiskQueue(store, lazy_commit=0.01)
    await q.start()
    await q.configure({"a": ["m1"]})
    accepted = dropped = 0
    t = 0
    # Fill the capped file until it refuses.
    while dropped == 0 and t < 100_000:
        batch = [reading("m1", t + i) for i in range(1, 101)]
        t += 100
        res = await q.append(batch)
        accepted += res.accepted
        dropped += res.dropped
    assert dropped == 100 and accepted > 0
    # Nothing half-written: exactly the accepted readings are there, in order.
    stored = await q.read("m1", -1, 1_000_000)
    assert [r.ts_ms for r in stored] == list(range(1, accepted + 1))
    # Acknowledging still works on a full disk, and deleting delivered rows makes room again.
    q.ack("a", "m1", stored[-1].ts_ms, len(stored))
    await q.flush()
    res = await q.append([reading("m1", t + 1)])
    assert res.accepted == 1 and res.dropped == 0
    counters = await q.counters()
    assert counters.meter("m1", MeterCount.DROPPED_WRITE_FAILED) == 100
    await q.stop()
    err = capsys.readouterr()
    assert "the disk is full" in err.out + err.err
    assert "queue writes work again" in err.out + err.err


async def test_stop_commits_pending_acknowledgements(tmp_path: Path) -> None:
    q = DiskQueue(QueueStore(tmp_path / "q.db"), lazy_commit=5.0)
    await q.start()
    await q.configure({"a": ["m1"]})
    await q.append([reading("m1", 1), reading("m1", 2)])
    q.ack("a", "m1", 2, 2)  # would wait up to 5 s for company
    await q.stop()
    s = QueueStore(tmp_path / "q.db")
    s.open()
    assert s.cursor("a", "m1") == 2
    assert s.counters.sink("a", SinkCount.DELIVERED) == 2
    s.close()


async def test_delivery_goes_on_with_a_full_disk_and_makes_room_for_new_readings(tmp_path: Path) -> None:
    import random

    from gateway.forwarder import Forwarder
    from gateway.platforms.file.config import FileConfig as FileSinkConfig
    from gateway.platforms.file.sink import FileSink
    from gateway.stream import Stream
    from tests.helpers.rig import until

    store = QueueStore(tmp_path / "q.db", page_cap=lambda: 60)
    q = DiskQueue(store, lazy_commit=0.01)
    await q.start()
    await q.configure({"archive": ["m1"]})
    t = 0
    while True:  # fill the capped file, with no forwarder running
        res = await q.append([reading("m1", t + i) for i in range(1, 101)])
        t += 100
        if res.dropped:
            break
    accepted = (await q.snapshot({})).last_ts["m1"]
    cfg = FileSinkConfig.model_validate({"name": "archive", "type": "file", "path": str(tmp_path / "out.jsonl"),
                                         "backoff_base": "10ms"})
    fwd = Forwarder(FileSink(cfg, None), cfg, q, [Stream("archive", "m1")], rng=random.Random(1))  # type: ignore[arg-type]
    await fwd.start()
    await until(lambda: (tmp_path / "out.jsonl").exists() and
                len((tmp_path / "out.jsonl").read_text().splitlines()) == accepted)
    # Delivered rows were deleted: the queue takes readings again, and they are delivered too.
    for _ in range(50):
        res = await q.append([reading("m1", t + 1)])
        if res.accepted:
            break
        await asyncio.sleep(0.05)
    assert res.accepted == 1
    await until(lambda: len((tmp_path / "out.jsonl").read_text().splitlines()) == accepted + 1)
    await fwd.stop(1)
    await q.stop()


async def test_lazy_appends_share_one_commit_and_are_not_seen_before_it(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q.db")
    q = DiskQueue(store, lazy_commit=0.5)
    await q.start()
    commits = []
    real_commit = store.commit
    store.commit = lambda: (commits.append(1), real_commit())[1]  # type: ignore[method-assign]
    # A tick of 20 meters, appended lazily: one commit, confirmed only after it.
    pending = [asyncio.ensure_future(q.append([reading(f"m{i}", 1)], prompt=False)) for i in range(20)]
    await asyncio.sleep(0.2)
    assert not any(p.done() for p in pending), "confirmed before the commit"
    assert await q.read("m0", -1, 10) == [], "a forwarder reads only what is committed, and its read forces nothing"
    results = await asyncio.gather(*pending)
    assert all(r.accepted == 1 for r in results) and len(commits) == 1
    assert [r.ts_ms for r in await q.read("m0", -1, 10)] == [1]
    # A prompt append commits at once, taking whatever waits with it.
    lazy = asyncio.ensure_future(q.append([reading("m0", 2)], prompt=False))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(q.append([reading("m1", 2)]), 0.3)
    assert (await asyncio.wait_for(lazy, 0.1)).accepted == 1 and len(commits) == 2
    await q.stop()
