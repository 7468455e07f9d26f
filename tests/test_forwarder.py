"""Forwarders against the real disk queue, with a sink whose answers the test scripts (the forwarder is what is
tested here; the platform sinks have their own tests against real peers)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from gateway.forwarder import Forwarder, backoff_delay
from gateway.outcome import DELIVERED, Outcome, Reject, Retry
from gateway.platforms.sink import BaseSink
from gateway.platforms.stdout.config import StdoutConfig as SinkCfg
from gateway.quantities import Quantity
from gateway.queue import DiskQueue, QueueStore, SinkCount
from gateway.queue.counters import sent_mark_key
from gateway.reading import Reading
from gateway.stream import Stream
from tests.conftest import reading
from tests.helpers.rig import until


class ScriptedSink(BaseSink):
    """Answers each reading with ``answer(reading, attempt)``; records every send."""

    def __init__(self, answer: Callable[[Reading, int], Outcome] | None = None, max_batch: int = 1,
                 delay: float = 0.0) -> None:
        self.name = "s"
        self.max_batch = max_batch
        self.answer = answer or (lambda r, n: DELIVERED)
        self.delay = delay
        self.sent: list[tuple[float, Reading]] = []
        self.delivered: list[Reading] = []
        self.attempts: dict[tuple[str, int], int] = {}
        self.in_flight = 0
        self.max_in_flight_seen = 0

    async def start(self) -> None:
        return None

    async def send(self, stream: Stream, readings: Sequence[Reading]) -> list[Outcome]:
        self.in_flight += 1
        self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            out: list[Outcome] = []
            for r in readings:
                key = (r.meter, r.ts_ms)
                self.attempts[key] = self.attempts.get(key, 0) + 1
                self.sent.append((time.monotonic(), r))
                o = self.answer(r, self.attempts[key])
                if o is DELIVERED:
                    self.delivered.append(r)
                out.append(o)
            return out
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        return None


def cfg(**kw: object) -> SinkCfg:
    base: dict[str, object] = {"name": "s", "type": "stdout", "backoff_base": "10ms", "backoff_cap": "50ms"}
    return SinkCfg.model_validate(base | kw)


async def run_forwarder(queue: DiskQueue, sink: ScriptedSink, meters: list[str], **kw: object) -> Forwarder:
    await queue.configure({sink.name: meters})
    fwd = Forwarder(sink, cfg(**kw), queue, [Stream(sink.name, m) for m in meters], rng=random.Random(1))
    await fwd.start()
    return fwd


async def test_every_reading_is_delivered_in_order_per_meter(queue: DiskQueue) -> None:
    sink = ScriptedSink(delay=0.001)
    fwd = await run_forwarder(queue, sink, ["m1", "m2", "m3"])
    for t in range(1, 41):
        await queue.append([reading(m, t) for m in ("m1", "m2", "m3")])
    await until(lambda: len(sink.delivered) == 120)
    await fwd.stop(1)
    for m in ("m1", "m2", "m3"):
        assert [r.ts_ms for r in sink.delivered if r.meter == m] == list(range(1, 41))
    assert sink.max_in_flight_seen > 1  # meters went in parallel


async def test_a_meters_next_reading_waits_for_the_previous_to_be_acknowledged(queue: DiskQueue) -> None:
    # Every reading fails twice before it is accepted: the order of first attempts must still be chronological
    # and no reading may be tried before its predecessor succeeded.
    sink = ScriptedSink(lambda r, n: DELIVERED if n >= 3 else Retry("503"))
    fwd = await run_forwarder(queue, sink, ["m1"])
    await queue.append([reading("m1", t) for t in range(1, 6)])
    await until(lambda: len(sink.delivered) == 5)
    await fwd.stop(1)
    order = [r.ts_ms for _, r in sink.sent]
    assert order == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]
    assert (await queue.counters()).sink("s", SinkCount.RETRIED) == 10


async def test_one_failing_meter_does_not_hold_back_the_others(queue: DiskQueue) -> None:
    sink = ScriptedSink(lambda r, n: Retry("down") if r.meter == "bad" else DELIVERED)
    fwd = await run_forwarder(queue, sink, ["bad", "good"])
    await queue.append([reading("bad", 1), reading("good", 1)])
    await queue.append([reading("good", 2)])
    await until(lambda: len(sink.delivered) == 2)
    await fwd.stop(1)
    assert [r.meter for r in sink.delivered] == ["good", "good"]
    assert (await queue.backlog("s", [("s", "bad")])).depth == 1


async def test_max_in_flight_bounds_parallel_sends(queue: DiskQueue) -> None:
    meters = [f"m{i}" for i in range(10)]
    sink = ScriptedSink(delay=0.02)
    fwd = await run_forwarder(queue, sink, meters, max_in_flight=3)
    await queue.append([reading(m, 1) for m in meters])
    await until(lambda: len(sink.delivered) == 10)
    await fwd.stop(1)
    assert sink.max_in_flight_seen == 3


async def test_retry_after_is_honoured(queue: DiskQueue) -> None:
    sink = ScriptedSink(lambda r, n: DELIVERED if n >= 2 else Retry("429", after=0.3))
    fwd = await run_forwarder(queue, sink, ["m1"])
    await queue.append([reading("m1", 1)])
    await until(lambda: len(sink.delivered) == 1)
    await fwd.stop(1)
    (t1, _), (t2, _) = sink.sent
    assert t2 - t1 >= 0.3


def test_backoff_is_full_jitter_capped_and_never_below_retry_after() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(a, 1.0, 300.0, None, rng) for a in range(1, 40) for _ in range(20)]
    assert max(delays) <= 300.0 and min(delays) >= 0.0
    assert all(backoff_delay(1, 1.0, 300.0, None, rng) <= 1.0 for _ in range(100))
    assert all(backoff_delay(3, 1.0, 300.0, 12.0, rng) >= 12.0 for _ in range(100))
    assert backoff_delay(3, 1.0, 300.0, 10**9, rng) == 3600.0  # an absurd Retry-After is bounded


async def test_a_rejected_reading_goes_to_the_dead_letters_and_the_stream_goes_on(queue: DiskQueue) -> None:
    sink = ScriptedSink(lambda r, n: Reject("HTTP 400: bad packet") if r.ts_ms == 2 else DELIVERED, max_batch=10)
    fwd = await run_forwarder(queue, sink, ["m1"])
    await queue.append([reading("m1", t) for t in (1, 2, 3)])
    await until(lambda: len(sink.delivered) == 2)
    await fwd.stop(1)
    assert [r.ts_ms for r in sink.delivered] == [1, 3]
    letters = await queue.dead_letters("s")
    assert [(d.reading.ts_ms, d.reason) for d in letters] == [(2, "HTTP 400: bad packet")]
    assert (await queue.backlog("s", [("s", "m1")])).depth == 0


async def test_a_dead_letter_marked_for_retry_is_sent_again(queue: DiskQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.forwarder.DEADLETTER_POLL", 0.05)
    fixed = {"ok": False}
    sink = ScriptedSink(lambda r, n: DELIVERED if fixed["ok"] else Reject("bad"))
    fwd = await run_forwarder(queue, sink, ["m1"])
    await queue.append([reading("m1", 1)])
    await until(lambda: len(sink.sent) == 1)
    await queue.flush()
    assert len(await queue.dead_letters("s")) == 1
    fixed["ok"] = True  # the operator fixed the cause, then asks for a retry (as the CLI does, beside the daemon)
    beside = QueueStore(queue.path)
    beside.open(repair=False)
    beside.begin()
    assert beside.mark_dead_letters(None, "retry", "s") == 1
    beside.commit()
    beside.close()
    await until(lambda: len(sink.delivered) == 1)
    await fwd.stop(1)
    assert await queue.dead_letters("s") == []
    assert (await queue.counters()).sink("s", SinkCount.DELIVERED) == 1


async def test_a_sink_that_raises_or_hangs_costs_a_retry_not_a_reading(queue: DiskQueue) -> None:
    calls = {"n": 0}

    class Flaky(ScriptedSink):
        async def send(self, stream: Stream, readings: Sequence[Reading]) -> list[Outcome]:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("bug in a sink")
            if calls["n"] == 2:
                await asyncio.sleep(10)
            return await super().send(stream, readings)

    sink = Flaky()
    fwd = await run_forwarder(queue, sink, ["m1"], send_timeout="200ms")
    await queue.append([reading("m1", 1)])
    await until(lambda: len(sink.delivered) == 1)
    await fwd.stop(1)
    assert calls["n"] == 3


async def test_the_cursor_survives_a_restart_and_nothing_is_sent_twice(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    q = DiskQueue(QueueStore(path), lazy_commit=0.01)
    await q.start()
    sink = ScriptedSink()
    fwd = await run_forwarder(q, sink, ["m1"])
    await q.append([reading("m1", t) for t in range(1, 11)])
    await until(lambda: len(sink.delivered) == 10)
    await fwd.stop(1)
    await q.stop()
    q2 = DiskQueue(QueueStore(path), lazy_commit=0.01)
    await q2.start()
    sink2 = ScriptedSink()
    fwd2 = await run_forwarder(q2, sink2, ["m1"])
    await q2.append([reading("m1", 11)])
    await until(lambda: len(sink2.delivered) == 1)
    await fwd2.stop(1)
    await q2.stop()
    assert [r.ts_ms for r in sink2.delivered] == [11]


async def test_a_live_stream_never_waits_for_a_lazy_commit_to_send(tmp_path: Path) -> None:
    """The record of how far a stream sent is renewed lazily, with the next commit (up to ``commit_interval``
    later), but a batch waits for it only when the record on disk does not cover it yet: the first send of a new
    stream commits its record at once, and after a restart the record written before still covers what comes."""
    path = tmp_path / "q.db"
    now = int(time.time() * 1000)
    for run in range(2):
        q = DiskQueue(QueueStore(path), lazy_commit=5.0)
        await q.start()
        sink = ScriptedSink()
        fwd = await run_forwarder(q, sink, ["m1"])
        for t in range(3):
            ts = now + 1000 * (10 * run + t)
            t0 = time.monotonic()
            await q.append([reading("m1", ts)])
            await until(lambda ts=ts: bool(sink.delivered) and sink.delivered[-1].ts_ms == ts, within=4.0)
            assert time.monotonic() - t0 < 1.0, f"run {run}, reading {t}: waited for the lazy commit"
        await fwd.stop(1)
        await q.stop()
    # What was sent is covered by the record on disk: a crash could not make an undercount of what is re-sent.
    store = QueueStore(path)
    store.open()
    try:
        assert store.counters.get(sent_mark_key("s", "m1"), -1) >= now + 12_000
    finally:
        store.close()


async def test_stop_returns_within_the_grace_period_even_with_a_hung_send(queue: DiskQueue) -> None:
    class Hung(ScriptedSink):
        async def send(self, stream: Stream, readings: Sequence[Reading]) -> list[Outcome]:
            await asyncio.sleep(60)
            return []

    fwd = await run_forwarder(queue, Hung(), ["m1"])
    await queue.append([reading("m1", 1)])
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    await fwd.stop(0.3)
    assert time.monotonic() - t0 < 1.0
    assert (await queue.backlog("s", [("s", "m1")])).depth == 1


def bill(meter: str, start: int, end: int, kwh: float, queued_at: int | None = None) -> Reading:
    """A period reading; with ``queued_at``, a late one (a corrected bill queued after the meter's newer readings)."""
    return Reading(meter, queued_at or end, {Quantity.INTERVAL_ENERGY: kwh}, start_ms=start,
                   end_ms=end if queued_at else None)


@pytest.mark.parametrize("takes", [False, True])
async def test_a_late_period_reaches_only_a_sink_that_can_replace_a_past_period(queue: DiskQueue,
                                                                               takes: bool) -> None:
    sink = ScriptedSink(lambda r, n: Retry("503") if n == 1 and r.ts_ms >= 3000 else DELIVERED, max_batch=10)
    sink.late_periods = takes
    fwd = await run_forwarder(queue, sink, ["bills"])
    sent = [bill("bills", 0, 1000, 1.0), bill("bills", 1000, 2000, 2.0), bill("bills", 0, 1000, 1.5, 2001),
            bill("bills", 2000, 3000, 3.0), bill("bills", 1000, 2000, 2.5, 3001), bill("bills", 3000, 4000, 4.0)]
    await queue.append(sent)
    await until(lambda: [r.ts_ms for r in sink.delivered][-1:] == [4000])
    await fwd.stop(1)
    expected = sent if takes else [r for r in sent if not r.late]
    assert sink.delivered == expected  # in the queue's order, each once (the batch retried from 3000)
    assert all(r.end_ms is None for _, r in sink.sent) or takes
    counters = await queue.counters()
    assert counters.sink("s", SinkCount.SKIPPED) == (0 if takes else 2)
    assert counters.sink("s", SinkCount.DELIVERED) == len(expected)
    assert (await queue.backlog("s", [("s", "bills")])).depth == 0


async def test_an_aggregated_stream_leaves_late_periods_out_of_its_intervals(queue: DiskQueue) -> None:
    sink = ScriptedSink(max_batch=10)
    await queue.configure({sink.name: ["m"]})
    stream = Stream(sink.name, "m", interval=10.0)
    fwd = Forwarder(sink, cfg(), queue, [stream], rng=random.Random(1))
    await fwd.start()
    readings = [Reading("m", t, {Quantity.ENERGY_IMPORT_TOTAL: t / 1000}) for t in (2000, 6000, 10_000)]
    readings.append(bill("m", 1000, 9000, 99.0, 10_001))
    readings += [Reading("m", t, {Quantity.ENERGY_IMPORT_TOTAL: t / 1000}) for t in (14_000, 20_000, 21_000)]
    await queue.append(readings)
    await until(lambda: len(sink.delivered) == 2)
    await fwd.stop(1)
    assert [(r.ts_ms, dict(r.values)) for r in sink.delivered] == [
        (10_000, {Quantity.ENERGY_IMPORT_TOTAL: 10.0}), (20_000, {Quantity.ENERGY_IMPORT_TOTAL: 20.0})]
    counters = await queue.counters()
    assert counters.sink("s", SinkCount.SKIPPED) == 1 and counters.sink("s", SinkCount.DELIVERED) == 5
