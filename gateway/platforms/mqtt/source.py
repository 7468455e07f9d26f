"""``mqtt`` meters: one source per broker, with every subscription on it.

Nothing is lost across a restart of the gateway or of the broker: the client keeps a persistent session (a stable
client id, ``clean_session=False``) with QoS 1 subscriptions, so the broker keeps messages while the gateway is away,
and a message is acknowledged to the broker (PUBACK) only once its reading is committed to the on-disk queue
(``manual_ack``). A message that arrived but was not yet committed when the gateway died is delivered again.

paho runs its network loop in its own thread; messages are handed to the event loop in batches (one wake-up per
burst), decoded, committed in one append, then acknowledged. With QoS 1 the broker sends no more than its in-flight
window of unacknowledged messages, so a slow disk slows the broker down instead of filling memory; QoS 0 messages
beyond ``INBOX_LIMIT`` waiting are dropped, counted and logged.

Bad messages never hurt: each is counted per subscription and reason, logged (the first of each reason at
warning, then a summary at most once a minute; the topic and the reason, never the payload), acknowledged, and
nothing of it enters the queue.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt
import structlog

from gateway.pahobridge import LoopCaller, new_client
from gateway.platforms.mqtt.config import BrokerConfig, SubscriptionConfig
from gateway.platforms.mqtt.formats import BadMessage, Decoded, Decoder, Ignored
from gateway.platforms.source import BaseSource, Emit
from gateway.reading import Reading
from gateway.timekeeper import Stamp, TimeKeeper

log = structlog.get_logger("gateway.platforms.mqtt.source")

INBOX_LIMIT = 10_000
SUMMARY_EVERY = 60.0


def make_client(broker: BrokerConfig, client_id: str, clean: bool, manual_ack: bool) -> mqtt.Client:
    return new_client(client_id, clean=clean, tls=broker.uses_tls, ca_file=broker.ca_file,
                      client_cert=broker.client_cert, client_key=broker.client_key, username=broker.username,
                      password=broker.password.get_secret_value() if broker.password else None,
                      manual_ack=manual_ack)


class SubscriptionState:
    def __init__(self, sub: SubscriptionConfig, decoder: Decoder) -> None:
        self.sub = sub
        self.decoder = decoder
        #: messages, readings, ignored, and bad messages per reason
        self.counts: Counter[str] = Counter()
        self._since_summary: Counter[str] = Counter()
        self._summary_at = 0.0
        self.log = log.bind(subscription=sub.name)
        #: The last messages and what became of them, for the technician's page (bounded, payloads cut).
        self.recent: deque[dict[str, object]] = deque(maxlen=10)

    def remember(self, topic: str, payload: bytes, outcome: str, meters: list[str] | None = None) -> None:
        self.recent.append({"at_ms": int(time.time() * 1000), "topic": topic[:200],
                            "payload": payload[:300].decode("utf-8", "replace"), "outcome": outcome,
                            "meters": meters or []})

    def bad(self, topic: str, e: BadMessage) -> None:
        self.counts[e.reason] += 1
        self.counts["bad"] += 1
        if self.counts[e.reason] == 1:
            self.log.warning("message refused: nothing of it is queued", topic=topic[:200], reason=e.reason,
                             detail=e.detail)
            return
        self._since_summary[e.reason] += 1
        now = time.monotonic()
        if now - self._summary_at >= SUMMARY_EVERY:
            self.log.warning("messages refused since the last line", topic=topic[:200], **self._since_summary)
            self._since_summary.clear()
            self._summary_at = now


class MqttSource(BaseSource):
    """A broker connection and its subscriptions."""

    def __init__(self, broker: BrokerConfig, subs: list[SubscriptionConfig], meters: set[str], tz: ZoneInfo,
                 keeper: TimeKeeper | None = None) -> None:
        self.broker = broker
        self.name = f"broker:{broker.name}"
        self.subs = [SubscriptionState(s, Decoder(s, tz, meters)) for s in subs]
        self.keeper = keeper or TimeKeeper("ignore")
        self.on_change: Callable[[], None] = lambda: None
        #: QoS 0 messages dropped because more than INBOX_LIMIT were waiting (counted and logged).
        self.dropped = 0
        self._dropped_reported = 0
        self.log = log.bind(broker=broker.name)
        self._inbox: deque[tuple[mqtt.MQTTMessage, Stamp]] = deque()
        self._last_arrival: dict[str, tuple[int, int]] = {}
        self._by_topic: dict[str, SubscriptionState | None] = {}
        self._closing = False
        self._lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        #: hands paho's callbacks to the event loop
        self._call = LoopCaller()
        self._wake_pending = False
        self._connected = False
        self._down_since: float | None = time.monotonic()
        self._refused_logged = False
        self._unreachable_logged = False
        self._ever_connected = False

    # ------------------------------------------------------------ paho's thread

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            if not self._refused_logged:
                self._refused_logged = True
                self._call(lambda: self.log.error("broker refused the connection (credentials, client id?);"
                                                  " retrying", reason=str(reason)))
            return
        topics: list[tuple[str, int]] = [(s.sub.topic, s.sub.qos) for s in self.subs]
        client.subscribe(topics)
        self._call(self._up, bool(getattr(flags, "session_present", False)))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._call(self._down, str(reason))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._call(self._unreachable)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if len(self._inbox) >= INBOX_LIMIT and msg.qos == 0:
                self.dropped += 1
                return
            self._inbox.append((msg, self.keeper.stamp()))
            if self._wake_pending:
                return
            self._wake_pending = True
        self._call(self._set_wake)

    # ------------------------------------------------------------ event loop

    def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _up(self, session_present: bool) -> None:
        self._connected = True
        self._refused_logged = False
        self._unreachable_logged = False
        if self._down_since is not None:
            down = time.monotonic() - self._down_since
            if self._ever_connected:
                self.log.info("broker connection back", down_s=round(down, 1), session_present=session_present)
            else:
                self.log.info("broker connected", host=self.broker.host, port=self.broker.effective_port,
                              session_present=session_present, subscriptions=[s.sub.topic for s in self.subs])
            self._down_since = None
            self.on_change()
        self._ever_connected = True

    def _unreachable(self) -> None:
        if not self._unreachable_logged:
            self._unreachable_logged = True
            self.log.warning("cannot reach the broker: retrying (messages wait at the broker)",
                             host=self.broker.host, port=self.broker.effective_port)

    def _down(self, why: str) -> None:
        if self._connected and not self._closing:
            self._connected = False
            self._down_since = time.monotonic()
            self.log.warning("broker connection lost: reconnecting (the broker keeps our messages)", reason=why)
            self.on_change()

    def _state_for(self, topic: str) -> SubscriptionState | None:
        # A device publishes on the same few topics again and again: match each topic against the filters once.
        try:
            return self._by_topic[topic]
        except KeyError:
            state = next((s for s in self.subs if mqtt.topic_matches_sub(s.sub.topic, topic)), None)
            if len(self._by_topic) < 10_000:  # bounded: a flood of distinct topics costs matching, not memory
                self._by_topic[topic] = state
            return state

    def decode(self, msg: mqtt.MQTTMessage) -> Decoded:
        """Readings of one message, for the first subscription whose filter matches its topic (times may be None:
        the message carries none of its own)."""
        topic = msg.topic
        state = self._state_for(topic)
        if state is not None:
            state.counts["messages"] += 1
            payload = bytes(msg.payload)
            if len(payload) > self.broker.max_payload:
                state.bad(topic, BadMessage("too_large", f"{len(payload)} bytes, more than max_payload"))
                state.remember(topic, payload, f"refused: too_large ({len(payload)} bytes)")
                return []
            try:
                out = state.decoder.decode(topic, payload)
            except Ignored:
                state.counts["ignored"] += 1
                state.remember(topic, payload, "ignored")
                return []
            except BadMessage as e:
                state.bad(topic, e)
                state.remember(topic, payload, f"refused: {e.reason} ({e.detail})")
                return []
            except Exception as e:  # a case the decoder did not foresee: that message is refused, never the source
                state.bad(topic, BadMessage("undecodable", type(e).__name__))
                state.remember(topic, payload, f"refused: undecodable ({type(e).__name__})")
                return []
            state.counts["readings"] += len(out)
            state.remember(topic, payload, f"{len(out)} reading{'s' if len(out) != 1 else ''}",
                           sorted({meter for meter, _, _ in out}))
            return out
        return []

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        self._call.bind()
        self._wake = asyncio.Event()
        self._closing = False
        b = self.broker
        client = make_client(b, b.effective_client_id, clean=False, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_connect_fail = self._on_connect_fail
        client.connect_async(b.host, b.effective_port, keepalive=round(b.keepalive))
        client.loop_start()
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                waking = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait([waking, stopping], return_when=asyncio.FIRST_COMPLETED)
                waking.cancel()
                await self._drain(client, emit)
            await self._drain(client, emit)  # what arrived before the stop is committed and acknowledged
        finally:
            stopping.cancel()
            self._closing = True
            client.disconnect()
            client.loop_stop()
            self._call.loop = None

    async def _drain(self, client: mqtt.Client, emit: Emit) -> None:
        assert self._wake is not None
        while True:
            with self._lock:
                self._wake.clear()
                self._wake_pending = False
                batch = list(self._inbox)
                self._inbox.clear()
            if not batch:
                return
            merged: dict[tuple[str, int], dict[Any, float]] = {}
            arrival: dict[tuple[str, int], Stamp] = {}
            for msg, arrived in batch:
                for meter, ts, values in self.decode(msg):
                    if ts is None:
                        # Stamped on arrival, and at least 1 ms after this meter's previous one (on both clocks):
                        # a backlog the broker delivers at once (after a restart) keeps every message, in order.
                        last_ts, last_mono = self._last_arrival.get(meter, (0, 0))
                        ts = max(arrived.ts_ms, last_ts + 1)
                        mono = max(arrived.mono_ms, last_mono + 1)
                        self._last_arrival[meter] = (ts, mono)
                        arrival[(meter, ts)] = Stamp(ts, arrived.synced, mono)
                    # Messages with their own time: Shelly's em:0 and emdata:0 of one instant become one reading.
                    merged.setdefault((meter, ts), {}).update(values)
            if self.dropped != self._dropped_reported:
                self._report_dropped()
            readings = sorted((self._reading(m, ts, v, arrival.get((m, ts))) for (m, ts), v in merged.items()),
                              key=lambda r: r.ts_ms)
            if readings:
                await emit(readings, prompt=True)
            # Committed (or counted as dropped by the queue): only now may the broker forget them.
            for msg, _ in batch:
                if msg.qos:
                    client.ack(msg.mid, msg.qos)

    @staticmethod
    def _reading(meter: str, ts: int, values: dict[Any, float], arrived: Stamp | None) -> Reading:
        """A device's own time is its own business; an arrival time is ours, trusted or held like any other."""
        if arrived is None:
            return Reading(meter, ts, values)
        return Reading(meter, ts, values, arrived.synced, arrived.mono_ms)

    def _report_dropped(self) -> None:
        n = self.dropped - self._dropped_reported
        (self.log.warning if self._dropped_reported == 0 else self.log.debug)(
            "QoS 0 messages dropped: more were waiting than the gateway could take (subscribe with qos: 1, so the"
            " broker holds them instead)", dropped=n, total=self.dropped)
        self._dropped_reported = self.dropped

    def health(self) -> dict[str, dict[str, object]]:
        """No per-meter read health (a meter that publishes either sends or not; the queue shows its last reading).
        Being a ReportsHealth source gets ``on_change`` wired, so the heartbeat follows the connection's state."""
        return {}

    def subscriptions(self) -> dict[str, dict[str, int]]:
        return {s.sub.name: dict(s.counts) for s in self.subs}

    def recent_messages(self) -> dict[str, list[dict[str, object]]]:
        """Per subscription, its last messages and what became of each (the technician's page)."""
        return {s.sub.name: list(s.recent) for s in self.subs}
