"""``voltaware``: readings published to Voltaware's MQTT broker over TLS, QoS 2, one device per meter, and the
devices provisioned through Voltaware's REST API (docs/voltaware.md).

Here: ``config.py`` (broker, topics, payload template, API settings), ``sink.py`` (publishing, acknowledgements,
the dry-run preview), ``api.py`` (the REST client, provisioning, ``verify``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.platforms.plugin import SinkPlatform
from gateway.platforms.voltaware.config import VoltawareConfig

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig
    from gateway.platforms.sink import Sink


def _create(config: VoltawareConfig, gateway: GatewayConfig) -> Sink:
    from gateway.platforms.voltaware.sink import VoltawareSink

    return VoltawareSink(config, gateway)


async def _verify(
    config: VoltawareConfig, last_sent: Mapping[str, Any], gateway: GatewayConfig
) -> tuple[bool, list[str]]:
    from gateway.platforms.voltaware.api import verify

    return await verify(config, dict(last_sent))


PLATFORM = SinkPlatform("voltaware", VoltawareConfig, _create, _verify)
