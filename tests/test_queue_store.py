"""The queue file itself: order, cursors, bounds, corruption."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from gateway.queue import MeterCount, QueueStore, SinkCount
from gateway.reading import Reading
from tests.conftest import reading


def txn(store: QueueStore, fn):  # type: ignore[no-untyped-def]
    store.begin()
    out = fn()
    store.commit()
    return out


def test_readings_come_back_in_timestamp_order_per_meter(store: QueueStore) -> None:
    txn(store, lambda: store.configure({"a": ["m1", "m2"]}))
    txn(store, lambda: store.append([reading("m1", 1000), reading("m2", 500), reading("m1", 2000)]))
    txn(store, lambda: store.append([reading("m1", 3000)]))
    assert [r.ts_ms for r in store.read("m1", -1, 10)] == [1000, 2000, 3000]
    assert [r.ts_ms for r in store.read("m2", -1, 10)] == [500]
    assert [r.ts_ms for r in store.read("m1", 1000, 10)] == [2000, 3000]
    assert store.read("m1", -1, 10)[0] == reading("m1", 1000)


def test_a_reading_not_newer_than_the_last_queued_is_refused_and_counted(store: QueueStore) -> None:
    txn(store, lambda: store.configure({"a": ["m1"]}))
    txn(store, lambda: store.append([reading("m1", 2000)]))
    out = txn(store, lambda: store.append([reading("m1", 2000), reading("m1", 1500), reading("m1", 2500)]))
    assert out.accepted == 1
    assert [r.ts_ms for r, _ in out.refused] == [2000, 1500]
    assert store.counters.meter("m1", MeterCount.REFUSED) == 2
    assert [r.ts_ms for r in store.read("m1", -1, 10)] == [2000, 2500]


def test_refusal_survives_delivery_and_reopening(tmp_path: Path) -> None:
    s = QueueStore(tmp_path / "q.db")
    s.open()
    txn(s, lambda: s.configure({"a": ["m1"]}))
    txn(s, lambda: s.append([reading("m1", 5000)]))
    txn(s, lambda: s.ack("a", "m1", 5000))
    assert s.read("m1", -1, 10) == []  # delivered everywhere, so deleted
    s.close()
    s2 = QueueStore(tmp_path / "q.db")
    s2.open()
    out = txn(s2, lambda: s2.append([reading("m1", 4000)]))
    assert out.accepted == 0 and len(out.refused) == 1
    s2.close()


def test_each_sink_has_its_own_cursor_and_rows_go_when_all_are_past(store: QueueStore) -> None:
    txn(store, lambda: store.configure({"a": ["m1"], "b": ["m1"]}))
    txn(store, lambda: store.append([reading("m1", t) for t in (1, 2)]))
    txn(store, lambda: store.append([reading("m1", t) for t in (3, 4)]))
    txn(store, lambda: store.ack("a", "m1", 4))
    assert store.cursor("a", "m1") == 4 and store.cursor("b", "m1") == -1
    assert len(store.read("m1", -1, 10)) == 4  # b still needs them
    txn(store, lambda: store.ack("b", "m1", 2))
    assert [r.ts_ms for r in store.read("m1", -1, 10)] == [3, 4]
    txn(store, lambda: store.ack("b", "m1", 3))
    assert [r.ts_ms for r in store.read("m1", -1, 10)] == [4], "within a chunk too"
    assert store.backlog("a", [("a", "m1")]).depth == 0
    assert store.backlog("b", [("b", "m1")]).depth == 1, "what b still needs, not the chunk's size"


def test_a_sink_only_holds_rows_of_the_meters_it_wants(store: QueueStore) -> None:
    txn(store, lambda: store.configure({"a": ["m1"], "b": ["m2"]}))
    txn(store, lambda: store.append([reading("m1", 1), reading("m2", 1)]))
    txn(store, lambda: store.ack("a", "m1", 1))
    assert store.read("m1", -1, 10) == []
    assert len(store.read("m2", -1, 10)) == 1


def test_a_new_sink_starts_with_readings_queued_after_it_was_added(store: QueueStore) -> None:
    txn(store, lambda: store.configure({"a": ["m1"]}))
    txn(store, lambda: store.append([reading("m1", 1), reading("m1", 2)]))
    txn(store, lambda: store.configure({"a": ["m1"], "new": ["m1"]}))
    txn(store, lambda: store.append([reading("m1", 3)]))
    assert store.cursor("new", "m1") == 2
    assert store.backlog("new", [("new", "m1")]).depth == 1
    assert store.backlog("a", [("a", "m1")]).depth == 3


def test_a_removed_sink_no_longer_holds_rows_and_is_reported(store: QueueStore) -> None:
    txn(store, lambda: store.configure({"a": ["m1"], "b": ["m1"]}))
    txn(store, lambda: store.append([reading("m1", 1)]))
    txn(store, lambda: store.ack("a", "m1", 1))
    inactive = txn(store, lambda: store.configure({"a": ["m1"]}))
    assert inactive == ["b"]
    assert store.read("m1", -1, 10) == []


def test_max_age_drops_the_oldest_and_counts_per_sink(tmp_path: Path) -> None:
    now = [10_000.0]
    s = QueueStore(tmp_path / "q.db", max_age_s=100, clock=lambda: now[0])
    s.open()
    txn(s, lambda: s.configure({"a": ["m1"], "b": ["m1"]}))
    # Readings at t=9850..9990 s; max_age 100 s at now=10000 drops those before 9900.
    txn(s, lambda: s.append([reading("m1", t * 1000) for t in range(9850, 10000, 10)]))
    txn(s, lambda: s.ack("a", "m1", 9870 * 1000))  # a delivered 9850..9870 already
    lost = txn(s, s.enforce_bounds)
    assert lost == {"a": 2, "b": 5}  # a loses 9880, 9890; b loses 9850..9890
    assert s.counters.sink("a", SinkCount.EVICTED) == 2 and s.counters.sink("b", SinkCount.EVICTED_MAX_AGE) == 5
    assert s.read("m1", -1, 100)[0].ts_ms == 9900 * 1000
    s.close()


def test_max_size_drops_the_oldest_readings_down_below_the_bound(tmp_path: Path) -> None:
    base = int(time.time() * 1000) - 20_000_000
    s = QueueStore(tmp_path / "q.db", max_size=200_000)
    s.open()
    txn(s, lambda: s.configure({"a": ["m1", "m2"]}))
    for batch in range(20):
        txn(s, lambda b=batch: s.append(
            [reading(m, base + (b * 500 + i) * 1000) for i in range(500) for m in ("m1", "m2")]
        ))
    before = s.used_bytes()
    assert before > 200_000
    lost = txn(s, s.enforce_bounds)
    assert s.used_bytes() <= 200_000
    remaining = len(s.read("m1", -1, 100_000)) + len(s.read("m2", -1, 100_000))
    assert lost["a"] == 20_000 - remaining
    # What is left is the newest, and a good part of it.
    assert remaining > 5_000
    assert s.read("m1", -1, 100_000)[-1].ts_ms == base + (19 * 500 + 499) * 1000
    s.close()


def test_a_corrupt_file_is_moved_aside_and_a_fresh_queue_starts(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    path.write_bytes(b"this is not a database" * 500)
    s = QueueStore(path)
    s.open()
    assert s.moved_aside is not None and s.moved_aside.name.startswith("queue.db.corrupt-")
    assert s.moved_aside.read_bytes().startswith(b"this is not a database")
    txn(s, lambda: s.configure({"a": ["m1"]}))
    txn(s, lambda: s.append([reading("m1", 1)]))
    assert len(s.read("m1", -1, 10)) == 1
    s.close()


def test_a_damaged_page_is_detected_at_open(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    s = QueueStore(path)
    s.open()
    txn(s, lambda: s.configure({"a": ["m1"]}))
    txn(s, lambda: s.append([reading("m1", t) for t in range(1, 3000)]))
    s.close()
    data = bytearray(path.read_bytes())
    for i in range(4096 * 3, min(len(data), 4096 * 6)):
        data[i] = 0xA5
    path.write_bytes(bytes(data))
    s2 = QueueStore(path)
    s2.open()
    assert s2.moved_aside is not None
    s2.close()


def test_dead_letters_are_kept_listed_marked_and_purged(store: QueueStore) -> None:
    txn(store, lambda: store.configure({"a": ["m1"]}))
    r = Reading("m1", 42, {})
    txn(store, lambda: store.dead_letter("a", r, "HTTP 400: bad packet"))
    (dl,) = store.dead_letters("a")
    assert dl.reading == r and dl.reason == "HTTP 400: bad packet" and dl.state == "dead"
    assert txn(store, lambda: store.mark_dead_letters(None, "retry", "a")) == 1
    assert store.dead_letters("a", state="retry")[0].id == dl.id
    txn(store, lambda: store.resolve_dead_letter(dl.id, False, "still bad"))
    assert store.dead_letters("a")[0].attempts == 2
    assert txn(store, lambda: store.purge_dead_letters([dl.id])) == 1
    assert store.dead_letters() == []


def test_the_file_is_in_wal_mode_with_the_asked_durability(tmp_path: Path) -> None:
    for durability, level in (("full", 2), ("normal", 1)):
        s = QueueStore(tmp_path / f"{durability}.db", durability=durability)
        s.open()
        db = s.conn
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == level
        s.close()


def test_sqlite_full_is_raised_by_a_capped_file(tmp_path: Path) -> None:
    # The mechanism the disk-full tests rely on: a page cap gives a genuine SQLITE_FULL.
    s = QueueStore(tmp_path / "q.db", page_cap=lambda: 20)
    s.open()
    txn(s, lambda: s.configure({"a": ["m1"]}))
    try:
        txn(s, lambda: s.append([reading("m1", t) for t in range(1, 5000)]))
    except sqlite3.OperationalError as e:
        assert e.sqlite_errorcode & 0xFF == sqlite3.SQLITE_FULL
    else:
        raise AssertionError("expected SQLITE_FULL")
    finally:
        s.rollback()
        s.close()


# ---------------------------------------------------------------- schema 2: chunks, compact values, upgrade


def test_values_keep_their_digits_in_four_bytes_and_anything_else_exactly() -> None:
    from gateway.quantities import ALL
    from gateway.queue.codec import decode_values, encode_values

    meter = {q: 230.1 + i for i, q in enumerate(ALL[:35])}  # what a float32 register gives, as the meter's digits
    assert decode_values(encode_values(meter)) == meter
    assert len(encode_values(meter)) == 16 + 35 * 4
    odd = {**meter, ALL[3]: 997508060.0, ALL[4]: 0.1 + 0.2, ALL[5]: 1e300, ALL[6]: float("inf")}
    assert decode_values(encode_values(odd)) == odd, "what a float32 cannot hold exactly stays a float64"
    assert len(encode_values(odd)) == 16 + 32 * 4 + 3 * 8
    # The checks are remembered per value: 0.0 and -0.0 (equal, not the same) are told apart either way round.
    import math

    for first, second in ((0.0, -0.0), (-0.0, 0.0)):
        for z in (first, second):
            back = decode_values(encode_values({ALL[0]: z, ALL[1]: float("nan")}))
            assert math.copysign(1.0, back[ALL[0]]) == math.copysign(1.0, z) and math.isnan(back[ALL[1]])


def test_an_energy_total_that_does_not_fit_a_float32_does_not_split_a_chunk(store: QueueStore) -> None:
    from gateway.quantities import Quantity as Q

    txn(store, lambda: store.configure({"a": ["m"]}))
    # A total that fits a float32 exactly, then one that does not, alternately: one chunk all the same.
    got = [Reading("m", 1000 * i, {Q.VOLTAGE_L1: 230.1, Q.ENERGY_IMPORT_TOTAL: 997508060.0 + 4 * (i % 2)})
           for i in range(1, 6)]
    txn(store, lambda: store.append(got))
    assert store.conn.execute("SELECT count(*), sum(n) FROM readings").fetchone() == (1, 5)
    assert store.read("m", -1, 10) == got


def test_a_delivered_chunk_is_rewritten_in_place_by_the_next(store: QueueStore) -> None:
    txn(store, lambda: store.configure({"a": ["m1", "m2"]}))
    for t in range(1, 8):
        txn(store, lambda t=t: (store.append([reading("m1", t), reading("m2", t)]),
                                store.ack("a", "m1", t - 1), store.ack("a", "m2", t - 1)))
    rows = store.conn.execute("SELECT meter_id, count(*) FROM readings GROUP BY meter_id").fetchall()
    assert all(n <= 3 for _, n in rows), "the newest chunk and two delivered ones kept to be written into"
    seqs = {s for (s,) in store.conn.execute("SELECT seq FROM readings")}
    assert max(seqs) <= 6, "rows were reused, not appended"
    assert [r.ts_ms for r in store.read("m1", -1, 10)] == [7], "delivered chunks are not read"
    assert store.backlog("a", [("a", "m1"), ("a", "m2")]).depth == 2


def test_a_schema_1_file_is_upgraded_with_its_readings_and_cursors(tmp_path: Path) -> None:
    import struct

    from gateway.queue.schema import SCHEMA_VERSION

    path = tmp_path / "queue.db"
    db = sqlite3.connect(path)
    db.executescript("""
        PRAGMA journal_mode=WAL;
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        CREATE TABLE meters (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, last_ts INTEGER NOT NULL DEFAULT -1);
        CREATE TABLE readings (meter_id INTEGER NOT NULL, ts_ms INTEGER NOT NULL, flags INTEGER NOT NULL,
            data BLOB NOT NULL, PRIMARY KEY (meter_id, ts_ms)) WITHOUT ROWID;
        CREATE TABLE sinks (name TEXT PRIMARY KEY, added_ms INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE cursors (sink TEXT NOT NULL, meter_id INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
            updated_ms INTEGER NOT NULL, PRIMARY KEY (sink, meter_id)) WITHOUT ROWID;
        INSERT INTO meta VALUES ('schema', '1');
        INSERT INTO meters VALUES (1, 'm1', 50000);
        INSERT INTO sinks VALUES ('a', 0);
        INSERT INTO cursors VALUES ('a', 1, 2000, 0);
    """)
    # Schema 1 values: the mask, then float64s (here power_active_total alone, bit of its code).
    from gateway.quantities import CODE, Quantity

    blob = struct.pack("<Q", 1 << CODE[Quantity.POWER_ACTIVE_TOTAL])
    db.executemany("INSERT INTO readings VALUES (1, ?, 1, ?)",
                   [(t * 1000, blob + struct.pack("<d", t + 0.1)) for t in range(1, 51)])
    db.commit()
    db.close()
    s = QueueStore(path)
    s.open()
    txn(s, lambda: s.configure({"a": ["m1"]}))
    got = s.read("m1", s.cursor("a", "m1"), 100)
    assert [r.ts_ms for r in got] == [t * 1000 for t in range(3, 51)], "after the cursor, in order, none lost"
    assert got[0].values == {Quantity.POWER_ACTIVE_TOTAL: 3.1}
    assert s.last_ts[s.meter_ids["m1"]] == 50000
    assert s.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == str(SCHEMA_VERSION)
    assert [c[1] for c in s.conn.execute("PRAGMA table_info(cursors)")] == ["sink", "meter_id", "ts_ms"]
    txn(s, lambda: s.append([reading("m1", 51000)]))
    assert s.read("m1", 50000, 10)[0].ts_ms == 51000
    s.close()
