"""A device whose clock says 2099: its readings are refused (counted, logged once, reported by status and /health)
instead of blocking its meter for good; and a queue that already holds one is mended with ``future --move``.
Against a real broker, the real daemon and its command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gateway.quantities import Quantity as Q
from gateway.queue import QueueStore
from gateway.reading import Reading
from tests.helpers.daemon import Daemon, read_jsonl
from tests.helpers.mosquitto import Mosquitto, free_port
from tests.test_mqtt_source import Publisher

Y2099 = 4_070_908_800  # 2099-01-01 in epoch seconds


def write_config(tmp_path: Path, broker: Mosquitto, port: int) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"""\
state_dir: {tmp_path / 'state'}
time_sync: ignore
monitoring: {{enabled: true, port: {port}}}
brokers:
  - {{name: site, host: 127.0.0.1, port: {broker.port}, ca_file: {broker.ca_file}, username: gateway,
     password: {broker.users['gateway']}, client_id: gw-future-test}}
subscriptions:
  - {{name: plc, broker: site, topic: plc/+/data, meter_level: 2, values: {{power_active_total: n}},
     timestamp: {{path: ts}}}}
meters: [{{name: plc1, type: mqtt}}]
sinks: [{{name: archive, type: file, path: {tmp_path / 'archive.jsonl'}}}]
""")
    return path


def archived(tmp_path: Path, n: int) -> list[float]:
    """The archive's power values once it holds ``n`` readings (or after 10 s)."""
    deadline = time.monotonic() + 10
    while len(rows := read_jsonl(tmp_path / "archive.jsonl")) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return [r["values"]["power_active_total"] for r in rows]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60)


def test_a_reading_stamped_in_2099_is_refused_and_the_meter_goes_on(broker: Mosquitto, tmp_path: Path) -> None:
    port = free_port()
    path = write_config(tmp_path, broker, port)
    pub = Publisher(broker, "clockless")
    try:
        with Daemon(path).start() as d:
            d.wait_log(lambda e: e.get("event") == "broker connected")
            time.sleep(0.3)
            now = int(time.time())
            pub.publish("plc/plc1/data", json.dumps({"n": 1, "ts": now - 2}))
            pub.publish("plc/plc1/data", json.dumps({"n": 2, "ts": Y2099}))
            pub.publish("plc/plc1/data", json.dumps({"n": 3, "ts": now - 1}))
            d.wait_log(lambda e: e.get("event") == "readings of this meter are no longer ahead of the clock")
            health = httpx.get(f"http://127.0.0.1:{port}/health")
            shown = cli("status", "-c", str(path)).stdout
            archived(tmp_path, 2)
            d.stop()
    finally:
        pub.close()
    assert archived(tmp_path, 2) == [1.0, 3.0]
    assert health.status_code == 503
    assert [p["check"] for p in health.json()["problems"]] == ["meter_clock_ahead"]
    assert "1 readings refused: stamped in the future" in shown
    refusals = [e for e in d.events() if e.get("event", "").startswith("reading refused: stamped in the future")]
    assert len(refusals) == 1 and refusals[0]["level"] == "warning" and "2099-01-01" in refusals[0]["reason"]


def test_a_queue_already_holding_a_reading_from_2099_is_mended_with_future_move(
        broker: Mosquitto, tmp_path: Path) -> None:
    path = write_config(tmp_path, broker, free_port())
    # A queue written before the gateway refused such readings: the meter's last reading is in 2099.
    store = QueueStore(tmp_path / "state" / "queue.db")
    store.open()
    store.begin()
    store.configure({"archive": ["plc1"]})
    now_ms = int(time.time() * 1000)
    store.append([Reading("plc1", now_ms - 5000, {Q.POWER_ACTIVE_TOTAL: 1.0}),
                  Reading("plc1", Y2099 * 1000, {Q.POWER_ACTIVE_TOTAL: 2.0})])
    store.commit()
    store.close()
    listed = cli("future", "-c", str(path))
    assert listed.returncode == 0 and "plc1: 1 queued reading(s) stamped in the future: 2099-01-01" in listed.stdout
    moved = cli("future", "-c", str(path), "--move")
    letters = cli("deadletter", "-c", str(path), "list")
    pub = Publisher(broker, "clockless")
    try:
        with Daemon(path).start() as d:
            refused_while_running = cli("future", "-c", str(path), "--move")
            d.wait_log(lambda e: e.get("event") == "broker connected")
            time.sleep(0.3)
            pub.publish("plc/plc1/data", json.dumps({"n": 3, "ts": int(time.time()) - 1}))
            archived(tmp_path, 2)
            d.stop()
    finally:
        pub.close()
    assert refused_while_running.returncode == 1 and "already runs on" in refused_while_running.stderr
    assert moved.returncode == 0 and "plc1: 1 reading(s) moved to the dead letters" in moved.stdout
    assert "meter=plc1 ts=2099-01-01" in letters.stdout and "device's clock was wrong" in letters.stdout
    assert archived(tmp_path, 2) == [1.0, 3.0]
