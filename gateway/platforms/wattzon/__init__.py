"""``wattzon``: a utility account's bills and interval data from WattzOn Link, as period readings
(docs/wattzon.md).

The account is an entry of ``clouds:`` (``type: wattzon``, with the client certificate); each meter names it, a
profile, and which bills or which interval meter it is. Here: ``config.py``, ``api.py`` (the requests, jobs' states),
``records.py`` (a bill or an interval to a reading: units, dates, what is refused), ``source.py`` (jobs, fetching,
nothing twice), ``tools.py`` (``read``, ``verify``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.platforms.plugin import SourcePlatform
from gateway.platforms.wattzon.config import WattzonCloud, WattzonMeter

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig
    from gateway.platforms.source import Source
    from gateway.timekeeper import TimeKeeper


def _create(config: GatewayConfig, keeper: TimeKeeper) -> list[Source]:
    from gateway.platforms.wattzon.source import WattzonSource

    out: list[Source] = []
    for cloud in config.clouds:
        if not isinstance(cloud, WattzonCloud):
            continue
        meters = [m for m in config.meters if isinstance(m, WattzonMeter) and m.cloud == cloud.name]
        if meters:
            out.append(WattzonSource(cloud, meters, config.state_dir))
    return out


async def _verify(cloud: Any, config: GatewayConfig) -> tuple[bool, list[str]]:
    from gateway.platforms.wattzon.tools import verify

    return await verify(cloud, config)


PLATFORM = SourcePlatform("wattzon", WattzonMeter, _create, cloud=WattzonCloud, verify=_verify)
