"""``mqtt``: meters that publish their readings to an MQTT broker (Tasmota, Shelly, JSON, plain values); one
connection per broker that has subscriptions (docs/mqtt.md).

Here: ``config.py`` (brokers, subscriptions, meters), ``formats.py`` (payloads to readings, and what is refused),
``source.py`` (the connection, batches committed before the broker is acknowledged), ``tools.py`` (``read`` and
``check`` for MQTT meters). The paho-to-asyncio bridge they share with the Voltaware sink is
:mod:`gateway.pahobridge`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.platforms.mqtt.config import MqttMeterConfig
from gateway.platforms.plugin import SourcePlatform

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig
    from gateway.platforms.source import Source
    from gateway.timekeeper import TimeKeeper


def _create(config: GatewayConfig, keeper: TimeKeeper) -> list[Source]:
    from zoneinfo import ZoneInfo

    from gateway.platforms.mqtt.source import MqttSource

    meters = {m.name for m in config.meters if isinstance(m, MqttMeterConfig)}
    tz = ZoneInfo(config.site.timezone)
    out: list[Source] = []
    for broker in config.brokers:
        subs = [s for s in config.subscriptions if s.broker == broker.name]
        if subs:
            out.append(MqttSource(broker, subs, meters, tz, keeper))
    return out


PLATFORM = SourcePlatform("mqtt", MqttMeterConfig, _create)
