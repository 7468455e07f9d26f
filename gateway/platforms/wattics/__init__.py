"""``wattics``: one-line JSON packets over HTTPS with basic auth, one stream per data point (docs/wattics.md).

Here: ``config.py`` (the sink's and data points' settings and their checks), ``sink.py`` (packets, sending, what an
answer means, the dry-run preview, ``verify``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.platforms.plugin import SinkPlatform
from gateway.platforms.wattics.config import WatticsConfig

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig
    from gateway.platforms.sink import Sink


def _create(config: WatticsConfig, gateway: GatewayConfig) -> Sink:
    from gateway.platforms.wattics.sink import WatticsSink

    return WatticsSink(config, gateway)


async def _verify(
    config: WatticsConfig, last_sent: Mapping[str, Any], gateway: GatewayConfig
) -> tuple[bool, list[str]]:
    from gateway.platforms.wattics.sink import verify

    return await verify(config, last_sent)


PLATFORM = SinkPlatform("wattics", WatticsConfig, _create, _verify)
