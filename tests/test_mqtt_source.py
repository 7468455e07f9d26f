"""Meters that publish to a broker: a mosquitto started by each test (TLS, password file, persistence), real
publishers, the MQTT source committing into a real on-disk queue.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt
import pytest
import structlog
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import GatewayConfig, load_config_text
from gateway.config.models import MqttMeterConfig
from gateway.platforms.mqtt.source import MqttSource
from gateway.quantities import Quantity as Q
from gateway.queue import DiskQueue
from gateway.reading import Reading
from tests.helpers.mosquitto import Mosquitto
from tests.helpers.rig import until

TZ = "Europe/Dublin"


def config(broker: Mosquitto, subscriptions: str, meters: list[str], password: str | None = None) -> GatewayConfig:
    meter_lines = "".join(f"  - {{name: {m}, type: mqtt{', value_unit: kWh' if m == 'heat' else ''}}}\n"
                          for m in meters)
    return load_config_text(f"""\
site: {{name: test, timezone: {TZ}}}
brokers:
  - name: site
    host: 127.0.0.1
    port: {broker.port}
    ca_file: {broker.ca_file}
    username: gateway
    password: {password or broker.users['gateway']}
    client_id: gw-under-test
subscriptions:
{subscriptions}
meters:
{meter_lines}sinks: [{{name: out, type: stdout}}]
""", "test.yaml")


def source(cfg: GatewayConfig) -> MqttSource:
    meters = {m.name for m in cfg.meters if isinstance(m, MqttMeterConfig)}
    return MqttSource(cfg.brokers[0], list(cfg.subscriptions), meters, ZoneInfo(TZ))


class Publisher:
    """A device publishing to the broker; ``publish`` returns once the broker acknowledged (QoS 1)."""

    def __init__(self, broker: Mosquitto, client_id: str = "device", client_cert: bool = False) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.username_pw_set("watcher", broker.users["watcher"])
        if broker.tls:
            cert = (str(broker.client_cert), str(broker.client_key)) if client_cert else (None, None)
            self.client.tls_set(ca_certs=str(broker.ca_file), certfile=cert[0], keyfile=cert[1])
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, timeout: float = 10.0) -> bool:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout)
        return info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class NumberedDevice:
    """A device in a thread publishing ``{"n": i, "ts": <now in ms> + i}`` on plc/plc1/data (QoS 1) until stopped;
    ``accepted`` holds the numbers the broker acknowledged (a publish while it restarts is not accepted). Times are
    recent: readings older than the queue's max_age (30 days) would be evicted, counted and logged, not delivered."""

    def __init__(self, broker: Mosquitto, client_id: str, pause: float, timeout: float) -> None:
        self.base_ms = round(time.time() * 1000)
        self.accepted: list[int] = []
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(broker, client_id, pause, timeout))

    def _run(self, broker: Mosquitto, client_id: str, pause: float, timeout: float) -> None:
        pub = Publisher(broker, client_id)
        i = 0
        while not self.done.is_set():
            try:
                if pub.publish("plc/plc1/data", json.dumps({"n": i, "ts": self.base_ms + i}), timeout=timeout):
                    self.accepted.append(i)
            except RuntimeError:  # paho: not connected (the broker is restarting): not accepted
                pass
            i += 1
            time.sleep(pause)
        pub.close()

    def start(self) -> NumberedDevice:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.done.set()
        self._thread.join(10)


