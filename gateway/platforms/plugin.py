"""What a platform folder declares: one :class:`SinkPlatform` or :class:`SourcePlatform` named ``PLATFORM`` in its
``__init__.py``. The descriptor imports only the platform's configuration model; the sink or source module (and
its libraries: httpx, paho, pymodbus) is imported when the platform is used, so that checking a file, or a
gateway without that platform, does not load it.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config.common import CloudBase, MeterBase, SinkBase
    from gateway.config.models import GatewayConfig
    from gateway.platforms.sink import Sink
    from gateway.platforms.source import Source
    from gateway.timekeeper import TimeKeeper

#: Asks the platform what it holds of what the gateway last delivered: (all as expected, lines for a person).
#: Called with the sink's configuration, the gateway's record of what it delivered last, and the whole configuration.
Verify = Callable[[Any, Mapping[str, Any], "GatewayConfig"], Coroutine[Any, Any, tuple[bool, list[str]]]]
#: Asks a cloud source whether its credentials work and what it knows that the configuration does not map (and the
#: reverse): (all as expected, lines for a person). Called with the cloud's configuration and the whole configuration.
VerifyCloud = Callable[[Any, "GatewayConfig"], Coroutine[Any, Any, tuple[bool, list[str]]]]


@dataclass(frozen=True, slots=True)
class SinkPlatform:
    #: the ``type:`` of a sink in the configuration file
    type: str
    #: the configuration model of such a sink (a pydantic model with ``type: Literal[...]``)
    config: builtins.type[SinkBase]
    #: the sink for one configured sink of this type
    create: Callable[[Any, GatewayConfig], Sink]
    #: ``meter-gateway verify`` for this platform, if it can be asked
    verify: Verify | None = None


@dataclass(frozen=True, slots=True)
class SourcePlatform:
    #: the ``type:`` of a meter in the configuration file
    type: str
    #: the configuration model of such a meter
    config: builtins.type[MeterBase]
    #: the sources that read every meter of this type in the configuration (one per bus, per broker, per meter...)
    create: Callable[[GatewayConfig, TimeKeeper], list[Source]]
    #: for a source whose meters live in a vendor's cloud: the model of an account in ``clouds:`` (``type:`` the same)
    cloud: builtins.type[CloudBase] | None = None
    #: ``meter-gateway verify`` for such an account
    verify: VerifyCloud | None = None
