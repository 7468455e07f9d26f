"""``intellimeter``: meters read from an Intellimeter account's cloud (docs/intellimeter.md).

The account is an entry of ``clouds:`` (``type: intellimeter``); each meter (``type: intellimeter``) names it and
says which Intellimeter meter it is. Here: ``config.py`` (the account, the meters), ``api.py`` (OAuth 2.0 tokens and
the requests), ``reads.py`` (a read to a reading: local times, units, what is refused), ``source.py`` (the fetch
loop, catching up after an outage), ``tools.py`` (``read``, ``verify``); the device flow is
``meter-gateway intellimeter authorize`` (:mod:`gateway.cli.intellimeter`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.platforms.intellimeter.config import IntellimeterCloud, IntellimeterMeter
from gateway.platforms.plugin import SourcePlatform

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig
    from gateway.platforms.source import Source
    from gateway.timekeeper import TimeKeeper


def _create(config: GatewayConfig, keeper: TimeKeeper) -> list[Source]:
    from zoneinfo import ZoneInfo

    from gateway.platforms.intellimeter.api import IntellimeterApi
    from gateway.platforms.intellimeter.source import IntellimeterSource

    out: list[Source] = []
    for cloud in config.clouds:
        if not isinstance(cloud, IntellimeterCloud):
            continue
        meters = [m for m in config.meters if isinstance(m, IntellimeterMeter) and m.cloud == cloud.name]
        if meters:
            api = IntellimeterApi(cloud, config.state_dir)
            out.append(IntellimeterSource(cloud, meters, ZoneInfo(cloud.zone(config)), api))
    return out


async def _verify(cloud: Any, config: GatewayConfig) -> tuple[bool, list[str]]:
    from gateway.platforms.intellimeter.tools import verify

    return await verify(cloud, config)


PLATFORM = SourcePlatform("intellimeter", IntellimeterMeter, _create, cloud=IntellimeterCloud, verify=_verify)
