"""The registry: every platform the gateway knows, one line each (its folder's name).

A new platform is a folder under ``gateway/platforms/`` whose ``__init__.py`` declares ``PLATFORM`` (see
:mod:`gateway.platforms.plugin`), and its name in one of the lists below. The configuration file's ``type:`` keys,
the daemon's sinks and sources, and ``verify`` all come from here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from gateway.errors import SinkError
from gateway.platforms.plugin import SinkPlatform, SourcePlatform

if TYPE_CHECKING:
    from gateway.config.common import SinkBase
    from gateway.config.models import GatewayConfig
    from gateway.platforms.sink import Sink
    from gateway.platforms.source import Source
    from gateway.timekeeper import TimeKeeper

SINK_PLATFORMS = (
    "file",
    "stdout",
    "wattics",
    "voltaware",
    "wegowise",
)

SOURCE_PLATFORMS = (
    "simulated",
    "modbus",
    "mqtt",
    "intellimeter",
    "wattzon",
)


def _load(name: str, kind: type[SinkPlatform] | type[SourcePlatform]) -> SinkPlatform | SourcePlatform:
    platform = importlib.import_module(f"gateway.platforms.{name}").PLATFORM
    if not isinstance(platform, kind):
        raise TypeError(f"gateway.platforms.{name}.PLATFORM is not a {kind.__name__}")
    return platform


SINKS: dict[str, SinkPlatform] = {}
for _name in SINK_PLATFORMS:
    _sink = _load(_name, SinkPlatform)
    assert isinstance(_sink, SinkPlatform)
    SINKS[_sink.type] = _sink

SOURCES: dict[str, SourcePlatform] = {}
for _name in SOURCE_PLATFORMS:
    _source = _load(_name, SourcePlatform)
    assert isinstance(_source, SourcePlatform)
    SOURCES[_source.type] = _source


def create_sink(config: SinkBase, gateway: GatewayConfig) -> Sink:
    """The sink for a configured sink; in a dry run, wrapped so that it prints instead of sending."""
    platform = SINKS.get(config.type)
    if platform is None:
        raise SinkError(f"sink {config.name}: no sink of type '{config.type}'")
    sink = platform.create(config, gateway)
    if config.dry_run_requested():
        from gateway.platforms.dryrun import DryRunSink

        return DryRunSink(sink)
    return sink


def create_sources(config: GatewayConfig, keeper: TimeKeeper) -> list[Source]:
    """Every source the configuration needs, platform by platform."""
    return [s for platform in SOURCES.values() for s in platform.create(config, keeper)]
