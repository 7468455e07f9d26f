"""Garbage on the wire never hurts: hypothesis-generated payloads interleaved with valid messages.

Directly through the decoders (many examples, fast), then through a real broker into the queue: every valid
message becomes exactly one reading, every other one is counted and nothing of it is queued, nothing crashes, and
memory stays bounded.
"""

from __future__ import annotations

import asyncio
import json
import math
import tracemalloc
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.platforms.mqtt.config import SubscriptionConfig
from gateway.platforms.mqtt.formats import BadMessage, Decoder, Ignored
from gateway.quantities import Quantity as Q
from gateway.queue import DiskQueue
from tests.helpers.mosquitto import Mosquitto
from tests.helpers.rig import until
from tests.test_mqtt_source import Publisher, config, running, source, stop_source, wait_readings

SUBS = [
    SubscriptionConfig(name="plc", broker="b", topic="plc/+/data", meter_level=2, format="json",
                 values={Q.POWER_ACTIVE_TOTAL: {"path": "P"}, Q.ENERGY_IMPORT_TOTAL: {"path": "E.imp", "scale": 1000}},
                 timestamp={"path": "ts"}),  # type: ignore[arg-type]
    SubscriptionConfig(name="plugs", broker="b", topic="tele/+/SENSOR", meter_level=2, format="tasmota"),
    SubscriptionConfig(name="shelly", broker="b", topic="shelly/events/rpc", meter="plc1", format="shelly_gen2"),
    SubscriptionConfig(name="heat", broker="b", topic="heat/value", meter="plc1", format="value"),
]
DECODERS = [Decoder(s, ZoneInfo("Europe/Dublin"), {"plc1", "kitchen"}) for s in SUBS]

json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
garbage = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.dictionaries(st.sampled_from(["P", "E", "ts", "ENERGY", "Time", "params", "method"]), json_values,
                    max_size=4).map(lambda d: json.dumps(d, allow_nan=True).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from([b"NaN", b"inf", b"-Infinity", b"", b"   ", b"1e999", b'{"P": 1e308, "E": {"imp": 1e308}}']),
    # Integers too big for a float (OverflowError), or for Python's int parser (over 4,300 digits: ValueError), in
    # every place a format reads a number or a time.
    st.integers(300, 6000).map(lambda n: (
        '{"P": 1%s, "E": {"imp": 1%s}, "ts": 1%s, "ENERGY": {"Power": 1%s, "Total": [1%s]}, "Time": 1%s,'
        ' "method": "NotifyStatus", "params": {"ts": 1%s, "em:0": {"a_current": 1%s}}}' % (("0" * n,) * 8)).encode()),
    st.integers(300, 6000).map(lambda n: b"1" + b"0" * n),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=garbage, which=st.integers(0, len(SUBS) - 1))
def test_a_decoder_turns_any_payload_into_finite_readings_or_a_counted_reason(payload: bytes, which: int) -> None:
    dec = DECODERS[which]
    topic = {"plc": "plc/plc1/data", "plugs": "tele/kitchen/SENSOR", "shelly": "shelly/events/rpc",
             "heat": "heat/value"}[dec.sub.name]
    try:
        out = dec.decode(topic, payload)
    except (BadMessage, Ignored) as e:
        if isinstance(e, BadMessage):
            assert e.reason in {"not_json", "too_deep", "wrong_type", "not_finite", "missing_fields",
                                "bad_timestamp", "not_a_number", "unknown_meter"}, e
            if len(payload) > 10:  # the reason never echoes a payload (a short one may equal a word such as 'inf')
                assert payload.decode("utf-8", "replace")[:40] not in str(e)
        return
    for meter, ts, values in out:
        assert meter == "plc1" or meter == "kitchen"
        assert values and all(math.isfinite(v) for v in values.values())
        assert ts is None or 946_684_800_000 <= ts <= 4_102_444_800_000


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(junk=st.lists(garbage, min_size=20, max_size=40))
def test_through_a_broker_every_valid_message_is_one_reading_and_garbage_is_only_counted(
        broker: Mosquitto, tmp_path_factory: object, junk: list[bytes]) -> None:
    asyncio.run(_through_broker(broker, junk))


