"""Period readings (a bill, an interval of a utility's data): a start and an end, kept as such by every layer of the
queue (the values' encoding, chunks, the journal a crash leaves, dead letters) and written out by the local sinks.
Late period readings (a corrected bill, queued after the meter's newer readings) keep their own end the same way."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gateway.platforms.file.config import FileConfig
from gateway.platforms.file.sink import FileSink
from gateway.quantities import Quantity as Q
from gateway.queue import DiskQueue, QueueStore
from gateway.queue.codec import decode_period, decode_values, encode_reading, encode_values, split
from gateway.queue.journal import encode, header
from gateway.reading import Reading
from gateway.stream import Stream

DAY = 86_400_000


def period(meter: str, start: int, end: int, kwh: float, cost: float = 0.0) -> Reading:
    return Reading(meter, end, {Q.INTERVAL_ENERGY: kwh * 1000, Q.COST: cost}, start_ms=start)


def test_a_period_must_end_after_it_starts() -> None:
    with pytest.raises(ValueError, match="end after it starts"):
        Reading("m", 1000, {Q.VALUE: 1.0}, start_ms=1000)


def test_the_start_survives_encoding_and_never_becomes_a_value() -> None:
    r = period("m", 1_700_000_000_123, 1_702_592_000_000, 613.25, 84.17)
    blob = encode_reading(r)
    assert decode_period(blob) == (dict(r.values), 1_700_000_000_123, None)
    assert decode_values(blob) == dict(r.values)
    assert decode_period(encode_values(r.values)) == (dict(r.values), None, None)
    # Instant and period readings of one meter never share a chunk (their layouts differ).
    rows = [(r.ts_ms, 1, blob), (r.ts_ms + 1, 1, encode_values(r.values))]
    assert [len(c) for c in split(rows)] == [1, 1]


def test_the_store_gives_back_periods_in_order_of_their_end(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue.db")
    store.open()
    store.begin()
    store.configure({"s": ["bills"]})
    months = [period("bills", k * 30 * DAY, (k + 1) * 30 * DAY, 500.0 + k, 80.0 + k / 4) for k in range(1, 13)]
    store.append(months[:7])
    store.commit()
    store.begin()
    out = store.append([months[6], months[5], *months[7:]])  # a bill seen again: not newer, refused
    store.commit()
    assert out.accepted == 5 and len(out.refused) == 2
    back = store.read("bills", -1, 100)  # from the committed chunks, decoded together
    assert back == months
    assert [r.start_ms for r in back] == [k * 30 * DAY for k in range(1, 13)]
    store.close()
    store = QueueStore(tmp_path / "queue.db")
    store.open()
    assert store.read("bills", 3 * 30 * DAY, 2) == months[2:4]
    store.close()


def late(r: Reading, at: int) -> Reading:
    """``r`` learned again (corrected) after the meter's readings up to ``at - 1``."""
    assert r.start_ms is not None
    return Reading(r.meter, at, {q: v * 1.25 for q, v in r.values.items()}, start_ms=r.start_ms, end_ms=r.ts_ms)


def test_a_late_period_is_queued_after_its_end_and_needs_a_start() -> None:
    with pytest.raises(ValueError, match="late period"):
        Reading("m", 5 * DAY, {Q.VALUE: 1.0}, end_ms=4 * DAY)
    with pytest.raises(ValueError, match="late period"):
        Reading("m", 3 * DAY, {Q.VALUE: 1.0}, start_ms=DAY, end_ms=4 * DAY)
    with pytest.raises(ValueError, match="end after it starts"):
        Reading("m", 5 * DAY, {Q.VALUE: 1.0}, start_ms=4 * DAY, end_ms=4 * DAY)
    r = late(period("m", DAY, 31 * DAY, 613.0, 84.17), 92 * DAY)
    assert r.late and r.period_end == 31 * DAY and not period("m", DAY, 2 * DAY, 1.0).late
    assert r.to_json_dict() == {
        "meter": "m", "start": "1970-01-02T00:00:00.000Z", "start_ms": DAY, "end": "1970-02-01T00:00:00.000Z",
        "end_ms": 31 * DAY, "late": True, "ts": "1970-04-03T00:00:00.000Z", "ts_ms": 92 * DAY, "clock_synced": True,
        "values": {"interval_energy": 766250.0, "cost": 105.2125}}


