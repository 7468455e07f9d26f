"""Voltaware sink against a real mosquitto broker (TLS, password file): QoS 2, order, templates, broker restarts."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.config import load_config_text
from gateway.errors import ConfigError
from gateway.platforms.simulated.source import three_phase
from gateway.quantities import Quantity as Q
from gateway.queue import SinkCount
from gateway.reading import Reading, iso_utc, local_iso
from tests.helpers.mosquitto import Mosquitto, Subscriber
from tests.helpers.rig import Rig, RigFactory, until

BASE_MS = 1_795_000_000_000


def config_text(broker: Mosquitto, extra: str = "", devices: str | None = None, password: str = "mqtt-s3cret") -> str:
    devices = devices or "      - {meter: main, device_id: dev-001}\n      - {meter: gas, device_id: dev-002}\n"
    return f"""\
site: {{name: plant-3, timezone: Europe/Dublin}}
meters:
  - {{name: main, type: simulated, interval: 10s}}
  - {{name: gas, type: simulated, model: gas, value_unit: m3, interval: 10s}}
sinks:
  - name: voltaware
    type: voltaware
{broker.sink_lines(password)}    client_id: test-gateway
    backoff_base: 50ms
    backoff_cap: 500ms
    ack_timeout: 2s
{extra}    devices:
{devices}"""


def elec(ts: int) -> Reading:
    return Reading("main", ts, three_phase(ts / 1000))


def gas(ts: int, v: float) -> Reading:
    return Reading("gas", ts, {Q.VALUE: v})


@pytest.fixture
def rig_of(rigs: RigFactory) -> Callable[[str], Awaitable[Rig]]:
    return lambda text: rigs(text, "voltaware")


def payloads(sub: Subscriber, topic: str) -> list[dict[str, object]]:
    return [json.loads(p) for t, p, _ in sub.received() if t == topic]


async def test_every_reading_arrives_as_qos2_in_order_with_the_rendered_topic_and_payload(
    broker: Mosquitto, rig_of: object
) -> None:
    sub = Subscriber(broker)
    rig = await rig_of(config_text(broker))  # type: ignore[operator]
    for i in range(50):
        await rig.queue.append([elec(BASE_MS + i * 10_000)])
    await until(lambda: len(payloads(sub, "meters/dev-001/events")) == 50)
    got = payloads(sub, "meters/dev-001/events")
    assert all(q == 2 for _, _, q in sub.received())
    first = elec(BASE_MS)
    assert got[0] == {
        "device_id": "dev-001",
        "timestamp": iso_utc(BASE_MS),
        "active_power_w": first.values[Q.POWER_ACTIVE_TOTAL],
        "reactive_power_var": first.values[Q.POWER_REACTIVE_TOTAL],
        "voltage_v": first.values[Q.VOLTAGE_L1],
        "current_a": first.values[Q.CURRENT_L1],
        "energy_import_wh": first.values[Q.ENERGY_IMPORT_TOTAL],
    }  # the meter has no export counter: the key is left out, not sent as null
    assert [p["timestamp"] for p in got] == sorted(p["timestamp"] for p in got)  # type: ignore[type-var]
    assert len({p["timestamp"] for p in got}) == 50
    sub.close()


async def test_a_custom_template_with_every_kind_of_placeholder(broker: Mosquitto, rig_of: object) -> None:
    extra = """\
    topic: "site/{site}/{device_id}/{meter}"
    payload:
      id: "{device_id}"
      t: {s: "{ts_s}", ms: "{ts_ms}", local: "{ts_local}"}
      readings: ["{value}"]
      label: "gas at {ts_iso} is {value} m3"
