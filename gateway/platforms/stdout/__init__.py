"""``stdout``: readings as JSON Lines on standard output, for the demo and for debugging."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.platforms.plugin import SinkPlatform
from gateway.platforms.stdout.config import StdoutConfig

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig
    from gateway.platforms.sink import Sink


def _create(config: StdoutConfig, gateway: GatewayConfig) -> Sink:
    from gateway.platforms.stdout.sink import StdoutSink

    return StdoutSink(config, gateway)


PLATFORM = SinkPlatform("stdout", StdoutConfig, _create)