def test_a_late_periods_end_survives_encoding_chunks_and_the_store(tmp_path: Path) -> None:
    r = late(period("m", 1_700_000_000_123, 1_702_592_000_000, 613.25, 84.17), 1_705_000_000_001)
    blob = encode_reading(r)
    assert decode_period(blob) == (dict(r.values), 1_700_000_000_123, 1_702_592_000_000)
    assert decode_values(blob) == dict(r.values)
    on_time = period("m", 1_702_592_000_000, 1_705_000_000_000, 1.0)
    rows = [(on_time.ts_ms, 1, encode_reading(on_time)), (r.ts_ms, 1, blob)]
    assert [len(c) for c in split(rows)] == [1, 1]  # never in one chunk with on-time periods

    store = QueueStore(tmp_path / "queue.db")
    store.open()
    store.begin()
    store.configure({"s": ["bills"]})
    months = [period("bills", k * 30 * DAY, (k + 1) * 30 * DAY, 500.0 + k, 80.0 + k / 4) for k in range(1, 7)]
    fixes = [late(months[2], 7 * 30 * DAY + 1), late(months[0], 7 * 30 * DAY + 2)]
    store.append(months)
    store.commit()
    store.begin()
    out = store.append([*fixes, late(months[1], 7 * 30 * DAY + 2)])  # one place in the queue per reading
    nxt = period("bills", 7 * 30 * DAY, 8 * 30 * DAY, 9.0)
    store.append([nxt])
    store.commit()
    assert out.accepted == 2 and len(out.refused) == 1
    back = store.read("bills", -1, 100)
    assert back == [*months, *fixes, nxt]
    assert [(b.start_ms, b.end_ms) for b in back[6:8]] == [(3 * 30 * DAY, 4 * 30 * DAY), (30 * DAY, 2 * 30 * DAY)]
    store.close()


