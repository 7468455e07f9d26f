"""This gateway's presence and health on the fleet broker (see :mod:`gateway.fleet` for the topics).

One paho client, its network loop in paho's thread (:mod:`gateway.pahobridge`), everything else on the event loop.
The health document is computed from the report ``status`` and ``/health`` use, every ``min_gap``; it is
published when what it says changed (a problem, a platform failing, a meter's availability, the clock) or every
``health_every``, so a flapping meter costs at most one message per ``min_gap``. A broker that is down or refuses
the gateway changes nothing else: the gateway goes on reading and delivering, logs the state once, and ``status``
shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import __version__
from gateway.config import GatewayConfig
from gateway.fleet.config import FleetConfig
from gateway.health import evaluate
from gateway.pahobridge import LoopCaller, new_client
from gateway.reading import iso_utc

log = structlog.get_logger("gateway.fleet")

Snapshot = Callable[[], Awaitable[dict[str, Any]]]

#: How long a clean stop waits for the broker to take the ``offline`` state.
GOODBYE_TIMEOUT = 3.0
#: With MQTT 5, a meter's retained availability lives this many ``health_every`` at the broker unless refreshed.
AVAILABILITY_LIFE = 2.5


def meter_availability(row: dict[str, Any]) -> str:
    """``online``: the meter gives readings; ``offline``: it fails; ``unknown``: nothing read yet."""
    if row.get("failing"):
        return "offline"
    return "online" if row.get("last_reading_ms") is not None else "unknown"


def health_document(report: dict[str, Any], problems: list[dict[str, Any]], gateway_id: str,
                    now: float) -> dict[str, Any]:
    """What the fleet sees of this gateway: the ``/health`` evaluation and the figures behind it. Built from the
    status report's own fields only (errors in it are already scrubbed of secrets)."""
    sinks = {name: {"depth": s["depth"], "oldest_age_s": s["oldest_age_s"], "last_delivery_ms": s["last_delivery_ms"],
                    "failing": s["failing"], "dead_letters": s["dead_letters"]}
             for name, s in report["sinks"].items()}
    clock = report.get("clock") or {}
    return {
        "gateway": gateway_id,
        "ts": iso_utc(int(now * 1000)),
        "version": __version__,
        "status": "attention" if problems else "ok",
        # The first problem is the worst: /health lists platforms, then buses and meters, then the machine.
        "worst": problems[0]["check"] if problems else None,
        "problems": [{"check": p["check"], "detail": p["detail"]} for p in problems],
        "backlog": sum(s["depth"] for s in sinks.values()),
        "sinks": sinks,
        "clock": {"state": clock.get("state"), "trusted": clock.get("trusted", True)},
        "held": report.get("held", 0),
        "meters": {name: {"availability": meter_availability(m), "last_good_ms": m.get("last_reading_ms")}
                   for name, m in report["meters"].items()},
    }


def _significant(doc: dict[str, Any]) -> object:
    """What a change of is worth a message now; the figures (ages, depths) go out every ``health_every``."""
    return (doc["status"], [p["check"] for p in doc["problems"]], doc["clock"],
            sorted((n, s["failing"]) for n, s in doc["sinks"].items()),
            sorted((n, m["availability"]) for n, m in doc["meters"].items()))


