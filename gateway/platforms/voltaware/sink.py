"""``voltaware`` sink: one MQTT event per reading to Voltaware's broker, over TLS, QoS 2 by default.

A reading counts as delivered only once the broker acknowledged it (PUBCOMP for QoS 2, PUBACK for QoS 1). paho
keeps every unacknowledged message of a client and sends it again by itself after a reconnection (FACTS.md): so a
message is published once per client and its acknowledgement awaited, across reconnections; a reading sent again by
the forwarder while its first publish is still in paho's hands is not published a second time. After a restart
(a new client), what the broker had not acknowledged is published again: at-least-once.

Every connection starts a clean session. A resumed (persistent) session would make QoS 2 exactly-once across
reconnections only while the broker kept the session: a broker restarted without its state answers a resumed
PUBREL with PUBCOMP although it never stored the message, and the reading would count as delivered while lost
(seen in the fault tests). With clean sessions, paho publishes unacknowledged messages again after a reconnection:
a broker may then deliver one twice, never lose one. A new process also never meets the previous one's
half-finished exchanges under reused message ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import MQTTErrorCode

from gateway.config.models import GatewayConfig
from gateway.errors import SinkError
from gateway.outcome import Delivered, Outcome, Retry, Skip
from gateway.pahobridge import LoopCaller, new_client
from gateway.platforms.sink import BaseSink, Preview
from gateway.platforms.voltaware.api import Provisioner, VoltawareClient
from gateway.platforms.voltaware.config import VoltawareConfig
from gateway.quantities import Quantity
from gateway.reading import Reading, iso_utc, local_iso
from gateway.stream import Stream
from gateway.template import PERIOD_NAMES, MissingQuantity, compile_template, render_json, uses

log = structlog.get_logger("gateway.platforms.voltaware.sink")

_QUANTITY_NAMES = frozenset(q.value for q in Quantity)
FIRST_CONNECT_WAIT = 5.0


class VoltawareSink(BaseSink):
    def __init__(self, config: VoltawareConfig, gateway: GatewayConfig) -> None:
        self.config = config
        self.name = config.name
        self.max_batch = config.window
        #: batches of one device published before the first is acknowledged (paho keeps them in order)
        self.pipeline = 2
        self.site = gateway.site.name
        self.state_dir = gateway.state_dir
        self.tz = ZoneInfo(gateway.site.timezone)
        self._topic = compile_template(config.topic)
        self._payload = compile_template(config.payload)
        self._needs = uses(config.payload) & _QUANTITY_NAMES
        used = uses(config.payload) | uses(config.topic)
        self._wants_iso = "ts_iso" in used
        self._wants_local = "ts_local" in used
        self._wants_periods = bool(used & PERIOD_NAMES)
        self.log = log.bind(sink=config.name)
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: hands paho's callbacks to the event loop
        self._call = LoopCaller()
        self._connected = False
        self._down_since: float | None = None
        self._refused_logged = False
        self._lock = threading.Lock()  # mids are completed in paho's thread
        self._by_mid: dict[int, asyncio.Future[None]] = {}
        self._done_mids: set[int] = set()
        self._completed: list[asyncio.Future[None]] = []
        self._wakeup_pending = False
        #: (stream cursor, ts) -> the acknowledgement of a publish paho still holds or that completed unreported
        self._pending: dict[tuple[str, int], tuple[asyncio.Future[None], str]] = {}
        self._closing = False
        self._first_answer = asyncio.Event()  # the broker accepted or refused the first connection
        self.provisioner: Provisioner | None = None

    # ------------------------------------------------------------ connection

    async def start(self) -> None:
        self._loop = self._call.bind()
        c = self.config
        client = new_client(c.effective_client_id, clean=True, tls=True, ca_file=c.ca_file,
                            client_cert=c.client_cert, client_key=c.client_key, username=c.username,
                            password=c.password.get_secret_value())
        # The forwarder already bounds what is in flight (window x devices in parallel). A bound in paho as well
        # makes it scan every held message at each acknowledgement (measured: a third of the sink's CPU).
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_connect_fail = self._on_connect_fail
        self._down_since = time.monotonic()
        client.connect_async(c.host, c.port, keepalive=round(c.keepalive))
        client.loop_start()
        self._client = client
        metadata = {d.device_id: d.metadata for d in c.devices if d.metadata is not None}
        if c.api is not None and metadata:
            self.provisioner = Provisioner(
                c.name, VoltawareClient(c.api), metadata, self.state_dir / f"voltaware-{c.name}.json",
                c.api.retry_base, c.api.retry_cap,
            )
        # Give the first connection a moment, so that a normal start does not begin with a failed send.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_answer.wait(), FIRST_CONNECT_WAIT)

    async def close(self) -> None:
        self._closing = True
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
        if self.provisioner is not None:
            await self.provisioner.close()
            self.provisioner = None
        for fut, _ in self._pending.values():
            fut.cancel()
        self._pending.clear()
        self._by_mid.clear()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._call(self._refused, str(reason))
            return
        self._call(self._up)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._call(self._down, str(reason))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._call(self._down, "cannot connect")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            fut = self._by_mid.pop(mid, None)
            if fut is None:
                self._done_mids.add(mid)  # acknowledged before send() registered it
                return
            self._completed.append(fut)
            if self._wakeup_pending:
                return
            self._wakeup_pending = True
        # One wake-up of the event loop for all acknowledgements that arrive meanwhile, not one per message.
        self._call(self._drain_completed)

    def _drain_completed(self) -> None:
        with self._lock:
            done, self._completed = self._completed, []
            self._wakeup_pending = False
        for fut in done:
            _resolve(fut)

    def _up(self) -> None:
        self._first_answer.set()
        self._connected = True
        self._refused_logged = False
        if self._down_since is not None:
            self.log.info("connected to the broker", host=self.config.host, port=self.config.port,
                          down_s=round(time.monotonic() - self._down_since, 1))
            self._down_since = None

    def _down(self, why: str) -> None:
        self._connected = False
        if self._down_since is None and not self._closing:
            self._down_since = time.monotonic()
            self.log.warning("broker connection lost; reconnecting, readings are kept", reason=why)

    def _refused(self, why: str) -> None:
        self._first_answer.set()
        self._connected = False
        if not self._refused_logged:
            self._refused_logged = True
            self.log.error("the broker refused the connection: check username, password and client id", reason=why)

    # ------------------------------------------------------------ sending

    def preview(self, stream: Stream, reading: Reading) -> Preview | Skip:
        rendered = self.render(stream, reading)
        if isinstance(rendered, Skip):
            return rendered
        topic, payload = rendered
        return {"sink": self.name, "would": "PUBLISH", "topic": topic, "qos": self.config.qos,
                "payload": json.loads(payload)}

    def render(self, stream: Stream, reading: Reading) -> tuple[str, str] | Skip:
        ts = reading.ts_ms
        # Quantity members are str: the reading's values serve as placeholder values as they are.
        ctx: dict[str, object] = dict(reading.values.items())
        ctx.update(device_id=stream.key, meter=reading.meter, site=self.site, ts_ms=ts,
                   ts_s=ts // 1000 if ts % 1000 == 0 else ts / 1000)
        if reading.start_ms is not None:
            if not self._wants_periods:
                return Skip("a period reading (bill, interval): the template uses neither {start_iso} nor"
                            " {start_ms}")
            ctx.update(start_ms=reading.start_ms, start_iso=iso_utc(reading.start_ms))
        if self._wants_iso:
            ctx["ts_iso"] = iso_utc(ts)
        if self._wants_local:
            ctx["ts_local"] = local_iso(ts, self.tz)
        if self.config.missing == "skip":
            lacking = self._needs - ctx.keys()
            if lacking:
                return Skip(f"the reading lacks {', '.join(sorted(lacking))}")
        try:
            return str(self._topic(ctx)), render_json(self._payload, ctx)
        except MissingQuantity as e:
            return Skip(f"the reading lacks {e.args[0]}, which the template needs inside a text")

    async def send(self, stream: Stream, readings: Sequence[Reading]) -> list[Outcome]:
        client = self._client
        if client is None or self._loop is None:
            raise SinkError("the Voltaware sink is not started")
        outcomes: list[Outcome | None] = [None] * len(readings)
        waits: list[tuple[int, tuple[str, int]]] = []
        blocked: str | None = None
        for i, reading in enumerate(readings):
            key = (stream.cursor, reading.ts_ms)
            if key in self._pending:  # published before and still in paho's hands: never publish it twice
                waits.append((i, key))
                continue
            if blocked is not None:
                outcomes[i] = Retry(blocked)
                continue
            rendered = self.render(stream, reading)
            if isinstance(rendered, Skip):
                outcomes[i] = rendered
                continue
            if not self._connected:
                blocked = "not connected to the broker"
                outcomes[i] = Retry(blocked)
                continue
            topic, payload = rendered
            fut: asyncio.Future[None] = self._loop.create_future()
            # Not under self._lock: paho calls on_publish holding its own lock, which publish() takes too.
            info = client.publish(topic, payload, qos=self.config.qos)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                blocked = f"publish refused by the MQTT client: {mqtt.error_string(info.rc)}"
                outcomes[i] = Retry(blocked)
                continue
            # NO_CONN: paho keeps the message and sends it at the next connection, so it is in flight too.
            with self._lock:
                if info.mid in self._done_mids:
                    self._done_mids.discard(info.mid)
                    fut.set_result(None)
                else:
                    self._by_mid[info.mid] = fut
            self._pending[key] = (fut, payload)
            waits.append((i, key))
        if waits:
            await asyncio.wait([self._pending[k][0] for _, k in waits], timeout=self.config.ack_timeout)
        for i, key in waits:
            fut, payload = self._pending[key]
            if fut.done():
                del self._pending[key]
                outcomes[i] = Delivered(payload)
                if self.provisioner is not None:
                    self.provisioner.event_acknowledged(stream.key)
            else:
                outcomes[i] = Retry(f"no acknowledgement from the broker within {self.config.ack_timeout:g}s")
        return [o if o is not None else Retry("not sent") for o in outcomes]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