async def _through_broker(broker: Mosquitto, junk: list[bytes]) -> None:
    import tempfile
    from pathlib import Path

    from gateway.queue import QueueStore

    with tempfile.TemporaryDirectory() as tmp:
        queue = DiskQueue(QueueStore(Path(tmp) / "q.db"), lazy_commit=0.01)
        await queue.start()
        cfg = config(broker, """\
  - {name: plc, broker: site, topic: plc/+/data, meter_level: 2, values: {power_active_total: P},
     timestamp: {path: ts}}
""", ["plc1"])
        src = source(cfg)
        tracemalloc.start()
        task, stop = await running(src, queue)
        pub = Publisher(broker, "fuzzer")
        try:
            base = 1_782_907_200
            for i, payload in enumerate(junk):
                pub.publish("plc/plc1/data", payload)
                pub.publish("plc/plc1/data", json.dumps({"P": i, "ts": base + i}))
            readings = await wait_readings(queue, "plc1", len(junk))
            await until(lambda: src.subscriptions()["plc"]["messages"] >= 2 * len(junk))
        finally:
            pub.close()
            await stop_source(task, stop)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            await queue.stop()
    # Garbage that happens to be a valid message (a dict with a numeric P and a good ts) is a reading too; it can
    # only add readings at its own times, never replace the numbered ones.
    numbered = {int(r.values[Q.POWER_ACTIVE_TOTAL]) for r in readings if r.ts_ms % 1000 == 0
                and r.ts_ms // 1000 - base == r.values[Q.POWER_ACTIVE_TOTAL]}
    assert numbered == set(range(len(junk)))
    counts = src.subscriptions()["plc"]
    assert counts["messages"] == 2 * len(junk)
    assert counts["readings"] + counts.get("bad", 0) + counts.get("ignored", 0) == 2 * len(junk)
    assert peak < 20 * 1024 * 1024, f"peak {peak} bytes while decoding {len(junk)} garbage messages"


async def test_a_retained_number_no_float_can_hold_refuses_that_message_never_the_source(
        broker: Mosquitto, queue: DiskQueue) -> None:
    """A retained message with a 400-digit integer (and one of 5,000 digits) on one subscription: each is refused
    and counted; the source keeps running, and the other subscription on the same broker delivers every reading."""
    pub = Publisher(broker, "poison")
    for digits in (400, 5000):
        info = pub.client.publish("plc/plc1/data", b'{"P": 1' + b"0" * digits + b', "ts": 1782907200}', qos=1,
                                  retain=True)
        info.wait_for_publish(5)
    cfg = config(broker, """\
  - {name: plc, broker: site, topic: plc/+/data, meter_level: 2, values: {power_active_total: P},
     timestamp: {path: ts}}
  - {name: heat, broker: site, topic: heat/value, meter: heat, format: value}
""", ["plc1", "heat"])
    src = source(cfg)
    task, stop = await running(src, queue)
    try:
        for i in range(5):
            pub.publish("heat/value", str(100 + i))
        readings = await wait_readings(queue, "heat", 5)
        await until(lambda: src.subscriptions()["plc"].get("bad", 0) >= 1)
        assert not task.done()
    finally:
        pub.client.publish("plc/plc1/data", b"", qos=1, retain=True).wait_for_publish(5)  # clear the retained one
        pub.close()
        await stop_source(task, stop)
    assert [r.values[Q.VALUE] for r in readings] == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert await queue.read("plc1", -1, 10) == []
    assert src.subscriptions()["plc"]["not_a_number"] + src.subscriptions()["plc"].get("not_finite", 0) >= 1
