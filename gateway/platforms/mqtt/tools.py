"""``meter-gateway read --meter NAME`` for a meter that publishes to a broker, and what ``check`` shows of MQTT.

``read`` subscribes with a client of its own (a clean session under another client id), so it never takes a message
from the running daemon's session: the broker gives each subscriber its own copy.
"""

from __future__ import annotations

import asyncio
import os
import time
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt

from gateway.config.models import GatewayConfig
from gateway.platforms.mqtt.config import BrokerConfig, MqttMeterConfig, SubscriptionConfig
from gateway.platforms.mqtt.formats import refusal_reasons
from gateway.platforms.mqtt.source import MqttSource, make_client
from gateway.reading import Reading


def subscriptions_of(config: GatewayConfig, meter: str) -> list[SubscriptionConfig]:
    """The subscriptions that can carry this meter's messages."""
    return [s for s in config.subscriptions if s.meter == meter or s.meter_level is not None]


async def read_mqtt(config: GatewayConfig, meter: MqttMeterConfig, within: float) -> tuple[Reading | None, list[str]]:
    """The next message for ``meter`` as a reading, or None and what went wrong (refused messages, no message)."""
    loop = asyncio.get_running_loop()
    found: asyncio.Future[Reading] = loop.create_future()
    problems: list[str] = []
    tz = ZoneInfo(config.site.timezone)
    meters = {m.name for m in config.meters if isinstance(m, MqttMeterConfig)}
    brokers = {b.name: b for b in config.brokers}
    subs = subscriptions_of(config, meter.name)
    if not subs:
        return None, [f"no subscription carries meter '{meter.name}' (give one with meter: {meter.name}, or a"
                      " meter_level)"]
    clients = []
    sources = []
    for broker_name in {s.broker for s in subs}:
        broker: BrokerConfig = brokers[broker_name]
        mine = [s for s in subs if s.broker == broker_name]
        # Decoded exactly as the daemon decodes (topic matching, size limit, formats); never run, only asked.
        source = MqttSource(broker, mine, meters, tz)
        sources.append(source)
        client = make_client(broker, f"{broker.effective_client_id}-read-{os.getpid()}", clean=True,
                             manual_ack=False)

        def on_connect(c: mqtt.Client, u: object, f: object, reason: object, p: object,
                       mine: list[SubscriptionConfig] = mine,
                       where: str = f"{broker.host}:{broker.effective_port}") -> None:
            if getattr(reason, "is_failure", False):
                loop.call_soon_threadsafe(problems.append, f"broker {where} refused the connection: {reason}")
                return
            c.subscribe([(s.topic, 1) for s in mine])

        def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage, source: MqttSource = source) -> None:
            for name, ts, values in source.decode(msg):
                if name == meter.name:
                    stamp = round(time.time() * 1000) if ts is None else ts
                    loop.call_soon_threadsafe(_resolve, found, Reading(name, stamp, values))

        client.on_connect = on_connect
        client.on_message = on_message
        client.connect_async(broker.host, broker.effective_port, keepalive=round(broker.keepalive))
        client.loop_start()
        clients.append(client)
    try:
        reading: Reading | None = await asyncio.wait_for(found, within)
    except TimeoutError:
        reading = None
        problems.append(f"no message for {meter.name} within {within:g}s (topics: {', '.join(s.topic for s in subs)})")
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
    for source in sources:
        for name, counts in source.subscriptions().items():
            if counts.get("bad"):
                problems.insert(0, f"{name}: {counts['bad']} message(s) refused ({refusal_reasons(counts)})")
    return reading, problems


def _resolve(fut: asyncio.Future[Reading], reading: Reading) -> None:
    if not fut.done():
        fut.set_result(reading)


def describe_subscription(s: SubscriptionConfig) -> str:
    who = f"meter {s.meter}" if s.meter else f"the meter named by topic level {s.meter_level}"
    what: str = s.format
    if s.format == "json" and s.values:
        what += ": " + ", ".join(f"{q.value} <- {m.path}" + (f" x{m.scale:g}" if m.scale != 1 else "")
                                 + (f" {m.offset:+g}" if m.offset else "") for q, m in s.values.items())
        what += f"; time from {s.timestamp.path}" if s.timestamp else "; time of arrival"
    elif s.format == "value":
        what += f": {(s.quantity.value if s.quantity else 'value')}" + (f" x{s.scale:g}" if s.scale != 1 else "")
    return f"{s.topic} on {s.broker}, QoS {s.qos}, for {who}; {what}"


def describe_broker(b: BrokerConfig) -> str:
    tls = "TLS" + (f" (CA {b.ca_file})" if b.ca_file else " (system CAs)") if b.uses_tls else "no TLS"
    user = f", user {b.username}" if b.username else ""
    return f"{b.host}:{b.effective_port}, {tls}{user}, client id {b.effective_client_id} (persistent session)"