"""
    sub = Subscriber(broker)
    rig = await rig_of(config_text(broker, extra))  # type: ignore[operator]
    await rig.queue.append([gas(BASE_MS, 123.5)])
    await until(lambda: len(sub.received()) == 1)
    topic, body, _ = sub.received()[0]
    assert topic == "site/plant-3/dev-002/gas"
    assert json.loads(body) == {
        "id": "dev-002",
        "t": {"s": BASE_MS // 1000, "ms": BASE_MS, "local": local_iso(BASE_MS, ZoneInfo("Europe/Dublin"))},
        "readings": [123.5],
        "label": f"gas at {iso_utc(BASE_MS)} is 123.5 m3",
    }
    sub.close()


async def test_missing_skip_does_not_send_a_reading_that_lacks_a_quantity(broker: Mosquitto, rig_of: object) -> None:
    sub = Subscriber(broker)
    extra = '    missing: skip\n    payload: {p: "{power_active_total}"}\n'
    rig = await rig_of(config_text(broker, extra))  # type: ignore[operator]
    await rig.queue.append([elec(BASE_MS), gas(BASE_MS, 1.0)])  # the payload wants power: the gas meter lacks it
    await until(lambda: len(sub.received()) == 1)
    await asyncio.sleep(0.3)
    assert [t for t, _, _ in sub.received()] == ["meters/dev-001/events"]
    await rig.queue.flush()
    assert (await rig.queue.counters()).sink("voltaware", SinkCount.SKIPPED) == 1
    assert await rig.depth() == 0
    sub.close()


async def test_a_broker_restart_mid_stream_loses_nothing(broker: Mosquitto, rig_of: object) -> None:
    sub = Subscriber(broker)
    rig = await rig_of(config_text(broker))  # type: ignore[operator]
    for i in range(100):
        await rig.queue.append([elec(BASE_MS + i * 1000)])
    await until(lambda: len(sub.received()) >= 100)
    broker.stop(signal.SIGKILL)
    for i in range(100, 200):  # queued while the broker is down
        await rig.queue.append([elec(BASE_MS + i * 1000)])
    await asyncio.sleep(1.0)
    assert await rig.depth() > 0
    broker.start()
    await until(lambda: len({json.loads(p)["timestamp"] for _, p, _ in sub.received()}) == 200, within=30)
    stamps = [json.loads(p)["timestamp"] for _, p, _ in sub.received()]
    unique = list(dict.fromkeys(stamps))
    assert unique == sorted(unique)
    for _ in range(100):  # the subscriber may hear a message before the gateway hears its PUBCOMP
        if await rig.depth() == 0:
            break
        await asyncio.sleep(0.05)
    assert await rig.depth() == 0
    sub.close()


async def test_refused_credentials_keep_the_readings_and_log_once(
    broker: Mosquitto, rig_of: object, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = await rig_of(config_text(broker, password="wrong-pass-1"))  # type: ignore[operator]
    await rig.queue.append([elec(BASE_MS + i * 1000) for i in range(5)])
    await asyncio.sleep(2.5)
    assert await rig.depth() == 5
    out = capsys.readouterr()
    logs = out.out + out.err
    assert logs.count("the broker refused the connection") == 1
    assert "wrong-pass-1" not in logs and "mqtt-s3cret" not in logs


# ---------------------------------------------------------------- configuration mistakes


@pytest.mark.parametrize(
    ("extra", "devices", "line", "fragment"),
    [
        ('    topic: "meters/{device}/x"\n', None, 17, "sinks[voltaware].topic: unknown placeholder {device}"),
        ('    topic: "meters/+/x"\n', None, 17, "cannot hold the wildcards"),
        ('    topic: "m/{power_active_total}"\n', None, 17, "only {device_id}, {meter} and {site}"),
        ("    payload: {p: '{powr}'}\n", None, 17, "sinks[voltaware].payload.p: unknown placeholder {powr}"),
        ("", "      - {meter: nope, device_id: d1}\n", 18, "devices[0].meter: no meter named 'nope'"),
        ("", "      - {meter: main, device_id: a/b}\n", 18, "cannot be a device id"),
        ("", "      - {meter: main, device_id: d1}\n      - {meter: gas, device_id: d1}\n", 19,
         "devices[1].device_id: 'd1' is already used"),
        ("    qos: 3\n", None, 17, "sinks[voltaware].qos: 3 is not allowed"),
        ("", "      - meter: main\n        device_id: d1\n"
             "        metadata: {geolocation: {latitude: 1, longitude: 2}}\n", 20, "needs the api: section"),
    ],
)
def test_template_and_device_mistakes(broker: Mosquitto, extra: str, devices: str | None, line: int,
                                      fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config_text(config_text(broker, extra, devices), "test.yaml")
    assert len(e.value.problems) == 1, e.value.problems
    assert e.value.problems[0].startswith(f"test.yaml:{line}: ") and fragment in e.value.problems[0], e.value.problems


API = """\
    api: {client_id: gw, client_secret: api-s3cret}