async def test_a_crash_before_the_commit_puts_periods_back_with_their_start(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    q = DiskQueue(QueueStore(path, boot="boot-1", max_age_s=400 * 86400.0), lazy_commit=0.01)
    await q.start()
    await q.configure({"s": ["bills"]})
    b = int(time.time() * 1000) - 200 * DAY
    first = period("bills", b, b + 30 * DAY, 100.0)
    await q.append([first])
    await q.stop()
    left = [period("bills", b + 30 * DAY, b + 61 * DAY, 110.5, 20.25),
            period("bills", b + 61 * DAY, b + 91 * DAY, 99.0)]
    left.append(late(first, left[-1].ts_ms + 1))
    (tmp_path / "queue.db.journal.3").write_bytes(header("boot-1") + encode(left))
    q = DiskQueue(QueueStore(path, boot="boot-1", max_age_s=400 * 86400.0), lazy_commit=0.01)
    await q.start()
    await q.configure({"s": ["bills"]})
    assert await q.read("bills", -1, 10) == [first, *left]
    await q.stop()


async def test_a_dead_letter_keeps_the_period(tmp_path: Path) -> None:
    q = DiskQueue(QueueStore(tmp_path / "queue.db"), lazy_commit=0.01)
    await q.start()
    await q.configure({"s": ["bills"]})
    b = int(time.time() * 1000) - 40 * DAY
    bill = period("bills", b, b + 30 * DAY, 613.0, 84.0)
    fixed = late(bill, b + 30 * DAY + 1)
    await q.append([bill, fixed])
    await q.dead_letter("s", bill, "refused by the platform")
    await q.dead_letter("s", fixed, "refused by the platform")
    letters = await q.dead_letters("s")
    assert [d.reading for d in letters] == [bill, fixed] and letters[0].reading.start_ms == b
    assert letters[1].reading.end_ms == b + 30 * DAY
    await q.stop()


async def test_the_file_sink_writes_the_period(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    sink = FileSink(FileConfig(name="f", type="file", path=out))
    await sink.start()
    await sink.send(Stream("f", "bills"), [period("bills", 1_696_118_400_000, 1_698_796_799_000, 613.0, 84.17)])
    await sink.close()
    line = json.loads(out.read_text())
    assert line["start"] == "2023-10-01T00:00:00.000Z" and line["ts"] == "2023-10-31T23:59:59.000Z"
    assert line["start_ms"] == 1_696_118_400_000 and line["values"] == {"interval_energy": 613000.0, "cost": 84.17}
    assert "late" not in line and "end" not in line


@pytest.mark.parametrize("older", ["2", "3"])
def test_an_older_schema_file_is_marked_4_so_that_an_older_gateway_refuses_it(tmp_path: Path, older: str) -> None:
    import sqlite3

    from gateway.errors import QueueError

    store = QueueStore(tmp_path / "queue.db")
    store.open()
    store.begin()
    store.configure({"s": ["m"]})
    store.append([Reading("m", 1_000, {Q.VALUE: 1.5})])
    store.commit()
    store.close()
    db = sqlite3.connect(tmp_path / "queue.db")
    db.execute("UPDATE meta SET value=? WHERE key='schema'", (older,))
    db.commit()
    db.close()
    store = QueueStore(tmp_path / "queue.db")
    store.open()
    assert store.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == "4"
    assert [r.values for r in store.read("m", -1, 10)] == [{Q.VALUE: 1.5}]  # nothing stored changed
    store.close()
    db = sqlite3.connect(tmp_path / "queue.db")
    db.execute("UPDATE meta SET value='5' WHERE key='schema'")
    db.commit()
    db.close()
    with pytest.raises(QueueError, match="newer meter-gateway"):
        QueueStore(tmp_path / "queue.db").open()


SITE = """\
site: {name: plant, timezone: America/New_York}
meters:
  - {name: bills, type: simulated, model: gas, value_unit: m3}
sinks:
"""


def test_wattics_sends_a_periods_energy_as_a_value_stamped_at_its_end() -> None:
    from gateway.config.loader import load_config_text
    from gateway.platforms.wattics.sink import WatticsSink

    config = load_config_text(SITE + """\
  - type: wattics
    name: w
    username: u
    password: p4ssword
    data_points:
      - {id: dp-1, meter: bills, format: value, quantity: interval_energy}
""", "site.yaml")
    sink = WatticsSink(config.sinks[0], config)  # type: ignore[arg-type]
    bill = period("bills", 1_696_132_800_000, 1_698_811_199_000, 613.0, 84.17)
    assert sink.packet(Stream("w", "bills", "dp-1"), bill) == {
        "id": "dp-1", "tsISO8601": "2023-10-31T23:59:59.000-04:00", "value": 613000.0}


def test_voltaware_sends_a_period_only_when_its_template_asks_for_the_start() -> None:
    from gateway.config.loader import load_config_text
    from gateway.outcome import Skip
    from gateway.platforms.voltaware.sink import VoltawareSink

    def sink(extra: str) -> VoltawareSink:
        config = load_config_text(SITE + f"""\
  - type: voltaware
    name: v
    host: 127.0.0.1
    username: gateway
    password: s3cret-pw
{extra}    devices: [{{meter: bills, device_id: dev-9}}]
""", "site.yaml")
        return VoltawareSink(config.sinks[0], config)  # type: ignore[arg-type]

    bill = period("bills", 1_696_132_800_000, 1_698_811_199_000, 613.0, 84.17)
    plain = sink("").render(Stream("v", "bills", "dev-9"), bill)
    assert isinstance(plain, Skip) and "period reading" in plain.reason
    asks = sink('    payload: {from: "{start_iso}", to: "{ts_iso}", wh: "{interval_energy}", cost: "{cost}"}\n')
    rendered = asks.render(Stream("v", "bills", "dev-9"), bill)
    assert not isinstance(rendered, Skip)
    assert json.loads(rendered[1]) == {"from": "2023-10-01T04:00:00.000Z", "to": "2023-11-01T03:59:59.000Z",
                                       "wh": 613000.0, "cost": 84.17}
    instant = sink('    payload: {from: "{start_iso}", to: "{ts_iso}"}\n').render(
        Stream("v", "bills", "dev-9"), Reading("bills", 1_698_811_199_000, {Q.VALUE: 1.0}))
    assert not isinstance(instant, Skip) and json.loads(instant[1]) == {"to": "2023-11-01T03:59:59.000Z"}