async def running(src: MqttSource, queue: DiskQueue) -> tuple[asyncio.Task[None], asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(src.run(queue.append, stop))
    await until(lambda: src._connected, within=10)
    await asyncio.sleep(0.2)  # the subscription is made right after the connection
    return task, stop


async def stop_source(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()
    await asyncio.wait_for(task, 10)


async def queued(queue: DiskQueue, meter: str) -> list[Reading]:
    return await queue.read(meter, -1, 100_000)


async def wait_readings(queue: DiskQueue, meter: str, n: int, within: float = 10) -> list[Reading]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        rs = await queued(queue, meter)
        if len(rs) >= n:
            return rs
        await asyncio.sleep(0.05)
    raise AssertionError(f"{meter}: {len(await queued(queue, meter))} readings, wanted {n}")


# ---------------------------------------------------------------- formats


TASMOTA_1P = {"Time": "2026-07-01T12:00:05", "ENERGY": {
    "TotalStartTime": "2024-01-01T00:00:00", "Total": 1234.567, "Yesterday": 3.2, "Today": 1.1, "Period": 2,
    "Power": 1500, "ApparentPower": 1600, "ReactivePower": 556, "Factor": 0.94, "Voltage": 231, "Current": 6.93}}
TASMOTA_3P = {"Time": "2026-07-01T12:00:10", "ENERGY": {
    "Total": 50.5, "Power": [100, 200, 300], "Voltage": [230, 231, 232], "Current": [0.5, 0.9, 1.3],
    "Factor": [0.9, 0.95, 1.0], "Frequency": 50}}
SHELLY_NOTIFY = {"src": "shellypro3em-a", "dst": "gw", "method": "NotifyStatus", "params": {
    "ts": 1782907210.21,
    "em:0": {"id": 0, "a_current": 4.029, "a_voltage": 236.1, "a_act_power": 951.2, "a_aprt_power": 951.9,
             "a_pf": 1, "a_freq": 50, "b_current": 4.0, "b_voltage": 235.0, "b_act_power": 900.0,
             "b_aprt_power": 940.0, "b_pf": 0.96, "c_current": 3.1, "c_voltage": 234.0, "c_act_power": 700.0,
             "c_aprt_power": 725.4, "c_pf": -0.97, "n_current": None, "total_current": 11.129,
             "total_act_power": 2551.2, "total_aprt_power": 2617.3, "user_calibrated_phase": []},
    "emdata:0": {"id": 0, "a_total_act_energy": 1000.5, "a_total_act_ret_energy": 0, "b_total_act_energy": 2000.25,
                 "b_total_act_ret_energy": 10, "c_total_act_energy": 3000, "c_total_act_ret_energy": 5.5,
                 "total_act": 6000.75, "total_act_ret": 15.5}}}


async def test_each_format_becomes_readings_with_the_right_values_and_times(
        broker: Mosquitto, queue: DiskQueue) -> None:
    cfg = config(broker, """\
  - {name: plugs, broker: site, topic: tele/+/SENSOR, meter_level: 2, format: tasmota}
  - {name: shelly-rpc, broker: site, topic: shellypro3em-a/events/rpc, meter: pro3em, format: shelly_gen2}
  - {name: shelly-status, broker: site, topic: shellypro3em-b/status/+, meter: pro3em-b, format: shelly_gen2}
  - name: plc
    broker: site
    topic: plc/+/data
    meter_level: 2
    format: json
    values:
      power_active_total: {path: P, scale: 1000}
      energy_import_total: E.imp
      voltage_l1: V.0
    timestamp: {path: ts}
  - {name: heat, broker: site, topic: mbus/heat/energy, meter: heat, format: value, scale: 1000}
""", ["kitchen", "panel", "pro3em", "pro3em-b", "plc1", "plc2", "plc3", "plc4", "heat"])
    src = source(cfg)
    task, stop = await running(src, queue)
    pub = Publisher(broker)
    try:
        pub.publish("tele/kitchen/SENSOR", json.dumps(TASMOTA_1P))
        pub.publish("tele/panel/SENSOR", json.dumps(TASMOTA_3P))
        pub.publish("shellypro3em-a/events/rpc", json.dumps(SHELLY_NOTIFY))
        pub.publish("shellypro3em-a/events/rpc", json.dumps({"method": "NotifyStatus", "params": {
            "ts": 1782907211.0, "sys": {"uptime": 5}}}))  # another component: ignored, not refused
        pub.publish("shellypro3em-b/status/em:0", json.dumps(SHELLY_NOTIFY["params"]["em:0"]))
        pub.publish("shellypro3em-b/status/sys", json.dumps({"uptime": 7}))
        pub.publish("plc/plc1/data", json.dumps({"P": 1.5, "E": {"imp": 1e6}, "V": [230.5],
                                                 "ts": "2026-07-01T12:00:00+02:00"}))
        pub.publish("plc/plc2/data", json.dumps({"P": 1.5, "ts": "2026-07-01T12:00:00"}))  # no offset: the site's
        pub.publish("plc/plc3/data", json.dumps({"P": 2, "ts": 1782907200}))  # epoch seconds
        pub.publish("plc/plc4/data", json.dumps({"P": 2, "ts": 1782907200123}))  # epoch milliseconds
        before = round(time.time() * 1000)
        pub.publish("mbus/heat/energy", b" 1234.5\n")
        for meter in ("kitchen", "panel", "pro3em", "pro3em-b", "plc1", "plc2", "plc3", "plc4", "heat"):
            await wait_readings(queue, meter, 1)
    finally:
        pub.close()
        await stop_source(task, stop)

    (kitchen,) = await queued(queue, "kitchen")
    # Tasmota's Time has no offset: Dublin summer time (UTC+1), so 11:00:05 UTC.
    assert kitchen.ts_ms == 1782903605000
    assert kitchen.values == {Q.ENERGY_IMPORT_TOTAL: 1234567.0, Q.POWER_ACTIVE_TOTAL: 1500.0,
                              Q.POWER_APPARENT_TOTAL: 1600.0, Q.POWER_REACTIVE_TOTAL: 556.0,
                              Q.POWER_FACTOR_TOTAL: 0.94, Q.VOLTAGE_L1: 231.0, Q.CURRENT_L1: 6.93}
    (panel,) = await queued(queue, "panel")
    assert panel.values == {Q.ENERGY_IMPORT_TOTAL: 50500.0, Q.POWER_ACTIVE_L1: 100, Q.POWER_ACTIVE_L2: 200,
                            Q.POWER_ACTIVE_L3: 300, Q.VOLTAGE_L1: 230, Q.VOLTAGE_L2: 231, Q.VOLTAGE_L3: 232,
                            Q.CURRENT_L1: 0.5, Q.CURRENT_L2: 0.9, Q.CURRENT_L3: 1.3, Q.POWER_FACTOR_L1: 0.9,
                            Q.POWER_FACTOR_L2: 0.95, Q.POWER_FACTOR_L3: 1.0, Q.FREQUENCY: 50}
    (pro,) = await queued(queue, "pro3em")
    assert pro.ts_ms == 1782907210210
    assert pro.values[Q.POWER_ACTIVE_TOTAL] == 2551.2 and pro.values[Q.POWER_FACTOR_L3] == -0.97
    assert pro.values[Q.ENERGY_IMPORT_TOTAL] == 6000.75 and pro.values[Q.ENERGY_EXPORT_L3] == 5.5
    assert Q.CURRENT_N not in pro.values, "null means not measured"
    assert len(pro.values) == 15 + 3 + 8  # per phase 5 x 3, frequency and two totals; eight energies
    (pro_b,) = await queued(queue, "pro3em-b")
    assert pro_b.values[Q.VOLTAGE_L2] == 235.0 and Q.ENERGY_IMPORT_TOTAL not in pro_b.values
    (plc1,) = await queued(queue, "plc1")
    assert plc1.ts_ms == 1782900000000  # 12:00 at +02:00
    assert plc1.values == {Q.POWER_ACTIVE_TOTAL: 1500.0, Q.ENERGY_IMPORT_TOTAL: 1e6, Q.VOLTAGE_L1: 230.5}
    assert (await queued(queue, "plc2"))[0].ts_ms == 1782903600000  # 12:00 Dublin = 11:00 UTC
    assert (await queued(queue, "plc3"))[0].ts_ms == 1782907200000
    assert (await queued(queue, "plc4"))[0].ts_ms == 1782907200123
    (heat,) = await queued(queue, "heat")
    assert heat.values == {Q.VALUE: 1234500.0} and heat.ts_ms >= before - 1000
    counts = src.subscriptions()
    assert counts["shelly-rpc"]["ignored"] == 1 and counts["shelly-status"]["ignored"] == 1
    assert not any(c.get("bad") for c in counts.values()), counts


# ---------------------------------------------------------------- bad messages


BAD: list[tuple[str, bytes, str]] = [
    ("plc/plc1/data", b"\xff\xfe not text", "not_json"),
    ("plc/plc1/data", b"{\"P\": 1", "not_json"),
    ("plc/plc1/data", b"[" * 100_000 + b"]" * 100_000, "too_large"),
    ("plc/plc1/data", json.dumps({"P": "1.5"}).encode(), "wrong_type"),
    ("plc/plc1/data", json.dumps({"P": True}).encode(), "wrong_type"),
    ("plc/plc1/data", b'{"P": NaN}', "not_finite"),
    ("plc/plc1/data", b'{"P": Infinity}', "not_finite"),
    ("plc/plc1/data", json.dumps({"Q": 1}).encode(), "missing_fields"),
    ("plc/plc1/data", json.dumps({"P": 1, "ts": "yesterday"}).encode(), "bad_timestamp"),
    ("plc/plc1/data", json.dumps({"P": 1, "ts": 12}).encode(), "bad_timestamp"),
    ("plc/ghost/data", json.dumps({"P": 1, "ts": 1782907200}).encode(), "unknown_meter"),
    ("plc/plc1/data", b"[" * 5000 + b"]" * 5000, "too_deep"),
]


async def test_bad_messages_are_counted_logged_once_per_reason_and_never_queued(
        broker: Mosquitto, queue: DiskQueue) -> None:
    cfg = config(broker, """\
  - name: plc
    broker: site
    topic: plc/+/data
    meter_level: 2
    values: {power_active_total: P}
    timestamp: {path: ts}
""", ["plc1"])
    src = source(cfg)
    task, stop = await running(src, queue)
    pub = Publisher(broker)
    try:
        with structlog.testing.capture_logs() as logs:
            for i, (topic, payload, _) in enumerate(BAD):
                pub.publish(topic, payload)
                pub.publish("plc/plc1/data", json.dumps({"P": i, "ts": 1782907200 + i}))
            for topic, payload, _ in BAD:  # each reason a second time: counted, not logged again at once
                pub.publish(topic, payload)
            await wait_readings(queue, "plc1", len(BAD))
            await until(lambda: src.subscriptions()["plc"]["bad"] == 2 * len(BAD))
    finally:
        pub.close()
        await stop_source(task, stop)
    readings = await queued(queue, "plc1")
    assert [r.values[Q.POWER_ACTIVE_TOTAL] for r in readings] == [float(i) for i in range(len(BAD))]
    counts = src.subscriptions()["plc"]
    for _, _, reason in BAD:
        assert counts[reason] == 2 * sum(1 for b in BAD if b[2] == reason), (reason, counts)
    refused = [e for e in logs if e["event"] == "message refused: nothing of it is queued"]
    assert sorted(e["reason"] for e in refused) == sorted({b[2] for b in BAD})
    text = json.dumps(logs, default=str)
    assert "not text" not in text and "yesterday" not in text, "payloads never reach the log"


# ---------------------------------------------------------------- sessions, restarts


async def test_messages_published_while_the_gateway_is_away_are_delivered_when_it_returns(
        broker: Mosquitto, queue: DiskQueue) -> None:
    cfg = config(broker, "  - {name: heat, broker: site, topic: heat/value, meter: heat, format: value}\n",
                 ["heat"])
    task, stop = await running(source(cfg), queue)
    await stop_source(task, stop)  # the session (and its QoS 1 subscription) stays at the broker
    pub = Publisher(broker)
    for i in range(50):
        assert pub.publish("heat/value", str(i))
        await asyncio.sleep(0.002)  # distinct arrival times
    pub.close()
    task, stop = await running(source(cfg), queue)
    try:
        readings = await wait_readings(queue, "heat", 50)
    finally:
        await stop_source(task, stop)
    assert sorted(r.values[Q.VALUE] for r in readings) == [float(i) for i in range(50)]


async def test_a_broker_restart_mid_stream_loses_no_message_the_broker_accepted(
        broker: Mosquitto, queue: DiskQueue) -> None:
    cfg = config(broker, """\
  - {name: plc, broker: site, topic: plc/+/data, meter_level: 2, values: {power_active_total: n},
     timestamp: {path: ts}}
""", ["plc1"])
    src = source(cfg)
    task, stop = await running(src, queue)
    device = NumberedDevice(broker, "device-restart", pause=0.01, timeout=2)
    with structlog.testing.capture_logs() as logs:
        device.start()
        await asyncio.sleep(1.0)
        broker.stop()
        await asyncio.sleep(1.0)
        broker.start()
        await until(lambda: src._connected, within=20)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(device.stop)
        accepted = device.accepted
        try:
            readings = await wait_readings(queue, "plc1", len(accepted), within=20)
        finally:
            await stop_source(task, stop)
    got = {int(r.values[Q.POWER_ACTIVE_TOTAL]) for r in readings}
    missing = sorted(set(accepted) - got)
    assert not missing, f"accepted by the broker but not queued: {missing}"
    events = [e["event"] for e in logs]
    assert events.count("broker connection lost: reconnecting (the broker keeps our messages)") == 1
    assert events.count("broker connection back") == 1
    back = max(accepted)
    assert any(int(r.values[Q.POWER_ACTIVE_TOTAL]) > back - 10 for r in readings), "reading again after it came back"


async def test_a_refused_password_is_logged_once_without_the_password(broker: Mosquitto, queue: DiskQueue) -> None:
    cfg = config(broker, "  - {name: heat, broker: site, topic: heat/value, meter: heat, format: value}\n",
                 ["heat"], password="wrong-pass-123")
    src = source(cfg)
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(src.run(queue.append, stop))
        await asyncio.sleep(3.5)  # several reconnection attempts
        stop.set()
        await asyncio.wait_for(task, 10)
    refused = [e for e in logs if e["event"].startswith("broker refused the connection")]
    assert len(refused) == 1 and refused[0]["log_level"] == "error"
    assert "wrong-pass-123" not in json.dumps(logs, default=str)


# ---------------------------------------------------------------- read, check


async def _cli(*args: str) -> tuple[int, str, str]:
    import sys

    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()


async def test_read_waits_for_the_next_message_of_an_mqtt_meter_and_check_shows_the_mapping(
        broker: Mosquitto, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"""\
site: {{timezone: {TZ}}}
brokers:
  - {{name: site, host: 127.0.0.1, port: {broker.port}, ca_file: {broker.ca_file}, username: gateway,
     password: {broker.users['gateway']}}}
subscriptions:
  - {{name: plugs, broker: site, topic: tele/+/SENSOR, meter_level: 2, format: tasmota}}
meters: [{{name: kitchen, type: mqtt}}]
sinks: [{{name: out, type: stdout}}]
""")
    rc, out, err = await _cli("check", "-c", str(path))
    assert rc == 0, err
    assert f"site                 127.0.0.1:{broker.port}, TLS (CA {broker.ca_file}), user gateway" in out
    assert "plugs                tele/+/SENSOR on site, QoS 1, for the meter named by topic level 2; tasmota" in out

    async def publish_soon() -> None:
        await asyncio.sleep(2.0)
        pub = Publisher(broker, "plug")
        pub.publish("tele/kitchen/SENSOR", json.dumps(TASMOTA_1P))
        pub.close()

    publishing = asyncio.create_task(publish_soon())
    rc, out, err = await _cli("read", "-c", str(path), "--meter", "kitchen", "--timeout", "20")
    await publishing
    assert rc == 0, out + err
    assert "kitchen  (published to a broker): message of 2026-07-01T11:00:05.000Z" in out
    assert "  power_active_total               1500.0 W" in out
    assert broker.users["gateway"] not in out + err


def test_a_subscription_that_names_no_meter_or_a_bad_filter_is_a_config_error(broker: Mosquitto) -> None:
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        config(broker, """\
  - {name: a, broker: site, topic: tele/+/SENSOR, format: tasmota}
  - {name: b, broker: other, topic: "tele/x#/SENSOR", meter: kitchen, format: tasmota}
  - {name: c, broker: site, topic: plc/data, meter: plc, format: json}
""", ["kitchen"])
    text = "\n".join(e.value.problems)
    assert "subscriptions[a].meter: give meter (the meter of every message) or meter_level" in text
    assert "subscriptions[b].broker: no broker named 'other' (defined: site)" in text
    assert "subscriptions[b].topic: 'tele/x#/SENSOR' is not a valid filter" in text
    assert "subscriptions[c].meter: no meter named 'plc' of type mqtt" in text
    assert "subscriptions[c].values: required for format: json" in text
    with pytest.raises(ConfigError) as e:
        config(broker, "  - {name: v, broker: site, topic: a/b, meter: gas, format: value}\n", ["gas"])
    assert "subscriptions[v].meter: meter 'gas' gets a single value: give it value_unit" in "\n".join(e.value.problems)



HEAT = """\
subscriptions: [{name: heat, broker: site, topic: heat/value, meter: heat, format: value}]
meters: [{name: heat, type: mqtt, value_unit: kWh}]
sinks: [{name: out, type: stdout}]
"""


async def one_value(broker_line: str, pub: Publisher, queue: DiskQueue) -> tuple[GatewayConfig, Reading]:
    """The reading a heat meter's plain-number message becomes, through the broker ``broker_line`` describes."""
    cfg = load_config_text(f"brokers: [{broker_line}]\n{HEAT}", "heat.yaml")
    task, stop = await running(source(cfg), queue)
    try:
        pub.publish("heat/value", "42.5")
        (reading,) = await wait_readings(queue, "heat", 1)
    finally:
        pub.close()
        await stop_source(task, stop)
    return cfg, reading


def _need_mosquitto() -> None:
    from tests.helpers.mosquitto import MOSQUITTO

    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (CI installs it)")


async def test_a_broker_without_tls(tmp_path: Path, queue: DiskQueue) -> None:
    _need_mosquitto()
    with Mosquitto(tmp_path / "plain", tls=False).start() as b:
        cfg, reading = await one_value(
            f"{{name: site, host: 127.0.0.1, port: {b.port}, username: gateway, password: {b.users['gateway']}}}",
            Publisher(b, "plain-device"), queue)
    assert not cfg.brokers[0].uses_tls and reading.values == {Q.VALUE: 42.5}


async def test_a_broker_that_requires_a_client_certificate(tmp_path: Path, queue: DiskQueue) -> None:
    _need_mosquitto()
    with Mosquitto(tmp_path / "mtls", require_client_cert=True).start() as b:
        _, reading = await one_value(
            f"{{name: site, host: 127.0.0.1, port: {b.port}, ca_file: {b.ca_file}, client_cert: {b.client_cert},"
            f" client_key: {b.client_key}, username: gateway, password: {b.users['gateway']}}}",
            Publisher(b, "mtls-device", client_cert=True), queue)
    assert reading.values == {Q.VALUE: 42.5}


async def test_an_unreachable_broker_is_logged_once(queue: DiskQueue) -> None:
    from tests.helpers.mosquitto import free_port

    cfg = load_config_text(f"""\
brokers: [{{name: site, host: 127.0.0.1, port: {free_port()}}}]
subscriptions: [{{name: heat, broker: site, topic: heat/value, meter: heat, format: value}}]
meters: [{{name: heat, type: mqtt, value_unit: kWh}}]
sinks: [{{name: out, type: stdout}}]
""", "down.yaml")
    src = source(cfg)
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(src.run(queue.append, stop))
        await asyncio.sleep(3.5)  # several attempts, with backoff
        await stop_source(task, stop)
    assert [e["event"] for e in logs] == ["cannot reach the broker: retrying (messages wait at the broker)"]


async def test_qos0_messages_beyond_the_inbox_limit_are_dropped_counted_and_logged(
        broker: Mosquitto, queue: DiskQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.platforms.mqtt.source as source_module

    monkeypatch.setattr(source_module, "INBOX_LIMIT", 5)
    cfg = config(broker, "  - {name: heat, broker: site, topic: heat/value, meter: heat, format: value, qos: 0}\n",
                 ["heat"])
    src = source(cfg)
    gate = asyncio.Event()

    async def slow_emit(readings: list[Reading], prompt: bool = True) -> object:  # a disk that stalls
        await gate.wait()
        return await queue.append(readings)

    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(src.run(slow_emit, stop))  # type: ignore[arg-type]
        await until(lambda: src._connected, within=10)
        await asyncio.sleep(0.3)
        pub = Publisher(broker, "qos0-device")
        for i in range(50):
            pub.publish("heat/value", str(i), qos=0)
        pub.close()
        await asyncio.sleep(0.5)
        gate.set()
        await until(lambda: src.subscriptions()["heat"].get("readings", 0) + src.dropped == 50)
        await stop_source(task, stop)
    assert src.dropped > 0
    assert len(await queued(queue, "heat")) == 50 - src.dropped
    dropped = [e for e in logs if e["event"].startswith("QoS 0 messages dropped")]
    assert dropped and dropped[0]["log_level"] == "warning"