"""


def device_with(meta: str) -> str:
    return "      - meter: main\n        device_id: d1\n        metadata:\n" + meta


@pytest.mark.parametrize(
    ("meta", "fragment"),
    [
        ("          property: {property_type: HOME, home_type: FLAT, home_usage_type: PRIMARY, home_size: 50,"
         " bedroom_amount: 0, power_generator_source: NONE, people_amount: 2, people_amount_in_day_time: 1,"
         " people: []}\n", "bedroom_amount: 0 is out of range (expected a value >= 1)"),
        ("          property: {property_type: HOME, home_type: FLAT, home_usage_type: PRIMARY, home_size: 50,"
         " bedroom_amount: 1, power_generator_source: NONE, people_amount: 2, people_amount_in_day_time: 1}\n",
         "property.people: required key is missing"),
        ("          property: {property_type: HOME, home_type: CASTLE, home_usage_type: PRIMARY, home_size: 50,"
         " bedroom_amount: 1, power_generator_source: NONE, people_amount: 2, people_amount_in_day_time: 1,"
         " people: []}\n", "home_type: 'CASTLE' is not allowed"),
        ("          property: {property_type: INDUSTRIAL, power_generator_source: COAL}\n",
         "power_generator_source: 'COAL' is not allowed"),
        ("          appliances: [{key: ELECTRIC_VEHICLE, amount: 2, type: CAR, wattages: [7200]}]\n",
         "give one wattage per vehicle"),
        ("          appliances: [{key: AC, amount: 1, type: WINDOW}]\n", "appliances[0].usage_type: required key"),
        ("          appliances: [{key: TOASTER, amount: 1}]\n", "appliances[0].key: unknown type 'TOASTER'"),
        ("          geolocation: {latitude: 95, longitude: 0}\n", "latitude: 95 is out of range"),
        ("          geolocation: {latitude: 51.5}\n", "geolocation.longitude: required key is missing"),
    ],
)
def test_metadata_mistakes_follow_the_api_document(broker: Mosquitto, meta: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config_text(config_text(broker, API, device_with(meta)), "test.yaml")
    assert len(e.value.problems) == 1, e.value.problems
    assert e.value.problems[0].startswith("test.yaml:22: sinks[voltaware].devices[0].metadata."), e.value.problems
    assert fragment in e.value.problems[0], e.value.problems


def test_valid_metadata_gives_the_documents_to_put(broker: Mosquitto) -> None:
    meta = (
        "          property: {property_type: HOME, home_type: HOUSE, home_usage_type: PRIMARY, home_size: 80,"
        " bedroom_amount: 2, power_generator_source: NONE, people_amount: 3, people_amount_in_day_time: 2,"
        " people: [{age_range: ADULT, amount: 2}, {age_range: ZERO_TO_FIVE, amount: 1}]}\n"
        "          appliances: [{key: KETTLE, amount: 1}, {key: ELECTRIC_VEHICLE, amount: 2, type: BIKE,"
        " wattages: [750, 750]}]\n"
        "          geolocation: {latitude: 51.509865, longitude: -0.118092}\n"
    )
    config = load_config_text(config_text(broker, API, device_with(meta)), "test.yaml")
    docs = config.sinks[0].devices[0].metadata.documents()  # type: ignore[union-attr]
    assert docs["property"]["people"] == [{"age_range": "ADULT", "amount": 2}, {"age_range": "ZERO_TO_FIVE",
                                                                                 "amount": 1}]
    assert docs["property"]["version"] == "1.0"
    assert docs["appliances"] == {"appliances": [{"amount": 1, "key": "KETTLE"},
                                                 {"amount": 2, "key": "ELECTRIC_VEHICLE", "type": "BIKE",
                                                  "wattages": [750, 750]}], "version": "1.0"}
    assert docs["geolocation"] == {"latitude": 51.509865, "longitude": -0.118092}


async def test_a_client_certificate_when_the_broker_requires_one(tmp_path: Path) -> None:
    from tests.helpers.mosquitto import MOSQUITTO

    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (CI installs it)")
    with Mosquitto(tmp_path / "mtls", require_client_cert=True).start() as b:
        sub_client_cert = f"    client_cert: {b.client_cert}\n    client_key: {b.client_key}\n"
        rig = await Rig(config_text(b, sub_client_cert), tmp_path / "with", "voltaware").start()
        await rig.queue.append([elec(BASE_MS)])
        for _ in range(100):
            if await rig.depth() == 0:
                break
            await asyncio.sleep(0.05)
        assert await rig.depth() == 0  # delivered over mutual TLS
        await rig.stop()
        rig = await Rig(config_text(b), tmp_path / "without", "voltaware").start()
        await rig.queue.append([elec(BASE_MS)])
        await asyncio.sleep(1.0)
        assert await rig.depth() == 1  # refused at the TLS handshake: kept, retried
        await rig.stop()
