"""MQTT source throughput: messages/s from a local publisher through decoding into the durable queue.

    python tests/bench/mqtt_source_bench.py [--quick] [--messages N]

A mosquitto broker on loopback (started here, plain TCP); a publisher in its own process sends N JSON messages with
QoS 1 as fast as the broker takes them. Measured from the first message received to the last one handled:

- gateway: the MQTT source (persistent session, QoS 1, acknowledged after commit), decoding each message with a
  JSON mapping and its own timestamp, committing readings to the on-disk queue (durability full);
- bare paho: a paho subscriber that only counts messages (QoS 1, acknowledged by paho at once): the limit of broker
  and client on this machine.

Also the gateway process's CPU time per message. Target: the gateway at least 0.5 of the bare subscriber.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import load_config_text
from gateway.logs import configure
from gateway.platforms.mqtt.source import MqttSource
from gateway.queue import DiskQueue, QueueStore
from tests.helpers.mosquitto import Mosquitto

TOPIC = "plant/meter-{n}/data"
METERS = 8
BASE = 1_782_907_200_000


def payload(i: int) -> bytes:
    # Tasmota-sized: a few numbers and a timestamp, one message per meter in turn.
    return json.dumps({"ts": BASE + (i // METERS) * 10, "P": 1000 + i % 997, "Q": 120.5, "V": [230.1, 229.8, 231.0],
                       "E": {"imp": 1_000_000 + i, "exp": 12.5}}).encode()


def publish(port: int, n: int, user: str, password: str) -> None:
    """Child process: publish n messages with QoS 1, then wait for every acknowledgement."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    c.username_pw_set(user, password)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = [c.publish(TOPIC.format(n=i % METERS), payload(i), qos=1) for i in range(n)]
    for info in infos:
        info.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


def start_publisher(broker: Mosquitto, n: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--publish", str(broker.port), str(n),
                             broker.users["watcher"]])


