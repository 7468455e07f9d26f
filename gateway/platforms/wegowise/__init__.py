"""``wegowise``: each mapped meter's consumption per local day or month, sent as raw data points of a Wegowise
meter in a data-only account, over HTTPS with OAuth 1.0a (docs/wegowise.md).

Here: ``config.py`` (the sink's settings, the meter map, tariffs), ``periods.py`` (consumption per period from a
counter), ``api.py`` (the signed client), ``datum.py`` (a period as a raw datum), ``sink.py`` (periods to raw data
points, exactly once), ``verify.py``; ``meter-gateway wegowise authorize`` is in ``gateway/cli/wegowise.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.platforms.plugin import SinkPlatform
from gateway.platforms.wegowise.config import WegowiseConfig

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig
    from gateway.platforms.sink import Sink


def _create(config: WegowiseConfig, gateway: GatewayConfig) -> Sink:
    from gateway.platforms.wegowise.sink import WegowiseSink

    return WegowiseSink(config, gateway)


async def _verify(
    config: WegowiseConfig, last_sent: Mapping[str, Any], gateway: GatewayConfig
) -> tuple[bool, list[str]]:
    from gateway.platforms.wegowise.verify import verify

    return await verify(config, gateway)


PLATFORM = SinkPlatform("wegowise", WegowiseConfig, _create, _verify)