class Presence:
    def __init__(self, config: GatewayConfig, snapshot: Snapshot) -> None:
        assert config.fleet is not None
        self.fleet: FleetConfig = config.fleet
        self.gateway_id = config.gateway_id
        self.base = f"{self.fleet.prefix}/{self.gateway_id}"
        self.monitoring = config.monitoring
        self.meters = config.meter_names
        self.snapshot = snapshot
        self.started = time.time()
        self.connected = False
        self.last_error: str | None = None
        self.published = 0
        self._client: mqtt.Client | None = None
        self._caller = LoopCaller()
        self._wake = asyncio.Event()
        self._force = False
        self._last_key: object = None
        self._last_sent = 0.0
        self._availability: dict[str, str] = {}
        self._expiring: Properties | None = None
        #: Called when the connection comes or goes (the daemon writes its heartbeat, so status shows it).
        self.on_change: Callable[[], None] = lambda: None
        #: With fleet.remote_config: called with each message on config/set.
        self.on_config: Callable[[bytes], None] | None = None
        #: The outcome of the last remote configuration, published on config/state (now, or at the next connect).
        self._config_state: bytes | None = None

    # ------------------------------------------------------------ what the daemon asks

    def health(self) -> dict[str, Any]:
        return {"broker": f"{self.fleet.host}:{self.fleet.effective_port}", "gateway_id": self.gateway_id,
                "connected": self.connected, "last_error": self.last_error, "published": self.published}

    def same_connection(self, config: GatewayConfig) -> bool:
        return config.fleet == self.fleet and config.gateway_id == self.gateway_id

    def update(self, config: GatewayConfig) -> None:
        """A reload with the same fleet settings: the meters may have changed. A meter no longer configured has its
        retained availability cleared (an empty retained message)."""
        gone = [m for m in self.meters if m not in config.meter_names]
        self.meters = config.meter_names
        self.monitoring = config.monitoring
        client = self._client
        for meter in gone:
            self._availability.pop(meter, None)
            if client is not None and self.connected:
                client.publish(self._meter_topic(meter), b"", qos=1, retain=True)
        self._force = True
        self._wake.set()

    # ------------------------------------------------------------ topics and payloads

    @property
    def state_topic(self) -> str:
        return f"{self.base}/state"

    @property
    def health_topic(self) -> str:
        return f"{self.base}/health"

    @property
    def config_topics(self) -> tuple[str, str]:
        return f"{self.base}/config/set", f"{self.base}/config/state"

    def publish_config_state(self, payload: bytes) -> None:
        self._config_state = payload
        client = self._client
        if client is not None and self.connected:
            client.publish(self.config_topics[1], payload, qos=1, retain=True)

    def _meter_topic(self, meter: str) -> str:
        return f"{self.base}/meters/{meter}/availability"

    def _state(self, state: str, **extra: object) -> bytes:
        return json.dumps({"state": state, "gateway": self.gateway_id, "version": __version__,
                           "started": iso_utc(int(self.started * 1000)), **extra}).encode()

    # ------------------------------------------------------------ the task

    async def run(self, stop: asyncio.Event) -> None:
        self._caller.bind()
        f = self.fleet
        v5 = f.mqtt_version == "5"
        client = new_client(f.effective_client_id(self.gateway_id), clean=True, tls=f.tls, ca_file=f.ca_file,
                            client_cert=f.client_cert, client_key=f.client_key, username=f.username,
                            password=f.password.get_secret_value() if f.password else None,
                            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311)
        if v5:
            # A meter's availability is refreshed with every health document and expires at the broker if the
            # gateway stops refreshing it: a gateway that died leaves no "online" behind for long.
            self._expiring = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            self._expiring.MessageExpiryInterval = int(AVAILABILITY_LIFE * f.health_every)
        client.will_set(self.state_topic, self._state("offline", reason="lost"), qos=1, retain=True)
        client.on_connect = lambda c, u, flags, rc, props: self._caller(self._on_connect, rc)
        client.on_connect_fail = lambda c, u: self._caller(self._on_trouble, "cannot connect")
        client.on_disconnect = lambda c, u, flags, rc, props: self._caller(self._on_disconnect, rc)
        client.on_message = lambda c, u, msg: self._caller(self._on_message, msg.topic, bytes(msg.payload))
        self._client = client
        if f.allow_insecure and (not f.tls or not f.username):
            log.warning("fleet broker without TLS or credentials (allow_insecure): for a test broker only",
                        broker=f.host)
        client.connect_async(f.host, f.effective_port, keepalive=int(f.keepalive))
        client.loop_start()
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                # Every min_gap (a change is found at the next look: at most one message per min_gap, however often
                # a meter flaps), or at once after a (re)connect or a reload.
                woken = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({stopped, woken}, timeout=f.min_gap, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                if stop.is_set():
                    break
                self._wake.clear()
                if self.connected:
                    await self._publish_health(client)
        finally:
            stopped.cancel()
            await self._goodbye(client)

    async def _publish_health(self, client: mqtt.Client) -> None:
        report = await self.snapshot()
        now = time.time()
        doc = health_document(report, evaluate(report, self.monitoring, now), self.gateway_id, now)
        key = _significant(doc)
        force, self._force = self._force, False
        refresh = time.monotonic() - self._last_sent >= self.fleet.health_every
        if force or key != self._last_key or refresh:
            client.publish(self.health_topic, json.dumps(doc, separators=(",", ":")).encode(), qos=1, retain=True)
            self._last_key, self._last_sent = key, time.monotonic()
            self.published += 1
        for meter, row in doc["meters"].items():
            value = row["availability"]
            # Expiring messages (MQTT 5) are refreshed with the periodic health document.
            if force or self._availability.get(meter) != value or (refresh and self._expiring is not None):
                client.publish(self._meter_topic(meter), value.encode(), qos=1, retain=True,
                               properties=self._expiring)
                self._availability[meter] = value
                self.published += 1

    async def _goodbye(self, client: mqtt.Client) -> None:
        """A clean stop: ``offline`` (reason ``stopped``) and every meter ``unknown``, then a disconnect, which the
        broker does not answer with the last will."""
        if self.connected:
            infos = [client.publish(self._meter_topic(m), b"unknown", qos=1, retain=True) for m in self.meters]
            infos.append(client.publish(self.state_topic, self._state("offline", reason="stopped",
                                                                      since=iso_utc(int(time.time() * 1000))),
                                        qos=1, retain=True))

            def wait() -> None:
                deadline = time.monotonic() + GOODBYE_TIMEOUT
                for info in infos:
                    info.wait_for_publish(max(0.0, deadline - time.monotonic()))

            with contextlib.suppress(Exception):  # a broker gone meanwhile: the last will says offline instead
                await asyncio.to_thread(wait)
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        self._client = None
        self.connected = False

    # ------------------------------------------------------------ paho's callbacks, on the event loop

    def _on_connect(self, rc: Any) -> None:
        if getattr(rc, "is_failure", False):
            self._on_trouble(f"refused: {rc}")
            return
        client = self._client
        if client is None:
            return
        self.connected = True
        if self.last_error is not None:
            log.info("fleet broker connected again", broker=self.fleet.host)
        else:
            log.info("fleet broker connected", broker=self.fleet.host, topic=self.base)
        self.last_error = None
        self.on_change()
        client.publish(self.state_topic, self._state("online", since=iso_utc(int(time.time() * 1000))), qos=1,
                       retain=True)
        self.published += 1
        if self._config_state is not None:
            client.publish(self.config_topics[1], self._config_state, qos=1, retain=True)
        if self.on_config is not None:
            client.subscribe(self.config_topics[0], qos=1)
        self._force = True  # the broker may hold a stale health document and meters set unknown at a stop
        self._wake.set()

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.config_topics[0] and self.on_config is not None:
            self.on_config(payload)

    def _on_disconnect(self, rc: Any) -> None:
        was = self.connected
        self.connected = False
        if was and self._client is not None:
            self._on_trouble(f"connection lost: {rc}")

    def _on_trouble(self, why: str) -> None:
        if why != self.last_error:
            self.on_change()
            log.warning("fleet broker unreachable; presence and health are not published meanwhile (readings are"
                        " not affected)", broker=self.fleet.host, error=why)
        self.last_error = why