def bench_bare(broker: Mosquitto, n: int, backlog: bool) -> float:
    """Live: the publisher runs while the subscriber counts. Backlog: n messages wait at the broker for the
    subscriber's persistent session, which then drains them."""
    got = 0
    first = last = 0.0
    done = threading.Event()
    subscribed = threading.Event()
    client_id = f"bench-bare-{'backlog' if backlog else 'live'}"
    if backlog:
        c0 = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c0.username_pw_set("gateway", broker.users["gateway"])
        c0.on_subscribe = lambda *a: subscribed.set()
        c0.on_connect = lambda cl, u, f, rc, p: cl.subscribe("plant/+/data", qos=1)
        c0.connect("127.0.0.1", broker.port)
        c0.loop_start()
        subscribed.wait(10)
        c0.disconnect()
        c0.loop_stop()
        start_publisher(broker, n).wait(300)

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal got, first, last
        if got == 0 and not backlog:
            first = time.perf_counter()
        got += 1
        if got == n:
            last = time.perf_counter()
            done.set()

    subscribed.clear()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not backlog)
    c.username_pw_set("gateway", broker.users["gateway"])
    c.on_message = on_message
    c.on_subscribe = lambda *a: subscribed.set()

    def on_connect(cl: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
        nonlocal first
        if backlog:  # the backlog flows from the connection on: time it from there, as for the gateway
            first = time.perf_counter()
        cl.subscribe("plant/+/data", qos=1)

    c.on_connect = on_connect
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    subscribed.wait(10)
    if not backlog:
        start_publisher(broker, n).wait(300)
    done.wait(300)
    c.disconnect()
    c.loop_stop()
    return n / (last - first)


async def bench_gateway(broker: Mosquitto, n: int, state: Path, backlog: bool) -> tuple[float, float, int]:
    cfg = load_config_text(f"""\
brokers: [{{name: site, host: 127.0.0.1, port: {broker.port}, username: gateway,
           password: {broker.users['gateway']}, client_id: bench-gateway-{'backlog' if backlog else 'live'}}}]
subscriptions:
  - name: plant
    broker: site
    topic: plant/+/data
    meter_level: 2
    values: {{power_active_total: P, power_reactive_total: Q, voltage_l1: V.0, voltage_l2: V.1, voltage_l3: V.2,
              energy_import_total: E.imp, energy_export_total: E.exp}}
    timestamp: {{path: ts}}
meters: [{", ".join(f"{{name: meter-{i}, type: mqtt}}" for i in range(METERS))}]
sinks: [{{name: out, type: stdout}}]
""", "bench.yaml")
    queue = DiskQueue(QueueStore(state / f"queue-{backlog}.db", durability="full", max_size=10**10))
    await queue.start()
    meters = {f"meter-{i}" for i in range(METERS)}

    connected_at: list[tuple[float, float]] = []

    async def started() -> tuple[MqttSource, asyncio.Event, asyncio.Task[None]]:
        src = MqttSource(cfg.brokers[0], list(cfg.subscriptions), meters, ZoneInfo("UTC"))
        src.on_change = lambda: connected_at.append((time.perf_counter(), time.process_time()))
        stop = asyncio.Event()
        task = asyncio.create_task(src.run(queue.append, stop))
        while not src._connected:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # subscribed
        return src, stop, task

    src, stop, task = await started()
    if backlog:  # the session and its subscription stay at the broker while the gateway is away
        stop.set()
        await task
        await asyncio.to_thread(start_publisher(broker, n).wait, 300)
        connected_at.clear()
        src, stop, task = await started()
        first, cpu0 = connected_at[0]
    else:
        proc = start_publisher(broker, n)
    if not backlog:
        first = cpu0 = 0.0
    while True:
        c = src.subscriptions()["plant"]
        if first == 0.0 and c.get("messages"):
            first, cpu0 = time.perf_counter(), time.process_time()
        if c.get("readings", 0) + c.get("bad", 0) >= n:
            break
        await asyncio.sleep(0.005)
    await queue.flush()
    elapsed, cpu = time.perf_counter() - first, time.process_time() - cpu0
    if not backlog:
        proc.wait(60)
    counted = 0
    for i in range(METERS):
        counted += len(await queue.read(f"meter-{i}", -1, n))
    stop.set()
    await task
    await queue.stop()
    return n / elapsed, cpu / n, counted


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="under 30 s")
    ap.add_argument("--messages", type=int, default=0)
    ap.add_argument("--publish", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.publish:
        port, n, password = args.publish
        publish(int(port), int(n), "watcher", password)
        return
    configure("error", "json")
    n = args.messages or (8_000 if args.quick else 80_000)
    result: dict[str, object] = {"bench": "mqtt_source", "messages": n}
    print(f"{n} messages, {METERS} meters, QoS 1, mosquitto on loopback (plain TCP)")
    print(f"{'':<10} {'gateway msg/s':>14} {'bare paho msg/s':>16} {'ratio':>6} {'gateway CPU/msg':>16}")
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker", tls=False).start() as broker:
        for mode, backlog in (("live", False), ("backlog", True)):
            bare = bench_bare(broker, n, backlog)
            gw, cpu_per_msg, counted = asyncio.run(bench_gateway(broker, n, Path(tmp), backlog))
            assert counted == n, f"{counted} readings queued for {n} messages"
            print(f"{mode:<10} {gw:>14,.0f} {bare:>16,.0f} {gw / bare:>6.2f} {cpu_per_msg * 1e6:>13.0f} us")
            result |= {f"{mode}_gateway_per_s": round(gw), f"{mode}_bare_per_s": round(bare),
                       f"{mode}_ratio": round(gw / bare, 3), f"{mode}_cpu_us_per_message": round(cpu_per_msg * 1e6)}
    print("live: the publisher runs meanwhile (it may be the limit); backlog: the messages waited at the broker for"
          " the persistent session, then were drained (the subscriber side is the limit). Target: ratio >= 0.5")
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
