"""``file``: readings as JSON Lines on local disk (an archive); delivered means written and fsynced."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.platforms.file.config import FileConfig
from gateway.platforms.plugin import SinkPlatform

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig
    from gateway.platforms.sink import Sink


def _create(config: FileConfig, gateway: GatewayConfig) -> Sink:
    from gateway.platforms.file.sink import FileSink

    return FileSink(config, gateway)


PLATFORM = SinkPlatform("file", FileConfig, _create)
