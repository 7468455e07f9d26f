"""``simulated``: meters that exist only in software (the demo, tests): one source per meter."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.platforms.plugin import SourcePlatform
from gateway.platforms.simulated.config import SimulatedMeterConfig

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig
    from gateway.platforms.source import Source
    from gateway.timekeeper import TimeKeeper


def _create(config: GatewayConfig, keeper: TimeKeeper) -> list[Source]:
    from gateway.platforms.simulated.source import SimulatedSource

    return [SimulatedSource(m, keeper) for m in config.meters if isinstance(m, SimulatedMeterConfig)]


PLATFORM = SourcePlatform("simulated", SimulatedMeterConfig, _create)
